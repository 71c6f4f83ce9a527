"""Built-in vocabulary of the ner stage: entity/relation types, term lists, cue words and text-shape regexes."""

from __future__ import annotations

import re

ENTITY_TYPES = ("PROJECT", "K8S_RESOURCE", "CLI_TOOL", "API_OBJECT", "CONFIG", "STANDARD", "ORGANIZATION",
                "CATEGORY")
RELATION_TYPES = ("is-a", "part-of", "integrates-with", "uses", "runs-on", "alternative-to", "extends",
                  "in-category", "has-maturity", "co-occurs-with")
# When one surface form could be two types, the more specific list wins (gRPC is a landscape item and a standard).
TYPE_PRIORITY = {"STANDARD": 0, "CLI_TOOL": 1, "K8S_RESOURCE": 2, "API_OBJECT": 3, "PROJECT": 4, "ORGANIZATION": 5,
                 "CATEGORY": 6, "CONFIG": 7}
MEMBERS_CATEGORY = "CNCF Members"
# Landscape subcategories whose items are companies, not software.
ORG_CUES = {"company", "companies", "inc", "member", "members", "vendor", "vendors", "sponsor", "sponsored",
            "founded", "acquired", "partner", "partners", "employees", "engineers", "corporation", "foundation",
            "announced", "customers", "enterprise", "startup", "end-user", "provider", "providers"}
ORG_SUBCATEGORIES = {"Kubernetes Certified Service Provider", "Kubernetes and Cloud Native Training Partner"}
NAME_QUALIFIER = re.compile(r"\s*\((?:member|supporter|contributor|KCSP|KCNTP|KTP|Wasm|wasm)\)\s*$")
CORP_SUFFIX = re.compile(r",?\s+(?:Inc\.?|LLC|Ltd\.?|GmbH|Corporation|Corp\.?|Co\.|S\.A\.|AG|B\.V\.)$")

CORE_KINDS = (
    "Pod", "Deployment", "Service", "ConfigMap", "Secret", "StatefulSet", "DaemonSet", "ReplicaSet", "Job",
    "CronJob", "Namespace", "Node", "PersistentVolume", "PersistentVolumeClaim", "StorageClass", "Ingress",
    "IngressClass", "NetworkPolicy", "ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding",
    "HorizontalPodAutoscaler", "VerticalPodAutoscaler", "PodDisruptionBudget", "LimitRange", "ResourceQuota",
    "Endpoints", "EndpointSlice", "ReplicationController", "VolumeAttachment", "CSIDriver", "CSINode",
    "PriorityClass", "RuntimeClass", "Lease", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy", "PodTemplate", "ControllerRevision", "CertificateSigningRequest", "APIService",
    "Gateway", "GatewayClass", "HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute", "ReferenceGrant",
    "VolumeSnapshot", "VolumeSnapshotClass", "ResourceClaim", "DeviceClass", "Event",
)
BUILTIN_API_OBJECTS = (
    "CustomResourceDefinition", "ServiceMonitor", "PodMonitor", "PrometheusRule", "AlertmanagerConfig",
    "Application", "ApplicationSet", "AppProject", "Rollout", "AnalysisTemplate", "Certificate", "Issuer",
    "ClusterIssuer", "CertificateRequest", "HelmRelease", "HelmRepository", "Kustomization", "GitRepository",
    "OCIRepository", "ImagePolicy", "VirtualService", "DestinationRule", "ServiceEntry", "PeerAuthentication",
    "AuthorizationPolicy", "Sidecar", "EnvoyFilter", "ServiceProfile", "HTTPProxy", "ScaledObject", "ScaledJob",
    "TriggerAuthentication", "PropagationPolicy", "ClusterPropagationPolicy", "OverridePolicy", "ResourceBinding",
    "ClusterPolicy", "PolicyReport", "OpenTelemetryCollector", "Instrumentation", "ThanosRuler",
    "SealedSecret", "ExternalSecret", "SecretStore", "Workflow", "WorkflowTemplate", "CronWorkflow", "EventSource",
    "Sensor", "TaskRun", "PipelineRun",
)
CORE_GROUPS = {"", "v1", "apps", "batch", "autoscaling", "policy"}
CLI_TOOLS = (
    "kubectl", "helm", "etcdctl", "etcdutl", "kubeadm", "linkerd", "istioctl", "argocd", "karmadactl", "promtool",
    "amtool", "crictl", "ctr", "nerdctl", "kind", "minikube", "k3d", "kustomize", "flux", "cilium", "hubble",
    "k8sgpt", "cmctl", "velero", "tkn", "kn", "vcctl", "dapr", "cosign", "notation", "skaffold", "kubeconform",
    "kubelogin", "kubectx", "kubens", "krew", "oras", "fluent-bit", "otelcol", "jaeger-query", "coredns",
    "containerd", "runc", "docker", "podman", "buildah", "skopeo", "jq", "yq", "curl", "openssl", "kops",
    "clusterctl", "tctl", "opa", "kyverno", "trivy", "grpcurl", "protoc", "kubefed", "kubebuilder",
    "operator-sdk", "stern", "k9s", "argo", "vault",
)
# Lower-case CLI names that are also English words or a project name in prose: need a code or command context.
AMBIGUOUS_CLI = {"helm", "flux", "kind", "dapr", "kn", "ctr", "argo", "vault", "notation", "hubble", "cilium",
                 "docker", "containerd", "coredns", "opa", "kyverno", "trivy", "linkerd", "curl", "stern", "runc",
                 "podman", "velero"}
CLI_SUBCOMMANDS = {
    "install", "upgrade", "uninstall", "rollback", "get", "create", "apply", "delete", "describe", "repo",
    "search", "template", "list", "ls", "init", "bootstrap", "reconcile", "version", "check", "inject", "run",
    "exec", "logs", "login", "push", "pull", "package", "lint", "status", "show", "add", "update", "dependency",
    "plugin", "sync", "app", "cluster", "viz", "build", "sign", "verify", "export", "suspend", "resume", "diff",
    "test", "config", "registry", "completion", "env", "history", "dashboard", "analyze", "auth", "serve",
}
CLI_CUES = {"cli", "command", "commands", "binary", "executable", "subcommand", "command-line"}
# `linkerd` namespace, `helm` chart: a name in code followed by one of these names a thing, not the command.
NOT_COMMAND_NEXT = {"namespace", "namespaces", "label", "labels", "annotation", "field", "key", "directory", "folder",
                    "file", "container", "pod", "pods", "service", "image", "chart", "repository", "repo", "secret",
                    "configmap", "deployment", "user", "group", "account", "package", "module", "project", "org"}
STANDARDS = {
    "OCI": "OCI", "Open Container Initiative": "OCI", "CNI": "CNI", "Container Network Interface": "CNI",
    "CSI": "CSI", "Container Storage Interface": "CSI", "CRI": "CRI", "Container Runtime Interface": "CRI",
    "SMI": "SMI", "Service Mesh Interface": "SMI", "OTLP": "OTLP", "OpenTelemetry Protocol": "OTLP",
    "gRPC": "gRPC", "HTTP": "HTTP", "HTTPS": "HTTPS", "HTTP/1.1": "HTTP/1.1", "HTTP/2": "HTTP/2",
    "HTTP/3": "HTTP/3", "TLS": "TLS", "mTLS": "mTLS", "SSL": "TLS", "SPIFFE": "SPIFFE", "SVID": "SPIFFE",
    "OpenMetrics": "OpenMetrics", "OpenAPI": "OpenAPI", "REST": "REST", "DNS": "DNS", "TCP": "TCP", "UDP": "UDP",
    "QUIC": "QUIC", "IPv4": "IPv4", "IPv6": "IPv6", "OAuth": "OAuth", "OAuth2": "OAuth", "OAuth 2.0": "OAuth",
    "OIDC": "OIDC", "OpenID Connect": "OIDC", "JWT": "JWT", "X.509": "X.509", "x509": "X.509", "SAML": "SAML",
    "LDAP": "LDAP", "SSH": "SSH", "WebAssembly": "WebAssembly", "Wasm": "WebAssembly", "WASM": "WebAssembly",
    "WASI": "WASI", "SBOM": "SBOM", "SPDX": "SPDX", "CycloneDX": "CycloneDX", "SLSA": "SLSA",
    "W3C Trace Context": "W3C Trace Context", "Trace Context": "W3C Trace Context", "OpenTracing": "OpenTracing",
    "OpenCensus": "OpenCensus", "PromQL": "PromQL", "CEL": "CEL", "BGP": "BGP", "eBPF": "eBPF", "VXLAN": "VXLAN",
    "IPVS": "IPVS", "ACME": "ACME", "FIPS": "FIPS", "CVE": "CVE", "POSIX": "POSIX", "WebSocket": "WebSocket",
    "WebSockets": "WebSocket", "GraphQL": "GraphQL", "AMQP": "AMQP", "MQTT": "MQTT", "SNI": "SNI",
    "CloudEvents spec": "CloudEvents", "Protocol Buffers": "Protocol Buffers", "protobuf": "Protocol Buffers",
    "Protobuf": "Protocol Buffers", "TUF": "TUF", "The Update Framework": "TUF", "OAuth2.0": "OAuth",
    "RBAC": "RBAC", "Role-Based Access Control": "RBAC", "Role-based access control": "RBAC",
    "StatsD": "StatsD", "Syslog": "Syslog", "syslog": "Syslog", "Kerberos": "Kerberos",
    "Pod Security Standards": "Pod Security Standards", "SemVer": "SemVer", "Semantic Versioning": "SemVer",
}
EXTRA_ORGANIZATIONS = {
    "CNCF": "Cloud Native Computing Foundation", "Cloud Native Computing Foundation":
    "Cloud Native Computing Foundation", "Linux Foundation": "Linux Foundation", "The Linux Foundation":
    "Linux Foundation", "LF": "Linux Foundation", "CNCF TOC": "Cloud Native Computing Foundation",
    "AWS": "Amazon Web Services", "Amazon": "Amazon Web Services", "Google": "Google Cloud",
    "Microsoft": "Microsoft", "OpenSSF": "Open Source Security Foundation",
    "Open Source Security Foundation": "Open Source Security Foundation", "Apache Software Foundation":
    "Apache Software Foundation", "W3C": "W3C", "IETF": "IETF", "GitHub": "GitHub", "GitLab": "GitLab",
}
PROJECT_ALIASES = {
    "k8s": "Kubernetes", "K8s": "Kubernetes", "K8S": "Kubernetes",
    "OTel": "OpenTelemetry", "OTEL": "OpenTelemetry", "otel": "OpenTelemetry", "Open Telemetry": "OpenTelemetry",
    "Argo CD": "Argo", "ArgoCD": "Argo", "Argo Workflows": "Argo", "Argo Rollouts": "Argo", "Argo Events": "Argo",
    "Envoy Proxy": "Envoy", "Fluent Bit": "Fluentd", "FluentBit": "Fluentd", "Fluent-bit": "Fluentd",
    "Linkerd2": "Linkerd", "Flux CD": "Flux", "FluxCD": "Flux", "Flux2": "Flux", "Flagger": "Flux",
    "Prometheus Operator": "Prometheus", "Alertmanager": "Prometheus", "Pushgateway": "Prometheus",
    "Jaeger UI": "Jaeger", "Notary v2": "Notary Project", "Notation": "Notary Project", "Gatekeeper": "Open Policy Agent (OPA)",
    "OPA Gatekeeper": "Open Policy Agent (OPA)", "Karmada Operator": "Karmada", "Kubernetes Dashboard": "Kubernetes",
    "kube-prometheus": "Prometheus", "Cloud Native Buildpacks": "Buildpacks", "Knative Serving": "Knative",
    "Knative Eventing": "Knative", "Harbor registry": "Harbor", "Flatcar": "Flatcar Container Linux",
    "Flatcar Linux": "Flatcar Container Linux", "Virtual Kubelet": "Virtual Kubelet",
}
# Category names too generic to tag as a category in running text.
GENERIC_CATEGORY_WORDS = {
    "security", "tools", "framework", "runtime", "runtimes", "network", "storage", "platform", "database", "data",
    "training", "inference", "evaluation", "languages", "protocol", "gateway", "special", "observability",
    "rag", "guardrail", "tooling", "embedded functions", "hosted platforms", "hosted platform", "post training",
    "data science", "data architecture", "agent tool", "agent framework", "state and memory", "structured output",
    "knowledge graph", "installable platform", "edge/bare metal", "accelerator and superpod",
    "workload runtime", "model asset and registry", "applications frameworks", "application frameworks",
    "debugging & observability", "automation & configuration", "security & compliance",
}
CATEGORY_EXTRA = {"Observability": "Observability and Analysis", "Serverless": "Serverless",
                  "Continuous Integration": "Continuous Integration & Delivery",
                  "Continuous Delivery": "Continuous Integration & Delivery",
                  "Service Discovery": "Coordination & Service Discovery",
                  "Chaos Engineering": "Chaos Engineering"}
# Words near an ambiguous name that say "this is the software": kept short and technical on purpose.
CUE_WORDS = {
    "kubernetes", "k8s", "cluster", "clusters", "chart", "charts", "container", "containers", "image", "images",
    "registry", "registries", "proxy", "mesh", "sidecar", "cncf", "project", "controller", "controllers",
    "operator", "crd", "crds", "gitops", "pod", "pods", "namespace", "yaml", "cli", "api", "repository", "repo",
    "plugin", "plugins", "install", "installed", "installation", "deploy", "deployed", "deployment", "release",
    "releases", "version", "v1", "v2", "v3", "server", "config", "configuration", "manifest", "manifests",
    "reconcile", "reconciliation", "sync", "policy", "policies", "runtime", "workflow", "workflows", "rollout",
    "rollouts", "pipeline", "pipelines", "microservices", "traffic", "ingress", "gateway", "metrics", "tracing",
    "traces", "telemetry", "vulnerability", "vulnerabilities", "scanning", "signing", "signature", "signatures",
    "artifact", "artifacts", "oci", "docker", "cloud", "native", "open-source", "source", "helm", "kubectl",
    "service", "services", "daemon", "agent", "dashboard", "upstream", "downstream", "envoy", "istio", "linkerd",
    "argo", "flux", "harbor", "falco", "rules", "alerts", "kernel", "syscalls", "ebpf", "notary", "tls", "mtls",
    "grpc", "http", "endpoint", "endpoints", "load", "balancer", "listener", "listeners", "filter", "filters",
    "workload", "workloads", "github", "binary", "command", "cd", "ci", "database", "shard", "sharding", "mysql",
    "scheduler", "batch", "jobs", "autoscaling", "scaler", "scalers", "event-driven", "serverless", "storage",
    "ceph", "volume", "volumes", "catalog", "portal", "developer", "crossplane", "provider",
    "providers", "compositions", "buildpack", "buildpacks", "builder", "dapr", "sidecars", "app", "apps",
}
NEGATIVE_CUES = {"ship", "ships", "boat", "boats", "sea", "ocean", "sail", "sailing", "sailor", "captain", "vessel",
                 "steering", "bay", "tide", "storm", "fishing", "capacitor", "neutrons", "magnetic",
                 "seals", "freight", "king", "queen", "ambassador", "embassy", "falcon", "falconry", "bird", "birds",
                 "notarized", "notarize", "witness", "deed", "flood", "river", "webers", "treaty"}
KIND_SENTENCE_START_OK = {"is", "are", "can", "have", "has", "must", "should", "may", "will", "that", "in", "with",
                          "provide", "provides", "run", "runs", "use", "uses", "allow", "allows", "let", "lets",
                          "need", "needs", "represent", "represents", "and", "or", "objects", "resources", "object",
                          "resource", "manifest", "spec"}
CONFIG_ROOTS = {"spec", "metadata", "status", "data", "global", "server", "controller", "webhook", "config",
                "image", "resources", "service", "ingress", "persistence", "prometheus", "alertmanager", "grafana",
                "values", "auth", "tls", "cluster", "storage", "rbac", "serviceAccount", "podSecurityContext",
                "securityContext", "nodeSelector", "replicaCount", "admin", "proxy", "identity", "kubelet",
                "apiServer", "networking", "etcd", "scrape_configs", "global_config", "log", "logging",
                "exporters", "receivers", "processors", "extensions", "pipelines", "telemetry", "configs",
                "certificates", "dashboards", "env", "pod", "deployment", "template", "containers"}
NOT_CONFIG_TAILS = {"io", "com", "org", "net", "dev", "sh", "md", "yaml", "yml", "json", "go", "py", "txt", "html",
                    "svg", "png", "jpg", "tar", "gz", "zip", "js", "ts", "sum", "mod", "proto", "toml", "conf",
                    "cfg", "ini", "log", "pem", "crt", "key", "cncf", "ai", "app", "cloud", "co", "us", "eu", "local", "svc",
                    "internal", "example", "localhost"}

FLAG_RE = re.compile(r"(?<![\w/.-])--[a-z0-9][a-z0-9-]*[a-z0-9](?![\w-])")
DOTTED_RE = re.compile(r"(?<![\w/@:-])(?<!\w\.)([a-z][A-Za-z0-9_]*)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?![\w/(-]|\.[A-Za-z])")
API_VERSION_RE = re.compile(
    r"(?<![\w./-])((?:[a-z0-9-]+\.)+[a-z]{2,}|apps|batch|autoscaling|policy)/v[0-9]+(?:(?:alpha|beta)[0-9]+)?(?![\w/.-])")
HYPHEN_SUFFIX_OK = {"native", "based", "compatible", "aware", "enabled", "specific", "style", "like", "related",
                    "managed", "powered", "friendly", "compliant", "certified", "driven", "centric", "focused",
                    "backed", "only", "ready", "conformant", "supported", "generated", "defined", "level", "wide",
                    "formatted", "encoded", "signed", "scoped", "capable", "first"}
VERSION_PART = re.compile(r"^(?:v?\d+(?:(?:alpha|beta)\d*)?)$")
CODE_API_VERSION_RE = re.compile(r"(?<![\w./-])[a-z][a-z0-9-]*/v[0-9]+(?:(?:alpha|beta)[0-9]+)?(?![\w/.-])")
CODE_RE = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]+`|^\s*\$ .*$", re.S | re.M)
YAML_DOC_SPLIT = re.compile(r"^---\s*$|^```.*$", re.M)
KIND_LINE = re.compile(r"^\s*kind:\s*[\"']?([A-Z][A-Za-z0-9]+)[\"']?\s*$", re.M)
API_LINE = re.compile(r"^\s*apiVersion:\s*[\"']?([A-Za-z0-9./-]+)[\"']?\s*$", re.M)
# Not common.text.words: case statistics need each match's position and case, and words that start with a letter.
WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9+-]*")

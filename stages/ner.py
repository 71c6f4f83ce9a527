"""Named entities and relations of the cloud-native world, from the language-filtered chunks.

Why a rule-based spaCy pipeline (`spacy.blank("en")` + PhraseMatcher + regexes) and not a trained model: no model
can be downloaded here, and the names that matter are known in advance: every landscape item, the CNCF members,
the landscape categories, Kubernetes kinds (built in plus every `kind:` found in the chunks' manifests), CLI tools,
standards, flags and config keys. What a list cannot know is whether "Harbor" or "helm" in a sentence is the
project or the English word; context rules decide that (capitalisation, sentence position, code context, cue
words, the chunk's own project), and the hand-annotated gold set measures how well.

Outputs: data/ner/entities.jsonl (one mention a line), relations.jsonl (typed patterns, landscape facts,
co-occurrence), graph.json (networkx node-link) + graph.graphml, metrics/ner.json (counts, gold P/R/F1),
metrics/ner_graph.png (top relations).

Gold conventions (tests/data/ner_gold.jsonl): PROJECT = any landscape item or a known alias, sub-projects map to
their item ("Argo CD" -> Argo); K8S_RESOURCE = a capitalised Kubernetes kind, singular or plural ("Pods");
API_OBJECT = a custom resource kind, CustomResourceDefinition, or an apiVersion group/version; CLI_TOOL = a
command-line binary written as the command (lower case); CONFIG = a long flag or a dotted config key; STANDARD =
a protocol/specification/interface (wins over the landscape where the issue calls it a standard: gRPC, SPIFFE,
CNI); ORGANIZATION = a CNCF member, training/service partner or foundation; CATEGORY = a landscape category or
subcategory name (multi-word ones in any case: "service mesh").
"""

from __future__ import annotations

import bisect
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stages.common.cli import StageError, run_cli, setup_logging, stage_parser
from stages.common.jsonl import atomic_write, read_jsonl, write_json, write_jsonl
from stages.common.metrics import StageMetrics
from stages.common.params import load_params
from stages.common.progress import progress

log = logging.getLogger(__name__)

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
WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9+-]*")

# Relation patterns over the text between two entities of one sentence, tried in order; the first that fits wins.
# `reverse` turns "X is used by Y" into Y uses X.
RELATION_PATTERNS: tuple[tuple[str, re.Pattern[str], bool], ...] = (
    ("alternative-to", re.compile(r"\b(?:alternative (?:to|for)|instead of|replacement for|replaces|rather than|"
                                  r"as opposed to|compared (?:to|with))\b"), False),
    ("integrates-with", re.compile(r"\b(?:integrat(?:es|ed|ion|ing|e)? (?:with|into)|works (?:well )?with|"
                                   r"compatible with|interoperates with|support(?:s)? for|supports|"
                                   r"exports? (?:\w+ )?(?:to|into)|sends? (?:\w+ )?to|scrapes?|"
                                   r"collects? (?:\w+ )?from|connects? to)\b"), False),
    ("extends", re.compile(r"\b(?:extends?|extending|extension (?:of|to|for)|plugin (?:for|to)|add-on (?:for|to)|"
                           r"addon for)\b"), False),
    ("part-of", re.compile(r"\b(?:part of|component of|sub-?project of|member of|included in|hosted by|"
                           r"donated to|maintained by|governed by)\b|"
                           r"\b(?:graduated|incubating|sandbox) project (?:of|at|in)\b"), False),
    ("runs-on", re.compile(r"(?:\bruns? (?:on|in|inside|atop)|\brunning (?:on|in|inside)|\bdeployed (?:on|to|in|into)|"
                           r"\binstalled (?:on|in|into)|\bhosted on|\bnative to|\bfor|\bon)"
                           r"(?: (?:a|an|the|any|top of|your|each))? $"), False),
    ("uses", re.compile(r"\b(?:is used by|are used by|used by|is consumed by)\b"), True),
    ("uses", re.compile(r"\b(?:uses|use|leverages?|relies on|rely on|built (?:on|with|upon)|based on|depends on|"
                        r"requires|powered by|backed by|stores? (?:\w+ )?in|on top of)\b"), False),
    ("is-a", re.compile(r"^ ,? ?(?:is|are) (?:a|an) (?:[\w-]+ ){0,2}$|^ , (?:a|an) (?:[\w-]+ ){0,2}$"), False),
)
RUNS_ON_VERB = re.compile(r"\b(?:runs?|running|deployed|installed|hosted|native)\b")
RUNS_ON_PLATFORMS = {"Kubernetes", "Docker", "Knative", "Red Hat OpenShift", "Linux"}
APPOSITION_PROJECT = re.compile(r"^ , (?:a|an|the) $")  # "X, a CNCF project": X part-of CNCF
MAX_BETWEEN_CHARS = 80
RELATION_ENTITY_TYPES = {"PROJECT", "K8S_RESOURCE", "CLI_TOOL", "API_OBJECT", "STANDARD", "ORGANIZATION",
                         "CATEGORY"}
IS_A_TAIL_TYPES = {"CATEGORY", "STANDARD", "K8S_RESOURCE", "API_OBJECT"}


# ---------------------------------------------------------------------------------------------------------------
# Landscape and gazetteer
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class LandscapeItem:
    """One landscape entry, with the path that places it (an item may sit in several subcategories)."""

    name: str
    canonical: str
    category: str
    subcategory: str
    maturity: str
    repo_url: str
    is_org: bool


def canonical_name(raw: str) -> str:
    """The landscape name without its listing qualifier: "Harbor (Wasm)" -> "Harbor", "IBM (member)" -> "IBM"."""
    name = NAME_QUALIFIER.sub("", raw.strip())
    return CORP_SUFFIX.sub("", name).strip()


def load_landscape(path: str | Path) -> list[LandscapeItem]:
    """Every item of landscape.yml (members included) with its category path; second paths count too."""
    try:
        with Path(path).open(encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise StageError(f"cannot read landscape file {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("landscape"), list):
        raise StageError(f"{path} is not a landscape.yml (no top-level 'landscape' list)")
    items: list[LandscapeItem] = []
    for cat in data["landscape"]:
        for sub in cat.get("subcategories") or []:
            for raw in sub.get("items") or []:
                if not isinstance(raw, dict) or not raw.get("name"):
                    continue
                is_org = cat.get("name") == MEMBERS_CATEGORY or sub.get("name") in ORG_SUBCATEGORIES
                paths = [(cat.get("name", ""), sub.get("name", ""))]
                for second in raw.get("second_path") or []:
                    if isinstance(second, str) and " / " in second:
                        paths.append(tuple(part.strip() for part in second.split(" / ", 1)))  # type: ignore[arg-type]
                for category, subcategory in paths:
                    items.append(LandscapeItem(
                        name=raw["name"], canonical=canonical_name(raw["name"]), category=category,
                        subcategory=subcategory, maturity=str(raw.get("project") or ""),
                        repo_url=str(raw.get("repo_url") or ""), is_org=is_org))
    return items


def load_categories(items: Iterable[LandscapeItem]) -> list[str]:
    """Category and subcategory names of the software part of the landscape."""
    names = {it.category for it in items if not it.is_org} | {it.subcategory for it in items if not it.is_org}
    return sorted(n for n in names if n and not n.startswith("Certified"))


@dataclass
class Term:
    """What a surface form means, and whether the context must confirm it."""

    canonical: str
    type: str
    ambiguous: bool = False


@dataclass
class Gazetteer:
    """Surface form -> {type: term}, matched case-sensitively (`exact`) or ignoring case (`folded`).

    A surface may carry several types ("containerd" the project and the command): the context rules and the
    type priority choose per mention.
    """

    exact: dict[str, dict[str, Term]] = field(default_factory=dict)
    folded: dict[str, dict[str, Term]] = field(default_factory=dict)

    def add(self, surface: str, term: Term, fold: bool = False) -> None:
        surface = surface.strip()
        if len(re.sub(r"[^A-Za-z0-9]", "", surface)) < 2:
            return
        table = self.folded if fold else self.exact
        key = surface.lower() if fold else surface
        table.setdefault(key, {}).setdefault(term.type, term)  # first writer wins: landscape order is stable

    def lookup(self, surface: str) -> list[Term]:
        """Every term a surface form may mean (exact forms first), for tests and debugging."""
        found = list(self.exact.get(surface, {}).values()) + list(self.folded.get(surface.lower(), {}).values())
        return sorted(found, key=lambda t: TYPE_PRIORITY[t.type])


def word_case_counts(texts: Iterable[str]) -> tuple[Counter[str], Counter[str]]:
    """How often each word is written lower case mid-sentence in prose, and how often capitalised.

    This is the "is it an English word here?" signal: a landscape name that the corpus mostly writes in lower
    case in running text ("service", "score", "canonical") needs context before it counts as a name.
    """
    lower: Counter[str] = Counter()
    upper: Counter[str] = Counter()
    for text in texts:
        prose = CODE_RE.sub(" ", text)
        for match in WORD_RE.finditer(prose):
            word = match.group()
            start = match.start()
            before = prose[max(0, start - 2):start]
            if start == 0 or re.search(r"[.!?:\n#*>-]\s*$", before):
                continue  # sentence or line start says nothing about case
            if word.islower():
                lower[word] += 1
            elif word[0].isupper() and word[1:].islower():
                upper[word.lower()] += 1
    return lower, upper


@dataclass
class WordStats:
    """Case statistics of the corpus words, the stand-in for an English dictionary (none is installable here)."""

    lower: Counter[str]
    upper: Counter[str]

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> WordStats:
        return cls(*word_case_counts(texts))

    def common(self, word: str) -> bool:
        """Used as an ordinary word: often in lower case, at least as often as capitalised."""
        n = self.lower.get(word, 0)
        return n >= 3 and n >= self.upper.get(word, 0)

    def seen_lower(self, word: str) -> bool:
        """Written in lower case now and then: a company called that needs context."""
        n = self.lower.get(word, 0)
        return n >= 2 and 3 * n >= self.upper.get(word, 0)

    def name_like(self, word: str) -> bool:
        """Mostly capitalised mid-sentence: its rare lower-case uses ("kubernetes") are the name too."""
        up = self.upper.get(word, 0)
        return up >= 1 and up >= 2 * self.lower.get(word, 0)


def name_variants(canonical: str) -> list[str]:
    """Surface forms of a landscape name: itself, without "(ACRONYM)", the acronym, without " Project"."""
    out = [canonical]
    m = re.match(r"^(.*?)\s*\(([^)]+)\)$", canonical)
    if m:
        base, inner = m.group(1).strip(), m.group(2).strip()
        out.append(base)
        initials = "".join(w[0] for w in re.split(r"[\s-]+", base) if w and w[0].isalpha()).upper()
        if inner.upper() == initials or (inner.isupper() and len(inner) <= 6):
            out.append(inner)
    for form in list(out):
        if form.endswith(" Project"):
            out.append(form[: -len(" Project")])
        if form.startswith("The "):
            out.append(form[4:])
    return list(dict.fromkeys(v for v in out if v))


def build_gazetteer(items: Sequence[LandscapeItem], ambiguous_names: Iterable[str], stats: WordStats,
                    manifest_kinds: dict[str, str] | None = None) -> Gazetteer:
    """All surface forms the matcher knows, with their type and whether they need context.

    `stats` says which words the corpus uses as ordinary words ("Score", "Distribution", "Port"): those names
    need context, and only names the corpus treats as names are matched in any case.
    """
    gaz = Gazetteer()
    ambiguous = {n.lower() for n in ambiguous_names}

    def needs_context(surface: str) -> bool:
        """A title-case or lower-case name that is also an ordinary word ("Harbor", "Control Plane")."""
        words = surface.lower().split()
        if surface.lower() in ambiguous:
            return True
        if surface.islower():  # "etcd", "cert-manager": the name is lower case, so lower-case use says nothing
            return False
        plain_case = all(w[1:].islower() or w.islower() for w in surface.split())
        return plain_case and all(stats.common(w) for w in words)

    def foldable(surface: str) -> bool:
        """Match in any case: CamelCase/digits/punctuation ("CoreDNS", "K8sGPT") or a word the corpus capitalises."""
        if re.search(r"[a-z][A-Z]|\d|[-.]", surface) or " " in surface:
            return True
        return stats.name_like(surface.lower())


    for category in load_categories(items):
        _add_category(gaz, category, category)
    for surface, category in CATEGORY_EXTRA.items():
        _add_category(gaz, surface, category)
    for it in sorted(items, key=lambda i: (i.is_org, i.canonical)):
        kind = "ORGANIZATION" if it.is_org else "PROJECT"
        for surface in name_variants(it.canonical):
            org_word = it.is_org and " " not in surface and stats.seen_lower(surface.lower())
            _add_name(gaz, surface, Term(it.canonical, kind, needs_context(surface) or org_word), foldable(surface))
    for surface, canonical in EXTRA_ORGANIZATIONS.items():
        _add_name(gaz, surface, Term(canonical, "ORGANIZATION", needs_context(surface)), False)
    known = {it.canonical for it in items}
    for surface, canonical in PROJECT_ALIASES.items():
        if canonical in known:
            _add_name(gaz, surface, Term(canonical, "PROJECT", needs_context(surface)), foldable(surface))
    names = {it.canonical.lower() for it in items}
    kinds = {k: t for k, t in (manifest_kinds or {}).items() if k.lower() not in names}  # `kind: Karmada`
    kinds.update({k: "API_OBJECT" for k in BUILTIN_API_OBJECTS})
    kinds.update({k: "K8S_RESOURCE" for k in CORE_KINDS})
    for kind, etype in sorted(kinds.items()):
        term = Term(kind, etype, stats.common(kind.lower()) or kind in {"Application", "Workflow", "Sensor", "Issuer",
                                                                     "Certificate", "Sidecar", "Rollout"})
        for surface in (kind, plural(kind)):
            gaz.add(surface, term)
    for tool in CLI_TOOLS:
        gaz.add(tool, Term(tool, "CLI_TOOL", tool in AMBIGUOUS_CLI or tool in ambiguous))
    for surface, canonical in STANDARDS.items():
        gaz.add(surface, Term(canonical, "STANDARD"))
        if len(surface) > 3 and re.search(r"[a-z][A-Z]|[A-Z][a-z]+[A-Z]", surface):  # gRPC, eBPF, OpenMetrics
            gaz.add(surface, Term(canonical, "STANDARD"), fold=True)
        if surface.isupper() and surface.isalpha():  # JWTs, SBOMs, CVEs
            gaz.add(surface + "s", Term(canonical, "STANDARD"))
    return gaz


def _add_name(gaz: Gazetteer, surface: str, term: Term, foldable: bool) -> None:
    """A name is matched exactly; distinctive project names (not an English word, > 3 chars) in any case too.

    Companies are written with their capitals, so organisations are never matched case-insensitively.
    """
    gaz.add(surface, term)
    cli_name = surface.lower() in CLI_TOOLS  # lower-case "linkerd"/"argocd" is the command, decided by context
    if foldable and not term.ambiguous and len(surface) > 3 and term.type == "PROJECT" and not cli_name:
        gaz.add(surface, term, fold=True)
    elif surface.islower() and not term.ambiguous:
        gaz.add(surface[0].upper() + surface[1:], term)  # "etcd" opening a sentence


def _add_category(gaz: Gazetteer, surface: str, category: str) -> None:
    """Multi-word category names in any case and plural ("service meshes"); generic one-word names not at all."""
    low = surface.lower()
    if low in GENERIC_CATEGORY_WORDS and surface not in CATEGORY_EXTRA:
        return
    term = Term(category, "CATEGORY")
    parts = [p.strip() for p in re.split(r"\s+(?:&|and)\s+", surface)] if "&" in surface else [surface]
    for form in [surface, *parts]:
        if form.lower() in GENERIC_CATEGORY_WORDS or (form in parts and " " not in form):
            continue
        if " " in form:
            gaz.add(form, term, fold=True)
            gaz.add(plural(form), term, fold=True)
        elif form == surface:
            gaz.add(form, term)


def plural(word: str) -> str:
    """English plural of a kind or category name ("Ingress" -> "Ingresses", "Policy" -> "Policies")."""
    if word.endswith(("s", "x", "sh", "ch")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def manifest_kinds(texts: Iterable[str]) -> dict[str, str]:
    """Kinds declared in the chunks' manifests: core/k8s.io groups are K8S_RESOURCE, others API_OBJECT.

    A CustomResourceDefinition's own `names.kind` is an API object too.
    """
    found: dict[str, str] = {}
    for text in texts:
        if "kind:" not in text:
            continue
        for block in YAML_DOC_SPLIT.split(text):
            kinds = KIND_LINE.findall(block)
            if not kinds:
                continue
            api = API_LINE.search(block)
            group = api.group(1).rsplit("/", 1)[0] if api and "/" in api.group(1) else ""
            core = group in CORE_GROUPS or group.endswith("k8s.io")
            first = kinds[0]
            if first == "CustomResourceDefinition":
                found.setdefault(first, "API_OBJECT")
                for crd_kind in kinds[1:2]:
                    found.setdefault(crd_kind, "API_OBJECT")
            elif api:
                found.setdefault(first, "K8S_RESOURCE" if core else "API_OBJECT")
    return dict(sorted(found.items()))


# ---------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Mention:
    entity: str
    type: str
    text: str
    start: int
    end: int
    sent: int  # index of the sentence inside its text, for relations and co-occurrence
    sent_span: tuple[int, int] = (0, 0)  # the sentence's character range


class EntityExtractor:
    """spaCy tokenizer + sentencizer + two PhraseMatchers (ORTH, LOWER), regexes for flags/keys, context rules."""

    def __init__(self, gazetteer: Gazetteer) -> None:
        import spacy
        from spacy.language import Language
        from spacy.matcher import PhraseMatcher

        if "ner_line_breaks" not in Language.factories:
            Language.component("ner_line_breaks", func=_line_breaks)
        self.nlp = spacy.blank("en")
        self.nlp.add_pipe("sentencizer")
        self.nlp.add_pipe("ner_line_breaks")
        self.gaz = gazetteer
        self.exact = PhraseMatcher(self.nlp.vocab, attr="ORTH")
        self.folded = PhraseMatcher(self.nlp.vocab, attr="LOWER")
        self._terms: dict[int, Term] = {}
        for matcher, table in ((self.exact, gazetteer.exact), (self.folded, gazetteer.folded)):
            by_key: dict[str, list[str]] = defaultdict(list)
            for surface, terms in table.items():
                for term in terms.values():
                    by_key[f"{term.type}\x1f{term.canonical}\x1f{int(term.ambiguous)}"].append(surface)
            for key in sorted(by_key):
                canonical_type, canonical, amb = key.split("\x1f")
                term = Term(canonical, canonical_type, amb == "1")
                self._terms[self.nlp.vocab.strings.add(key)] = term
                matcher.add(key, list(self.nlp.tokenizer.pipe(sorted(by_key[key]))))

    def extract(self, texts: Sequence[str], projects: Sequence[str] | None = None,
                batch_size: int = 256) -> Iterator[list[Mention]]:
        """Mentions of each text, sorted by offset; `projects` is each text's own project (or "")."""
        projects = projects or [""] * len(texts)
        for doc, project in zip(self.nlp.pipe(texts, batch_size=batch_size), projects, strict=True):
            yield self._doc_mentions(doc, project)

    def _doc_mentions(self, doc: Any, project: str) -> list[Mention]:
        text = doc.text
        code = code_regions(text)
        sents = [(s.start_char, s.end_char) for s in doc.sents]
        sent_starts = [s for s, _ in sents]
        candidates: list[tuple[int, int, Term]] = []
        for matcher in (self.exact, self.folded):
            for match_id, start, end in matcher(doc):
                term = self._terms[match_id]
                span = doc[start:end]
                if inside_identifier(text, span.start_char, span.end_char):
                    continue
                if term.ambiguous and not self._context_ok(doc, span, term, project, code):
                    continue
                candidates.append((span.start_char, span.end_char, term))
        candidates.extend(regex_candidates(text, code))
        chosen = select_spans(candidates)
        out = []
        for s, e, t in chosen:
            i = max(0, bisect.bisect_right(sent_starts, s) - 1)
            out.append(Mention(t.canonical, t.type, text[s:e], s, e, i, sents[i] if sents else (0, len(text))))
        return out

    def _context_ok(self, doc: Any, span: Any, term: Term, project: str, code: list[tuple[int, int]]) -> bool:
        """Decide whether an ambiguous surface form is the entity here (see module docstring)."""
        in_code = in_regions(code, span.start_char)
        if term.type == "CLI_TOOL":
            return _command_context(doc, span, in_code)
        if project and term.canonical == project and not span.text.islower():
            return True
        if span.text.islower():  # a lower-case landscape name ("kind", "cargo") only as code, not as `kind:`
            return in_code and not _yaml_key(doc, span)
        sent = span.sent
        words = {t.lower_ for t in sent if not t.is_punct}
        if term.type == "ORGANIZATION":  # "Port", "Block", "Canonical": only where companies are the topic
            return bool(words & ORG_CUES)
        sentence_start = _is_sentence_start(span)
        if term.type in ("K8S_RESOURCE", "API_OBJECT"):
            if in_code:
                if span.text.islower() or _yaml_key(doc, span):
                    return False
                # `Config{...}` in Go, "[Server #3]" in a log: a custom kind that is a word needs `kind:` or a cue
                return term.canonical in CORE_KINDS or _after_kind_key(doc, span) or _kind_cue_adjacent(doc, span)
            if term.canonical not in CORE_KINDS and not _kind_cue_adjacent(doc, span):
                return False
            if sentence_start:
                nxt = doc[span.end] if span.end < len(doc) else None
                return nxt is not None and nxt.lower_ in KIND_SENTENCE_START_OK
            return True
        if words & NEGATIVE_CUES and not (words & {"kubernetes", "cluster", "cncf", "k8s"}):
            return False
        if in_code:
            return True
        has_cue = bool((words - {span.text.lower()}) & CUE_WORDS)
        if sentence_start:
            return has_cue
        return has_cue or self._other_entity_near(sent, span)

    def _other_entity_near(self, sent: Any, span: Any) -> bool:
        """Another unambiguous name in the sentence ("Harbor integrates with Trivy") says the topic is software."""
        for matcher in (self.exact, self.folded):
            for match_id, start, end in matcher(sent.as_doc()):
                term = self._terms[match_id]
                if not term.ambiguous and sent[start:end].text != span.text:
                    return True
        return False


def _line_breaks(doc: Any) -> Any:
    """Markdown lines (list items, headings, table rows) are separate sentences."""
    for i, token in enumerate(doc[1:], start=1):
        if doc[i - 1].is_space and "\n" in doc[i - 1].text:
            token.is_sent_start = True
    return doc


def _is_sentence_start(span: Any) -> bool:
    for token in span.sent:
        if token.i >= span.start:
            return True
        if not (token.is_punct or token.is_space or token.text in {"-", "*", "#", "##", "###", ">", "1."}):
            return False
    return True


def _command_context(doc: Any, span: Any, in_code: bool) -> bool:
    """A lower-case tool name is the tool when it is used as a command: `helm install`, "the flux CLI"."""
    nxt = doc[span.end] if span.end < len(doc) else None
    prev = doc[span.start - 1] if span.start > 0 else None
    if nxt is not None and nxt.text in {":", "=", ".", "/"} and not doc[span.end - 1].whitespace_:
        return False  # `kind: Pod`, `helm.sh/chart`
    if prev is not None and (prev.text.startswith("-") or prev.text in {"=", "namespace"}):
        return False  # `kubectl -n linkerd get pods`: a flag's value
    if nxt is not None and (nxt.lower_ in CLI_SUBCOMMANDS or nxt.lower_ in CLI_CUES):
        return True
    after = doc[span.end + 1] if span.end + 1 < len(doc) else None
    if nxt is not None and nxt.text == "`" and after is not None and after.lower_ in NOT_COMMAND_NEXT:
        return False
    if in_code:
        line_start = prev is None or "\n" in prev.text or prev.text in {"$", "sudo", "`", "|", "&&", "(", "exec"}
        return line_start or nxt is None or nxt.text.startswith(("`", "-")) or nxt.is_space
    return False


def _yaml_key(doc: Any, span: Any) -> bool:
    nxt = doc[span.end] if span.end < len(doc) else None
    return nxt is not None and nxt.text == ":"


def _after_kind_key(doc: Any, span: Any) -> bool:
    return span.start >= 2 and doc[span.start - 1].text == ":" and doc[span.start - 2].lower_ == "kind"


def _kind_cue_adjacent(doc: Any, span: Any) -> bool:
    """A custom kind that is also a word ("Application", "Server") needs "resource", "CRD", ... right beside it."""
    cues = {"resource", "resources", "crd", "crds", "object", "objects", "kind", "custom", "manifest", "manifests",
            "spec", "cr", "crs", "controller"}
    before = [t.lower_ for t in doc[max(0, span.start - 6):span.start] if not (t.is_punct or t.is_space)][-2:]
    after = [t.lower_ for t in doc[span.end:span.end + 6] if not (t.is_punct or t.is_space)][:2]
    return bool(set(before + after) & cues)


def inside_identifier(text: str, start: int, end: int) -> bool:
    """`kube-proxy`, `karmada-controller`, `prometheus_rules`, `k8s.io`: a name glued into an identifier is not it.

    A capitalised name with an adjective suffix stays a mention ("Kubernetes-native", "Prometheus-compatible");
    "CRI-containerd" or "Argo-Workflows-Server" do not.
    """
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    after2 = text[end + 1] if end + 1 < len(text) else " "
    before2 = text[start - 2] if start > 1 else " "
    if (before in "_/." and before2.isalnum()) or (after in "_/" and after2.isalnum()):
        return True
    if after == "." and after2.isalpha():
        return True
    if before == "-" and before2.isalnum():
        return True
    if after == "-" and after2.isalnum():
        suffix = re.match(r"[A-Za-z]+", text[end + 1:end + 20])
        return not (text[start].isupper() and suffix and suffix.group() in HYPHEN_SUFFIX_OK)
    return False


def code_regions(text: str) -> list[tuple[int, int]]:
    """Character ranges of fenced blocks, inline code and `$ command` lines."""
    return [(m.start(), m.end()) for m in CODE_RE.finditer(text)]


def in_regions(regions: list[tuple[int, int]], pos: int) -> bool:
    i = bisect.bisect_right(regions, (pos, float("inf"))) - 1
    return i >= 0 and regions[i][0] <= pos < regions[i][1]


def regex_candidates(text: str, code: list[tuple[int, int]]) -> list[tuple[int, int, Term]]:
    """Flags, dotted config keys and apiVersion groups: shapes, not names, so regexes find them."""
    out: list[tuple[int, int, Term]] = []
    for m in FLAG_RE.finditer(text):
        out.append((m.start(), m.end(), Term(m.group(), "CONFIG")))
    for m in API_VERSION_RE.finditer(text):
        out.append((m.start(), m.end(), Term(m.group(), "API_OBJECT")))
    for m in CODE_API_VERSION_RE.finditer(text):  # `apiextensions/v1` in code: any group/version shape
        if in_regions(code, m.start()):
            out.append((m.start(), m.end(), Term(m.group(), "API_OBJECT")))
    for m in DOTTED_RE.finditer(text):
        root, rest = m.group(1), m.group(2)
        parts = [root, *rest[1:].split(".")]
        if parts[-1].lower() in NOT_CONFIG_TAILS or any(VERSION_PART.match(p) for p in parts):
            continue  # domains, files, `deployments.v1.apps`
        camel = any(re.search(r"[a-z][A-Z]", p) for p in parts)
        if root in CONFIG_ROOTS or (in_regions(code, m.start()) and (camel or len(parts) >= 3)):
            out.append((m.start(), m.end(), Term(m.group(), "CONFIG")))
    return out


def select_spans(candidates: list[tuple[int, int, Term]]) -> list[tuple[int, int, Term]]:
    """Non-overlapping spans: longest first, then type priority, then leftmost; returned in text order."""
    ranked = sorted(candidates, key=lambda c: (-(c[1] - c[0]), TYPE_PRIORITY[c[2].type], c[0], c[2].canonical))
    taken: list[tuple[int, int]] = []
    chosen: list[tuple[int, int, Term]] = []
    for start, end, term in ranked:
        if any(start < e and s < end for s, e in taken):
            continue
        taken.append((start, end))
        chosen.append((start, end, term))
    return sorted(chosen, key=lambda c: (c[0], c[1]))


# ---------------------------------------------------------------------------------------------------------------
# Relations
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RelationAcc:
    """Evidence gathered for one (head, relation, tail)."""

    count: int = 0
    chunks: set[str] = field(default_factory=set)
    sentences: set[str] = field(default_factory=set)

    def add(self, chunk_id: str, sentence: str) -> None:
        """Count distinct sentences, so boilerplate repeated on a hundred CLI reference pages counts once."""
        self.chunks.add(chunk_id)
        self.sentences.add(" ".join(sentence.lower().split()))
        self.count = len(self.sentences)


RelKey = tuple[str, str, str, str, str, str]  # head, head_type, relation, tail, tail_type, source


def pattern_relations(text: str, mentions: Sequence[Mention]) -> list[tuple[Mention, str, Mention]]:
    """Typed relations between neighbouring entities of one sentence, read off the words between them."""
    found: list[tuple[Mention, str, Mention]] = []
    usable = [m for m in mentions if m.type in RELATION_ENTITY_TYPES]
    for left, right in zip(usable, usable[1:], strict=False):
        if left.sent != right.sent or left.entity.lower() == right.entity.lower():
            continue
        between = text[left.end:right.start]
        if len(between) > MAX_BETWEEN_CHARS or "\n" in between or left.type == "CATEGORY":
            continue  # categories are only ever the tail ("X is a service mesh")
        if "," in between.lstrip().lstrip(",") or ";" in between:
            continue  # across a clause boundary: "X, a CNCF project, extends Y" says nothing about CNCF
        rel = classify_between(between, right, text[right.end:right.end + 30], left.type)
        if rel is None:
            continue
        relation, reverse = rel
        head, tail = (right, left) if reverse else (left, right)
        if tail.type == "CLI_TOOL" and head.type not in ("PROJECT", "ORGANIZATION"):
            continue  # "Pod uses kubectl" is how a sentence reads, not a fact
        found.append((right, relation, left) if reverse else (left, relation, right))
    return found


def _runs_on_ok(low: str, head_type: str, tail: Mention) -> bool:
    """Software runs on a platform: a project head, a project tail; a bare "for"/"on" only before a platform."""
    if head_type != "PROJECT" or tail.type != "PROJECT":
        return False
    return bool(RUNS_ON_VERB.search(low)) or tail.entity in RUNS_ON_PLATFORMS


def classify_between(between: str, tail: Mention, after: str = "", head_type: str = "PROJECT") -> tuple[str, bool] | None:
    """The relation that the words between two entities express, if any; (relation, reversed)."""
    low = " " + " ".join(between.lower().split()) + " "  # padded: patterns anchor on word edges
    if APPOSITION_PROJECT.match(low) and tail.type in ("ORGANIZATION", "PROJECT"):
        is_project = re.match(r"\s*(?:sub-?)?project\b", after, re.I)
        return ("part-of", False) if is_project else None
    for relation, pattern, reverse in RELATION_PATTERNS:
        if not pattern.search(low):
            continue
        if relation == "is-a" and (tail.type not in IS_A_TAIL_TYPES or not _head_noun_ends(after)):
            continue
        if relation == "runs-on" and not _runs_on_ok(low, head_type, tail):
            continue
        return relation, reverse
    return None


def _head_noun_ends(after: str) -> bool:
    """In "X is a service mesh that ..." the tail is the head noun; in "X is a DNS server" it is a modifier."""
    stripped = after.lstrip()
    if not stripped or stripped[0] in ".,;:)!?":
        return True
    word = stripped.split()[0].lower()
    return word in {"that", "which", "for", "and", "or", "with", "built", "designed", "written", "to", "in", "on",
                    "from", "used", "providing", "by", "like", "project", "tool", "implementation", "solution"}


def landscape_relations(items: Sequence[LandscapeItem], wanted: set[str]) -> list[tuple[str, str, str, str, str]]:
    """in-category / has-maturity facts of the landscape items that matter (mentioned or selected)."""
    facts: set[tuple[str, str, str, str, str]] = set()
    for it in items:
        if it.is_org or it.canonical not in wanted:
            continue
        if it.subcategory:
            facts.add((it.canonical, "PROJECT", "in-category", it.subcategory, "CATEGORY"))
        if it.category:
            facts.add((it.canonical, "PROJECT", "in-category", it.category, "CATEGORY"))
        if it.maturity:
            facts.add((it.canonical, "PROJECT", "has-maturity", it.maturity, "MATURITY"))
    return sorted(facts)


def relation_records(acc: dict[RelKey, RelationAcc], max_per_type: int) -> list[dict[str, Any]]:
    """Contract records, strongest first within a relation type, capped, then in a stable sorted order."""
    by_type: dict[str, list[tuple[RelKey, RelationAcc]]] = defaultdict(list)
    for key, value in acc.items():
        by_type[key[2]].append((key, value))
    records: list[dict[str, Any]] = []
    for relation in sorted(by_type):
        ranked = sorted(by_type[relation], key=lambda kv: (-kv[1].count, kv[0]))
        if max_per_type > 0:
            ranked = ranked[:max_per_type]
        for (head, head_type, rel, tail, tail_type, source), value in ranked:
            chunk_ids = sorted(value.chunks)
            records.append({
                "head": head, "head_type": head_type, "relation": rel, "tail": tail, "tail_type": tail_type,
                "source": source, "count": value.count,
                "evidence_chunk_id": chunk_ids[0] if chunk_ids else None,
                "evidence_chunk_ids": chunk_ids[:20],
            })
    records.sort(key=lambda r: (r["relation"], r["head"], r["tail"], r["source"], r["head_type"], r["tail_type"]))
    return records


# ---------------------------------------------------------------------------------------------------------------
# Gold evaluation
# ---------------------------------------------------------------------------------------------------------------
def load_gold(path: str | Path) -> list[dict[str, Any]]:
    try:
        return list(read_jsonl(path))
    except (OSError, ValueError) as exc:
        raise StageError(f"cannot read gold set {path}: {exc}") from None


def evaluate(extractor: EntityExtractor, gold: Sequence[dict[str, Any]],
             ambiguous_names: Iterable[str]) -> dict[str, Any]:
    """Exact span+label precision/recall/F1 per type and overall, plus precision on the ambiguous names."""
    texts = [g["text"] for g in gold]
    projects = [str(g.get("project") or "") for g in gold]  # the chunk's own project, as the stage has it
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    amb = {n.lower() for n in ambiguous_names}
    amb_tp = amb_fp = amb_fn = amb_neg = amb_rejected = 0
    amb_re = re.compile(r"\b(?:" + "|".join(re.escape(n) for n in sorted(amb)) + r")\b", re.I) if amb else None
    for record, mentions in zip(gold, extractor.extract(texts, projects), strict=True):
        want = {(e["start"], e["end"], e["label"]) for e in record.get("entities", [])}
        got = {(m.start, m.end, m.type) for m in mentions}
        for s, e, label in got:
            (tp if (s, e, label) in want else fp)[label] += 1
        for _s, _e, label in want - got:
            fn[label] += 1
        text = record["text"]
        amb_got = {(s, e) for s, e, label in got if label == "PROJECT" and text[s:e].lower() in amb}
        amb_want = {(s, e) for s, e, label in want if label == "PROJECT" and text[s:e].lower() in amb}
        amb_tp += len(amb_got & amb_want)
        amb_fp += len(amb_got - amb_want)
        amb_fn += len(amb_want - amb_got)
        for m in amb_re.finditer(text) if amb_re else ():
            if not any(s <= m.start() < e for s, e, label in want if label == "PROJECT"):
                amb_neg += 1  # the word used as a word (or as the command): the matcher must leave it alone
                amb_rejected += not any(s <= m.start() < e for s, e, label in got if label == "PROJECT")
    per_type = {t: prf(tp[t], fp[t], fn[t]) for t in ENTITY_TYPES}
    overall = prf(sum(tp.values()), sum(fp.values()), sum(fn.values()))
    return {"per_type": per_type, "overall": overall, "sentences": len(gold),
            "ambiguous": {**prf(amb_tp, amb_fp, amb_fn), "names": sorted(amb), "word_uses": amb_neg,
                          "word_uses_rejected": amb_rejected}}


def prf(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "tp": tp, "fp": fp, "fn": fn,
            "support": tp + fn}


# ---------------------------------------------------------------------------------------------------------------
# Graph
# ---------------------------------------------------------------------------------------------------------------
def build_graph(relations: Sequence[dict[str, Any]]) -> Any:
    """A MultiDiGraph: nodes are canonical names (with their type), one edge per relation record."""
    import networkx as nx

    graph = nx.MultiDiGraph()
    for rec in relations:
        for name, etype in ((rec["head"], rec["head_type"]), (rec["tail"], rec["tail_type"])):
            if name not in graph:
                graph.add_node(name, type=etype)
        graph.add_edge(rec["head"], rec["tail"], key=f"{rec['relation']}|{rec['source']}|{rec['head_type']}|{rec['tail_type']}",
                       relation=rec["relation"], source=rec["source"], count=rec["count"],
                       evidence=" ".join(rec["evidence_chunk_ids"]))
    return graph


def write_graph(graph: Any, json_path: Path, graphml_path: Path) -> None:
    import networkx as nx

    write_json(json_path, nx.node_link_data(graph, edges="links"))
    with atomic_write(graphml_path, "wb", encoding=None) as fh:
        nx.write_graphml(graph, fh)


def draw_graph(relations: Sequence[dict[str, Any]], png_path: Path, top_nodes: int = 40) -> int:
    """Top nodes by degree over the typed relations read from text, drawn offline with matplotlib Agg.

    Pattern relations are preferred (landscape facts would make every category a hub), then any non-co-occurrence
    relation, then whatever there is, so a tiny run still draws something.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    pattern = [r for r in relations if r["source"] == "pattern"]
    typed = [r for r in relations if r["relation"] not in ("co-occurs-with", "has-maturity")]
    chosen = pattern if len(pattern) >= 10 else typed if len(typed) >= 10 else list(relations)
    types = {r["head"]: r["head_type"] for r in chosen} | {r["tail"]: r["tail_type"] for r in chosen}
    graph = nx.DiGraph()
    for rec in sorted(chosen, key=lambda r: (-r["count"], r["head"], r["tail"])):
        if not graph.has_edge(rec["head"], rec["tail"]):
            graph.add_edge(rec["head"], rec["tail"], relation=rec["relation"], count=rec["count"])
    ranked = sorted(graph.degree(weight="count"), key=lambda nd: (-nd[1], nd[0]))[:top_nodes]
    sub = graph.subgraph([n for n, _ in ranked])
    fig, ax = plt.subplots(figsize=(16, 12), dpi=100)
    if len(sub):
        pos = nx.spring_layout(sub, seed=42, k=1.2)
        widths = [0.5 + min(4.0, d["count"] ** 0.5 / 3) for _, _, d in sub.edges(data=True)]
        palette = dict(zip(ENTITY_TYPES, ("#5dade2", "#58d68d", "#f5b041", "#af7ac5", "#d5dbdb", "#ec7063",
                                          "#f4d03f", "#aab7b8"), strict=True))
        colors = [palette.get(types.get(n, ""), "#cccccc") for n in sub.nodes]
        nx.draw_networkx_nodes(sub, pos, ax=ax, node_size=320, node_color=colors)
        nx.draw_networkx_edges(sub, pos, ax=ax, width=widths, alpha=0.5, arrows=True, arrowsize=8)
        nx.draw_networkx_labels(sub, pos, ax=ax, font_size=8)
        nx.draw_networkx_edge_labels(sub, pos, ax=ax, font_size=6,
                                     edge_labels={(u, v): d["relation"] for u, v, d in sub.edges(data=True)})
    ax.set_title(f"NER graph: top {len(sub)} entities by weighted degree over {len(chosen)} relations "
                 f"({'text patterns' if chosen is pattern else 'typed' if chosen is typed else 'all'}); "
                 "colour = entity type")
    ax.axis("off")
    with atomic_write(png_path, "wb", encoding=None) as fh:
        fig.savefig(fh, format="png", metadata={"Software": None})
    plt.close(fig)
    return len(sub)


# ---------------------------------------------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------------------------------------------
def read_chunks(path: Path, metrics: StageMetrics) -> list[dict[str, Any]]:
    """Chunks with a chunk_id and text; others are warned about, counted and skipped."""
    if not path.is_file():
        raise StageError(f"input chunks not found: {path} (run the langfilter stage first)")
    chunks: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            metrics.inc("chunks.in")
            try:
                rec = json.loads(line)
            except ValueError:
                log.warning("%s:%d: not JSON, skipped", path, lineno)
                metrics.inc("chunks.dropped.bad_json")
                continue
            if not isinstance(rec, dict) or not rec.get("chunk_id") or not isinstance(rec.get("text"), str):
                log.warning("%s:%d: no chunk_id/text, skipped", path, lineno)
                metrics.inc("chunks.dropped.bad_record")
                continue
            chunks.append(rec)
    chunks.sort(key=lambda r: r["chunk_id"])
    return chunks


def read_projects(path: Path, metrics: StageMetrics) -> list[dict[str, Any]]:
    if not path.is_file():
        log.warning("%s not found: chunk projects will not help disambiguate names", path)
        metrics.inc("errors.projects_missing")
        return []
    return [p for p in read_jsonl(path) if isinstance(p, dict) and p.get("project")]


def run_ner(chunks_path: Path, projects_path: Path, landscape_path: Path, out_dir: Path, params: dict[str, Any],
            gold_path: Path | None = None, metrics_path: Path | None = None,
            png_path: Path | None = None) -> dict[str, Any]:
    """The whole stage on explicit paths; returns the metrics dict it wrote."""
    metrics = StageMetrics("ner")
    ambiguous_names = list(params.get("ambiguous_names") or [])
    min_cooc = int(params.get("min_cooccurrence", 3))
    max_per_type = int(params.get("max_relations_per_type", 0))
    batch_size = int(params.get("batch_size", 256))

    items = load_landscape(landscape_path)
    chunks = read_chunks(chunks_path, metrics)
    projects = read_projects(projects_path, metrics)
    gold = load_gold(gold_path) if gold_path and gold_path.is_file() else []
    texts = [c["text"] for c in chunks]
    stats = WordStats.from_texts([*texts, *(g["text"] for g in gold)])
    gaz = build_gazetteer(items, ambiguous_names, stats, manifest_kinds(texts))
    metrics.set("gazetteer.exact_forms", len(gaz.exact))
    metrics.set("gazetteer.folded_forms", len(gaz.folded))
    extractor = EntityExtractor(gaz)
    canonical_of = {it.canonical.lower(): it.canonical for it in items}
    chunk_projects = [canonical_of.get(str(c.get("project") or "").lower(), str(c.get("project") or ""))
                      for c in chunks]

    entities: list[dict[str, Any]] = []
    acc: dict[RelKey, RelationAcc] = defaultdict(RelationAcc)
    cooc: dict[tuple[tuple[str, str], tuple[str, str]], RelationAcc] = defaultdict(RelationAcc)
    mentioned: set[str] = set()
    stream = extractor.extract(texts, chunk_projects, batch_size=batch_size)
    for chunk, mentions in progress(zip(chunks, stream, strict=True), desc="ner", total=len(chunks), unit="chunk"):
        cid = chunk["chunk_id"]
        metrics.inc("chunks.processed")
        if not mentions:
            metrics.inc("chunks.without_entities")
        for m in mentions:
            entities.append({"entity": m.entity, "type": m.type, "text": m.text, "chunk_id": cid,
                             "span": [m.start, m.end]})
            metrics.inc(f"entities.by_type.{m.type}")
            if m.type == "PROJECT":
                mentioned.add(m.entity)
        text = chunk["text"]
        for head, relation, tail in pattern_relations(text, mentions):
            s, e = head.sent_span
            acc[(head.entity, head.type, relation, tail.entity, tail.type, "pattern")].add(cid, text[s:e])
        _count_cooccurrence(text, mentions, cid, cooc)

    for (a, b), value in cooc.items():
        if value.count >= min_cooc:
            acc[(a[0], a[1], "co-occurs-with", b[0], b[1], "cooccurrence")] = value
    project_chunks: dict[str, set[str]] = defaultdict(set)
    for ent in entities:
        if ent["type"] == "PROJECT":
            project_chunks[ent["entity"]].add(ent["chunk_id"])
    wanted = mentioned | {canonical_of.get(str(p["project"]).lower(), str(p["project"])) for p in projects}
    for head, head_type, relation, tail, tail_type in landscape_relations(items, wanted):
        rel = acc[(head, head_type, relation, tail, tail_type, "landscape")]
        rel.count = len(project_chunks.get(head, ()))
        rel.chunks = project_chunks.get(head, set())

    relations = relation_records(acc, max_per_type)
    for rec in relations:
        metrics.inc(f"relations.by_type.{rec['relation']}")
        metrics.inc(f"relations.by_source.{rec['source']}")
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics.set("entities.total", write_jsonl(out_dir / "entities.jsonl", entities))
    metrics.set("relations.total", write_jsonl(out_dir / "relations.jsonl", relations))
    graph = build_graph(relations)
    write_graph(graph, out_dir / "graph.json", out_dir / "graph.graphml")
    metrics.set("graph.nodes", graph.number_of_nodes())
    metrics.set("graph.edges", graph.number_of_edges())
    if png_path is not None:
        metrics.set("graph.png_nodes", draw_graph(relations, png_path))
    if gold:
        metrics.set("gold", evaluate(extractor, gold, ambiguous_names))
    else:
        log.warning("no gold set at %s: precision/recall not measured", gold_path)
        metrics.inc("errors.gold_missing")
    metrics.set("throughput.chunks_per_second", round(len(chunks) / max(metrics.elapsed, 1e-9), 1))
    if metrics_path is not None:
        metrics.write(metrics_path)
    else:
        metrics.write()
    result = metrics.as_dict()
    log.info("ner: %d chunks, %d entities, %d relations in %.1fs", len(chunks), len(entities), len(relations),
             metrics.elapsed)
    return result


def _count_cooccurrence(text: str, mentions: Sequence[Mention], chunk_id: str,
                        cooc: dict[tuple[tuple[str, str], tuple[str, str]], RelationAcc]) -> None:
    """Each unordered pair of distinct entities in one sentence counts once per distinct sentence."""
    by_sent: dict[tuple[int, int], set[tuple[str, str]]] = defaultdict(set)
    for m in mentions:
        if m.type in RELATION_ENTITY_TYPES:
            by_sent[m.sent_span].add((m.entity, m.type))
    for (start, end), ents in by_sent.items():
        ordered = sorted(ents)
        for i, a in enumerate(ordered):
            for b in ordered[i + 1:]:
                if a[0].lower() != b[0].lower():
                    cooc[(a, b)].add(chunk_id, text[start:end])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = stage_parser(__doc__)
    parser.add_argument("--chunks", default="data/langfilter/chunks.jsonl")
    parser.add_argument("--projects", default="data/scrape/projects.jsonl")
    parser.add_argument("--landscape", default="data/scrape/landscape.yml")
    parser.add_argument("--gold", default="tests/data/ner_gold.jsonl")
    parser.add_argument("--out-dir", default="data/ner")
    parser.add_argument("--metrics", default="metrics/ner.json")
    parser.add_argument("--graph-png", default="metrics/ner_graph.png")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    params = load_params("ner", args.params)
    if not Path(args.landscape).is_file():
        raise StageError(f"landscape file not found: {args.landscape} (run the scrape stage first)")
    return run_ner(Path(args.chunks), Path(args.projects), Path(args.landscape), Path(args.out_dir), params,
                   gold_path=Path(args.gold), metrics_path=Path(args.metrics), png_path=Path(args.graph_png))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

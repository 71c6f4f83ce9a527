"""The ner stage: gold-set F1, ambiguous names, relation patterns, output contract, determinism, main()."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from stages.common.cli import StageError, run_cli
from stages.common.jsonl import read_jsonl, stable_id, write_jsonl
from stages.ner.__main__ import main
from stages.ner.extract import EntityExtractor
from stages.ner.gazetteer import WordStats, build_gazetteer, manifest_kinds
from stages.ner.gold import evaluate
from stages.ner.landscape import LandscapeItem, load_landscape
from stages.ner.relations import landscape_relations, pattern_relations
from stages.ner.spans import inside_identifier
from stages.ner.vocab import ENTITY_TYPES, RELATION_TYPES

GOLD = Path(__file__).parent / "data" / "ner_gold.jsonl"
PARAMS = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text(encoding="utf-8"))["ner"]
CONTEXT_REPOS = ("argoproj__argo-cd", "helm__helm-www", "kubernetes__website", "linkerd__website", "prometheus__docs",
                 "fluent__fluent-bit-docs", "open-telemetry__opentelemetry.io", "karmada-io__website",
                 "etcd-io__website", "containerd__containerd", "coredns__coredns.io", "cncf__tag-security")


def corpus_chunks(corpus: Path, per_repo: int = 12, max_words: int = 300) -> list[dict]:
    """Chunk records (the langfilter contract, trimmed) from corpus markdown paragraphs, read in place."""
    rows = [r for r in csv.DictReader((corpus / "MANIFEST.csv").open(encoding="utf-8"))
            if r["lang"] == "en" and r["kind"] == "markdown"]
    taken: Counter[str] = Counter()
    chunks: list[dict] = []
    for row in sorted(rows, key=lambda r: r["local_path"]):
        repo = row["local_path"].split("/")[1]
        if repo not in CONTEXT_REPOS or taken[repo] >= per_repo:
            continue
        taken[repo] += 1
        text = (corpus / row["local_path"]).read_text(encoding="utf-8", errors="replace")
        text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)
        buf: list[str] = []
        for para in [*re.split(r"\n\s*\n", text), None]:
            if para is None or sum(len(p.split()) for p in buf) + len(para.split()) > max_words:
                if buf:
                    body = "\n\n".join(buf)
                    chunks.append({"chunk_id": stable_id(row["local_path"], str(len(chunks))), "doc_id": row["sha256"][:16],
                                   "project": row["project"], "kind": "markdown", "title": "", "url": "",
                                   "path": row["local_path"], "license": row["license"], "heading_path": [],
                                   "text": body, "n_words": len(body.split()), "lang": "en", "lang_score": 1.0})
                buf = []
            if para is not None and para.strip():
                buf.append(para)
    return chunks


@pytest.fixture(scope="module")
def landscape(corpus: Path) -> Path:
    return corpus / "landscape" / "landscape.yml"


@pytest.fixture(scope="module")
def chunks(corpus: Path) -> list[dict]:
    return corpus_chunks(corpus)


@pytest.fixture(scope="module")
def items(landscape: Path) -> list[LandscapeItem]:
    return load_landscape(landscape)


@pytest.fixture(scope="module")
def gold() -> list[dict]:
    return list(read_jsonl(GOLD))


@pytest.fixture(scope="module")
def extractor(items: list[LandscapeItem], chunks: list[dict], gold: list[dict]) -> EntityExtractor:
    texts = [c["text"] for c in chunks]
    stats = WordStats.from_texts([*texts, *(g["text"] for g in gold)])
    return EntityExtractor(build_gazetteer(items, PARAMS["ambiguous_names"], stats, manifest_kinds(texts)))


def mentions(extractor: EntityExtractor, text: str, project: str = "") -> list[tuple[str, str, str]]:
    return [(m.text, m.type, m.entity) for m in next(extractor.extract([text], [project]))]


# --- the gold set itself ------------------------------------------------------------------------------------------
def test_gold_set_is_big_varied_and_well_formed(gold: list[dict], corpus: Path) -> None:
    assert len(gold) >= 150
    labels = Counter(e["label"] for g in gold for e in g["entities"])
    assert set(labels) == set(ENTITY_TYPES), labels
    written = 0
    for g in gold:
        if g["source"] == "written":
            written += 1
        else:
            assert (corpus / g["source"]).is_file(), g["source"]
            page = " ".join((corpus / g["source"]).read_text(encoding="utf-8", errors="replace").split())
            assert g["text"][:40] in page, g["text"]  # a real sentence of that file
        spans = sorted((e["start"], e["end"]) for e in g["entities"])
        for (_s1, e1), (s2, _) in zip(spans, spans[1:], strict=False):
            assert e1 <= s2, g["text"]
        for e in g["entities"]:
            surface = g["text"][e["start"]:e["end"]]
            assert surface and surface == surface.strip(), g["text"]
    assert written <= 30


def test_gold_has_ambiguous_names_as_projects_and_as_words(gold: list[dict]) -> None:
    names = re.compile(r"\b(" + "|".join(PARAMS["ambiguous_names"]) + r")\b", re.I)
    as_project = as_word = 0
    for g in gold:
        for m in names.finditer(g["text"]):
            tagged = any(e["start"] <= m.start() < e["end"] and e["label"] == "PROJECT" for e in g["entities"])
            as_project += tagged
            as_word += not tagged
    sentences = sum(bool(names.search(g["text"])) for g in gold)
    assert sentences >= 20 and as_project >= 10 and as_word >= 10


# --- quality on the gold set --------------------------------------------------------------------------------------
def test_gold_f1_meets_the_goals(extractor: EntityExtractor, gold: list[dict]) -> None:
    scores = evaluate(extractor, gold, PARAMS["ambiguous_names"])
    assert scores["per_type"]["PROJECT"]["f1"] >= 0.9, scores["per_type"]["PROJECT"]
    assert scores["overall"]["f1"] >= 0.8, scores["overall"]
    for etype in ENTITY_TYPES:
        assert scores["per_type"][etype]["support"] > 0
    amb = scores["ambiguous"]
    assert amb["precision"] >= 0.9 and amb["word_uses_rejected"] == amb["word_uses"], amb


def test_evaluate_counts_misses_and_false_alarms(extractor: EntityExtractor) -> None:
    fake = [{"text": "Helm talks to Kubernetes.", "entities": [{"start": 0, "end": 4, "label": "CLI_TOOL"}]}]
    scores = evaluate(extractor, fake, ["Helm"])
    assert scores["per_type"]["CLI_TOOL"]["fn"] == 1 and scores["per_type"]["PROJECT"]["fp"] == 2
    assert scores["overall"]["precision"] == 0.0


# --- ambiguity ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "The ship entered the harbor before the storm.",
    "He stood at the helm of the boat all night.",
    "Harbor seals rested on the rocks while the fishing boats came in.",
    "Flux is measured in webers, the unit of magnetic flux.",
    "The king sent an envoy to negotiate the treaty.",
    "A notary public must witness the signature on the deed.",
    "What kind of problem is this?",
])
def test_common_words_are_not_projects(extractor: EntityExtractor, text: str) -> None:
    assert [m for m in mentions(extractor, text) if m[1] in ("PROJECT", "CLI_TOOL")] == []


@pytest.mark.parametrize(("text", "surface", "entity"), [
    ("Harbor is an open source registry that stores and signs container images.", "Harbor", "Harbor"),
    ("You can install the chart with Helm and upgrade it later.", "Helm", "Helm"),
    ("Flux keeps Kubernetes clusters in sync with Git repositories.", "Flux", "Flux"),
    ("Contour deploys Envoy as a reverse proxy for Kubernetes.", "Envoy", "Envoy"),
    ("Most people run k8s on a managed cloud service.", "k8s", "Kubernetes"),
    ("Send traces to the OTel Collector over OTLP.", "OTel", "OpenTelemetry"),
    ("Sync the app with Argo CD.", "Argo CD", "Argo"),
    ("We use Open Policy Agent to enforce policies.", "Open Policy Agent", "Open Policy Agent (OPA)"),
])
def test_project_names_and_aliases(extractor: EntityExtractor, text: str, surface: str, entity: str) -> None:
    assert (surface, "PROJECT", entity) in mentions(extractor, text)


def test_chunk_project_confirms_its_own_name(extractor: EntityExtractor) -> None:
    text = "Helm will no longer manage it in any way."
    assert mentions(extractor, text) == []  # sentence start, no cue word: the word "helm"?
    assert mentions(extractor, text, project="Helm") == [("Helm", "PROJECT", "Helm")]


def test_cli_tools_need_a_command_context(extractor: EntityExtractor) -> None:
    assert ("helm", "CLI_TOOL", "helm") in mentions(extractor, "Run `helm install my-release ./chart` first.")
    assert ("kubectl", "CLI_TOOL", "kubectl") in mentions(extractor, "Check it with kubectl afterwards.")
    manifest = "```yaml\napiVersion: apps/v1\nkind: Deployment\n```"
    found = mentions(extractor, manifest)
    assert not any(m[0] == "kind" for m in found)
    assert ("Deployment", "K8S_RESOURCE", "Deployment") in found and ("apps/v1", "API_OBJECT", "apps/v1") in found
    assert mentions(extractor, "Store the Secrets in the `linkerd` namespace.") == [("Secrets", "K8S_RESOURCE", "Secret")]
    assert ("linkerd", "CLI_TOOL", "linkerd") not in mentions(extractor, "Run `kubectl -n linkerd get pods` now.")


def test_shapes_flags_keys_and_api_objects(extractor: EntityExtractor) -> None:
    text = ("Set `spec.replicas` with `--replicas=3`, then create a `ServiceMonitor` resource in "
            "`monitoring.coreos.com/v1` and read kubernetes.io/docs or values.yaml.")
    found = mentions(extractor, text)
    assert ("spec.replicas", "CONFIG", "spec.replicas") in found
    assert ("--replicas", "CONFIG", "--replicas") in found
    assert ("ServiceMonitor", "API_OBJECT", "ServiceMonitor") in found
    assert ("monitoring.coreos.com/v1", "API_OBJECT", "monitoring.coreos.com/v1") in found
    assert not any(m[0] in ("values.yaml", "kubernetes.io/docs", "kubernetes") for m in found)


@pytest.mark.parametrize(("text", "surface", "glued"), [
    ("Run kube-proxy on every node.", "kube", True),
    ("CRI-containerd relies on containerd.", "CRI", True),
    ("See kubernetes/website for the docs.", "kubernetes", True),
    ("A Kubernetes-native controller.", "Kubernetes", False),
    ("Prometheus-compatible storage.", "Prometheus", False),
])
def test_names_glued_into_identifiers(text: str, surface: str, glued: bool) -> None:
    start = text.index(surface)
    assert inside_identifier(text, start, start + len(surface)) is glued


def test_manifest_kinds_split_core_and_custom() -> None:
    text = ("```yaml\napiVersion: apps/v1\nkind: Deployment\n---\napiVersion: example.com/v1\nkind: CronTab\n---\n"
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nspec:\n  names:\n    kind: Widget\n```")
    assert manifest_kinds([text]) == {"CronTab": "API_OBJECT", "CustomResourceDefinition": "API_OBJECT",
                                          "Deployment": "K8S_RESOURCE", "Widget": "API_OBJECT"}


def test_landscape_types_and_categories(items: list[LandscapeItem], extractor: EntityExtractor) -> None:
    assert any(it.is_org and it.canonical == "Red Hat" for it in items)  # "(member)" suffix dropped
    assert {it.maturity for it in items} >= {"graduated", "incubating", "sandbox", ""}  # not only graduated
    found = mentions(extractor, "Red Hat and the CNCF maintain a service mesh and a container runtime.")
    assert ("Red Hat", "ORGANIZATION", "Red Hat") in found and ("CNCF", "ORGANIZATION",
                                                                 "Cloud Native Computing Foundation") in found
    assert ("service mesh", "CATEGORY", "Service Mesh") in found
    assert ("container runtime", "CATEGORY", "Container Runtime") in found
    assert ("gRPC", "STANDARD", "gRPC") in mentions(extractor, "Services talk gRPC over HTTP/2 with mTLS.")


# --- relations ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("Prometheus integrates with Kubernetes.", ("Prometheus", "integrates-with", "Kubernetes")),
    ("Linkerd is a service mesh that is simple to run.", ("Linkerd", "is-a", "Service Mesh")),
    ("Helm runs on Kubernetes.", ("Helm", "runs-on", "Kubernetes")),
    ("Jaeger uses OpenTelemetry for instrumentation.", ("Jaeger", "uses", "OpenTelemetry")),
    ("The ConfigMap is used by the Pod.", ("Pod", "uses", "ConfigMap")),
    ("Flux is an alternative to Argo CD for GitOps.", ("Flux", "alternative-to", "Argo")),
    ("KEDA extends Kubernetes with event-driven autoscaling.", ("KEDA", "extends", "Kubernetes")),
    ("Thanos, a CNCF project, stores metrics for a long time.", ("Thanos", "part-of",
                                                                 "Cloud Native Computing Foundation")),
])
def test_relation_patterns(extractor: EntityExtractor, text: str, expected: tuple[str, str, str]) -> None:
    found = next(extractor.extract([text]))
    assert [(h.entity, r, t.entity) for h, r, t in pattern_relations(text, found)] == [expected]


@pytest.mark.parametrize("text", [
    "Thanos, a CNCF project, extends Prometheus.",  # the CNCF does not extend Prometheus
    "Kubernetes schedules Pods. Prometheus scrapes them.",  # different sentences
    "Helm and Kubernetes are both graduated.",  # no pattern
])
def test_no_relation_without_evidence(extractor: EntityExtractor, text: str) -> None:
    found = next(extractor.extract([text]))
    rels = [(h.entity, r, t.entity) for h, r, t in pattern_relations(text, found)]
    assert ("Cloud Native Computing Foundation", "extends", "Prometheus") not in rels
    assert ("Kubernetes", "integrates-with", "Prometheus") not in rels and ("Helm", "uses", "Kubernetes") not in rels


def test_landscape_facts(items: list[LandscapeItem]) -> None:
    facts = landscape_relations(items, {"Prometheus", "Red Hat"})
    assert ("Prometheus", "PROJECT", "has-maturity", "graduated", "MATURITY") in facts
    assert ("Prometheus", "PROJECT", "in-category", "Observability", "CATEGORY") in facts
    assert all(f[0] == "Prometheus" for f in facts)  # members are organisations, not landscape software


# --- the stage end to end -----------------------------------------------------------------------------------------
def _layout(tmp: Path, chunks: list[dict], landscape: Path) -> Path:
    (tmp / "data" / "scrape").mkdir(parents=True)
    write_jsonl(tmp / "data" / "langfilter" / "chunks.jsonl", chunks)
    write_jsonl(tmp / "data" / "scrape" / "projects.jsonl", [
        {"project": "Helm", "category": "App Definition and Development", "maturity": "graduated"},
        {"project": "Prometheus", "category": "Observability and Analysis", "maturity": "graduated"}])
    (tmp / "data" / "scrape" / "landscape.yml").symlink_to(landscape)
    (tmp / "tests" / "data").mkdir(parents=True)
    (tmp / "tests" / "data" / "ner_gold.jsonl").write_bytes(GOLD.read_bytes())
    (tmp / "params.yaml").write_text(yaml.safe_dump({"ner": {**PARAMS, "min_cooccurrence": 2}}), encoding="utf-8")
    return tmp


@pytest.mark.slow
def test_main_writes_contract_outputs_deterministically(tmp_path: Path, chunks: list[dict], landscape: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import networkx as nx

    sample = [*chunks[:150], {"chunk_id": "broken"}]  # one bad record: warned about, counted, skipped
    monkeypatch.chdir(_layout(tmp_path, sample, landscape))
    assert run_cli(main, []) == 0
    out = tmp_path / "data" / "ner"
    first = {name: (out / name).read_bytes() for name in ("entities.jsonl", "relations.jsonl", "graph.json",
                                                          "graph.graphml")}
    by_id = {c["chunk_id"]: c["text"] for c in chunks[:150]}
    entities = list(read_jsonl(out / "entities.jsonl"))
    assert entities and {e["type"] for e in entities} <= set(ENTITY_TYPES)
    for e in entities:
        assert set(e) == {"entity", "type", "text", "chunk_id", "span"}
        assert by_id[e["chunk_id"]][e["span"][0]:e["span"][1]] == e["text"]
    assert entities == sorted(entities, key=lambda e: (e["chunk_id"], e["span"][0]))
    relations = list(read_jsonl(out / "relations.jsonl"))
    assert {r["source"] for r in relations} == {"pattern", "landscape", "cooccurrence"}
    for r in relations:
        assert set(r) == {"head", "head_type", "relation", "tail", "tail_type", "source", "count",
                          "evidence_chunk_id", "evidence_chunk_ids"}
        assert r["relation"] in RELATION_TYPES and len(r["evidence_chunk_ids"]) <= 20
        assert r["evidence_chunk_ids"] == sorted(r["evidence_chunk_ids"])
        assert r["evidence_chunk_id"] == (r["evidence_chunk_ids"][0] if r["evidence_chunk_ids"] else None)
        if r["source"] == "cooccurrence":
            assert r["count"] >= 2
    assert any(r["head"] == "Helm" and r["relation"] == "has-maturity" for r in relations)  # from projects.jsonl
    graph = nx.node_link_graph(json.loads(first["graph.json"]), edges="links")
    assert graph.number_of_edges() == len(relations)
    assert nx.read_graphml(out / "graph.graphml").number_of_nodes() == graph.number_of_nodes()
    assert (tmp_path / "metrics" / "ner_graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((tmp_path / "metrics" / "ner.json").read_text(encoding="utf-8"))
    assert metrics["chunks"]["in"] == 151 and metrics["chunks"]["dropped"]["bad_record"] == 1
    assert metrics["gold"]["per_type"]["PROJECT"]["f1"] >= 0.9 and metrics["entities"]["total"] == len(entities)
    assert sum(metrics["entities"]["by_type"].values()) == len(entities)

    assert run_cli(main, []) == 0  # same inputs, same params: byte-identical data
    assert {name: (out / name).read_bytes() for name in first} == first


def test_missing_input_is_one_line_error(tmp_path: Path, landscape: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"ner": PARAMS}), encoding="utf-8")
    with pytest.raises(StageError, match="langfilter"):
        main(["--landscape", str(landscape)])
    assert run_cli(main, ["--landscape", str(landscape)]) == 1
    assert run_cli(main, []) == 1  # no landscape either


def test_graph_png_is_the_same_whatever_the_hash_seed(tmp_path: Path) -> None:
    """The drawing iterated a set once, so each run committed a different PNG; now it is byte-stable."""
    import random
    import subprocess
    import sys

    rng = random.Random(7)
    names = [f"Project{i:02d}" for i in range(80)]  # more than the 40 drawn: the top-40 selection is what varied
    rels = [{"head": h, "head_type": "PROJECT", "relation": rng.choice(["uses", "runs-on", "integrates-with"]),
             "tail": t, "tail_type": "PROJECT", "source": "pattern", "count": rng.randint(1, 9)}
            for h, t in {tuple(rng.sample(names, 2)) for _ in range(400)}]
    # A hub with more neighbours than nodes drawn (like Kubernetes): networkx then iterates the kept-node *set*.
    rels += [{"head": n, "head_type": "PROJECT", "relation": "runs-on", "tail": "Kubernetes", "tail_type": "PROJECT",
              "source": "pattern", "count": 3} for n in names]
    rels.sort(key=lambda r: (r["head"], r["tail"]))
    write_jsonl(tmp_path / "relations.jsonl", rels)
    script = ("import sys; from pathlib import Path; from stages.common.jsonl import read_jsonl; "
              "from stages.ner.graph import draw_graph; "
              "draw_graph(list(read_jsonl(sys.argv[1])), Path(sys.argv[2]))")
    repo = Path(__file__).resolve().parents[1]
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / "relations.jsonl"), str(tmp_path / f"{seed}.png")],
                       cwd=repo, check=True, env={**__import__("os").environ, "PYTHONHASHSEED": seed})
    assert (tmp_path / "1.png").read_bytes() == (tmp_path / "2.png").read_bytes()

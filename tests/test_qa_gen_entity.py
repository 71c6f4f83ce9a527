"""qa_gen entity generator on small, hand-written ner fixtures (the contract of data/ner)."""

from __future__ import annotations

from typing import Any

import pytest

from stages.common.metrics import StageMetrics
from stages.qa_gen import generate_pairs
from stages.qa_gen.entity import best_definition, generate_entity
from tests.test_qa_gen_helpers import qa_gen_params

PARAMS = qa_gen_params(
    generators=["entity"], min_grounding=0.6, min_answer_words=8, max_answer_words=180, max_pairs_per_chunk=3,
    seed=42,
)


def _chunk(chunk_id: str, project: str, text: str, heading_path: list[str] | None = None) -> dict[str, Any]:
    return {
        "chunk_id": chunk_id,
        "doc_id": f"doc-{chunk_id}",
        "project": project,
        "kind": "markdown",
        "title": heading_path[0] if heading_path else project,
        "url": f"https://example.org/{chunk_id}",
        "path": f"docs/{chunk_id}.md",
        "license": "Apache-2.0",
        "heading_path": heading_path or [project],
        "text": text,
        "n_words": len(text.split()),
    }


CHUNKS = [
    _chunk(
        "c-prom",
        "Prometheus",
        "Prometheus is an open-source systems monitoring and alerting toolkit "
        "originally built at SoundCloud. It stores metrics as time series.",
        ["Overview"],
    ),
    _chunk("c-prom-deep", "Prometheus", "Prometheus is a project.", ["Guides", "Deep", "Deeper"]),
    _chunk(
        "c-k8s",
        "Kubernetes",
        "Prometheus integrates with Kubernetes through service discovery, so "
        "Prometheus finds Pods and Services on its own. Kube-state-metrics exposes cluster state. "
        "Many teams run Prometheus on Kubernetes with the Prometheus Operator managing the scrape "
        "configuration for every Kubernetes namespace.",
        ["Monitoring"],
    ),
    _chunk("c-helm", "Helm", "Helm charts install applications.", ["Charts"]),
]
PROJECTS = [
    {
        "project": "Prometheus",
        "description": "Monitoring system and time series database",
        "category": "Observability",
    },
    {"project": "Kubernetes", "description": "", "category": "Orchestration"},
    {"project": "Helm", "description": "The Kubernetes package manager", "category": "App Definition"},
]
ENTITIES = [
    {"entity": "Prometheus", "type": "PROJECT", "text": "Prometheus", "chunk_id": "c-prom", "span": [0, 10]},
    {"entity": "Prometheus", "type": "PROJECT", "text": "Prometheus", "chunk_id": "c-k8s", "span": [0, 10]},
    {"entity": "Kubernetes", "type": "PROJECT", "text": "Kubernetes", "chunk_id": "c-k8s", "span": [29, 39]},
    {"entity": "Kubernetes", "type": "PROJECT", "text": "K8s", "chunk_id": "c-k8s", "span": [0, 3]},
]
RELATIONS = [
    {
        "head": "Prometheus",
        "head_type": "PROJECT",
        "relation": "integrates-with",
        "tail": "Kubernetes",
        "tail_type": "PROJECT",
        "source": "pattern",
        "count": 2,
        "evidence_chunk_id": "c-k8s",
        "evidence_chunk_ids": ["c-k8s"],
    },
    {
        "head": "Prometheus",
        "head_type": "PROJECT",
        "relation": "co-occurs-with",
        "tail": "Helm",
        "tail_type": "PROJECT",
        "source": "cooccurrence",
        "count": 5,
        "evidence_chunk_id": "c-k8s",
        "evidence_chunk_ids": ["c-k8s"],
    },
    {
        "head": "Helm",
        "head_type": "PROJECT",
        "relation": "uses",
        "tail": "Prometheus",
        "tail_type": "PROJECT",
        "source": "pattern",
        "count": 1,
        "evidence_chunk_id": "c-helm",
        "evidence_chunk_ids": ["c-helm"],
    },
]


def test_best_definition_prefers_a_full_sentence_near_the_top() -> None:
    sentence, chunk = best_definition("Prometheus", CHUNKS)
    assert sentence.startswith("Prometheus is an open-source systems monitoring")
    assert chunk["chunk_id"] == "c-prom"


def test_entity_pairs_from_landscape_and_relations() -> None:
    metrics = StageMetrics("t")
    out = generate_pairs(CHUNKS, PROJECTS, ENTITIES, RELATIONS, PARAMS, metrics)
    by_question = {r["question"]: r for r in out}
    what = by_question["What is Prometheus?"]
    assert what["answer"].startswith(
        "Monitoring system and time series database. Prometheus is an open-source"
    )
    assert what["chunk_id"] == "c-prom" and what["generator"] == "entity" and what["grounding"] >= 0.6
    integrate = by_question["How does Prometheus integrate with Kubernetes?"]
    assert "service discovery" in integrate["answer"] and integrate["chunk_id"] == "c-k8s"
    assert "Kube-state-metrics" not in integrate["answer"]  # a sentence naming only one of the two stays out
    # co-occurrence is not a typed relation; the Helm evidence never names both: no pair for either
    assert not any("Helm" in q for q in by_question)
    assert metrics.counts["entity.relation_without_evidence_sentences"] == 1


def test_no_ner_input_yields_nothing_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    metrics = StageMetrics("t")
    assert list(generate_entity(CHUNKS, PROJECTS, [], [], PARAMS, metrics)) == []
    assert "data/ner is missing or empty" in caplog.text
    assert metrics.counts["entity.no_ner_input"] == 1

"""RAFT records and the shared prompt: gold excerpt placement, citations, distractor-only rows, determinism."""

from __future__ import annotations

import pytest

from stages.common.prompting import (
    ABSTAIN,
    best_window,
    cited_numbers,
    is_abstention,
    rag_user_content,
    strip_citations,
    with_citation,
)
from stages.common.raft import raft_records
from stages.common.retrieval import Retriever
from tests.fakes.tiny_index import build_tiny_index, make_chunk

TOPICS = [
    ("Helm", "Rollback", "helm rollback returns a release to an earlier revision number."),
    ("Helm", "Install", "helm install puts a chart into the cluster under a release name."),
    ("etcd", "Ports", "etcd listens for clients on port 2379 and for peers on port 2380."),
    ("Prometheus", "Scraping", "Prometheus scrapes the metrics endpoint of each target every interval."),
    ("Kubernetes", "Probes", "A failing liveness probe makes the kubelet restart the container."),
    ("Linkerd", "mTLS", "Linkerd turns on mutual TLS between meshed pods by default."),
]


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    chunks = [make_chunk(i, *topic) for i, topic in enumerate(TOPICS)]
    return Retriever.load(build_tiny_index(tmp_path_factory.mktemp("raft"), chunks))


def record(i: int, question: str) -> dict:
    return {"qa_id": f"q{i}", "doc_id": f"doc{i:03d}", "chunk_id": f"c{i:04d}",
            "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": question},
                         {"role": "assistant", "content": TOPICS[i][2]}]}


RECORDS = [record(0, "How do I undo a helm upgrade?"), record(2, "Which port do etcd clients use?"),
           record(4, "What happens when a liveness probe fails?"), record(5, "Does Linkerd encrypt traffic?")]


def test_gold_excerpt_is_present_and_cited(retriever):
    rows = raft_records(RECORDS, retriever, k=3, excerpt_words=50, p_gold=1.0, closed_book_fraction=0.0,
                        no_gold_target="answer", seed=1)
    for rec, row in zip(RECORDS, rows, strict=True):
        system, user, assistant = row["messages"]
        assert system == {"role": "system", "content": "S"}
        n = cited_numbers(assistant["content"])
        assert len(n) == 1 and assistant["content"] == with_citation(rec["messages"][-1]["content"], n[0])
        block = user["content"].split(f"[{n[0]}] ", 1)[1].split("\n\n")[0]
        assert rec["messages"][-1]["content"] in block  # the cited excerpt holds the answer
        assert all(f"\n[{j}] " in user["content"] for j in (1, 2, 3)) and "\n[4] " not in user["content"]
        assert user["content"].endswith("Question: " + rec["messages"][1]["content"])


def test_distractor_only_rows_never_show_the_gold_document(retriever):
    stats: dict[str, int] = {}
    rows = raft_records(RECORDS, retriever, k=3, excerpt_words=50, p_gold=0.0, closed_book_fraction=0.0,
                        no_gold_target="abstain", seed=1, stats=stats)
    assert stats == {"distractors_only": 4}
    for rec, row in zip(RECORDS, rows, strict=True):
        assert rec["messages"][-1]["content"] not in row["messages"][1]["content"]
        assert row["messages"][-1]["content"] == ABSTAIN and is_abstention(ABSTAIN)


def test_closed_book_share_and_determinism(retriever):
    many = RECORDS * 10
    many = [{**r, "qa_id": f"{r['qa_id']}-{i}"} for i, r in enumerate(many)]
    stats: dict[str, int] = {}
    rows = raft_records(many, retriever, k=2, excerpt_words=40, p_gold=0.8, closed_book_fraction=0.25,
                        no_gold_target="answer", seed=7, stats=stats)
    assert 4 <= stats["closed_book"] <= 18 and stats["with_gold"] > stats.get("distractors_only", 0)
    again = raft_records(many, retriever, k=2, excerpt_words=40, p_gold=0.8, closed_book_fraction=0.25,
                         no_gold_target="answer", seed=7)
    assert rows == again
    with pytest.raises(ValueError):
        raft_records(many, retriever, k=2, excerpt_words=40, p_gold=0.8, closed_book_fraction=0.0,
                     no_gold_target="maybe", seed=7)


def test_best_window_follows_the_question_not_the_start():
    text = ("Intro sentence about nothing in particular. " * 10 + "The etcd client port is 2379 by default. "
            + "Closing remarks that say little. " * 10)
    window = best_window(text, "What is the etcd client port?", 12)
    assert "2379" in window and len(window.split()) <= 13
    assert best_window("short text", "anything", 50) == "short text"


def test_prompt_helpers():
    class E:
        project, title, text = "Helm", "Rollback", "helm rollback goes back."

    content = rag_user_content("How to roll back?", [E(), E()], 20)
    assert content.count("[1] Helm — Rollback") == 1 and "[2] Helm — Rollback" in content
    assert cited_numbers("Use helm rollback [2], see also [1] and [2].") == [2, 1]
    assert strip_citations("Use helm rollback [2].") == "Use helm rollback."
    assert is_abstention("The excerpts do not cover this question.") and not is_abstention("Use port 2379 [1].")

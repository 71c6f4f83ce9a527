"""Scores that only make sense for answers written from excerpts: faithfulness, citation accuracy, abstention.

- faithfulness: the share of the answer's content words found in the excerpt it cites (all shown excerpts when it
  cites none) — an answer that invents terms scores low even when it sounds right;
- citation accuracy: the excerpt an answer cites first comes from the question's source document;
- abstention: when retrieval missed the source document, does the answer say the docs do not cover it?
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from stages.common.prompting import cited_numbers, is_abstention, strip_citations
from stages.common.text import words


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def content_words(text: str) -> list[str]:
    return words(text, lower=True, min_len=3, stopwords=_stopwords())


def faithfulness(answer: str, excerpts: Sequence[str]) -> float | None:
    """Share of the answer's content words present in `excerpts`; None for an answer with no content words."""
    wanted = content_words(strip_citations(answer))
    if not wanted:
        return None
    have = {w for text in excerpts for w in content_words(text)}
    return sum(w in have for w in wanted) / len(wanted)


def grounded_scores(answer: str, sources: Sequence[Any], source_docs: frozenset[str],
                    doc_of: dict[str, str]) -> dict[str, Any]:
    """Per-answer scores for a retrieval arm. `sources` are the numbered excerpts shown (Source objects);
    `doc_of` maps chunk id -> doc id; `source_docs` are the docs that answer the question (may be empty)."""
    cited = [n for n in cited_numbers(answer) if 1 <= n <= len(sources)]
    shown = [s.text for s in sources]
    cited_texts = [sources[n - 1].text for n in cited] or shown
    retrieved = bool(source_docs) and any(doc_of.get(s.chunk_id) in source_docs for s in sources)
    out: dict[str, Any] = {
        "faithfulness": faithfulness(answer, cited_texts) if shown else None,
        "cites": bool(cited),
        "abstains": is_abstention(answer),
        "source_retrieved": retrieved if source_docs else None,
        "citation_correct": None,
    }
    if source_docs:
        out["citation_correct"] = bool(cited) and doc_of.get(sources[cited[0] - 1].chunk_id) in source_docs
    return out


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Set-level grounded metrics from `grounded_scores` rows."""

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    known = [r for r in rows if r["source_retrieved"] is not None]
    missed = [r for r in known if not r["source_retrieved"]]
    found = [r for r in known if r["source_retrieved"]]
    return {
        "faithfulness": mean([r["faithfulness"] for r in rows if r["faithfulness"] is not None]),
        "citation_rate": mean([float(r["cites"]) for r in rows]),
        "citation_accuracy": mean([float(bool(r["citation_correct"])) for r in known]),
        "citation_accuracy_when_retrieved": mean([float(bool(r["citation_correct"])) for r in found]),
        "source_retrieved": mean([float(r["source_retrieved"]) for r in known]),
        "abstain_when_missed": mean([float(r["abstains"]) for r in missed]),
        "abstain_when_retrieved": mean([float(r["abstains"]) for r in found]),
        "n_missed": len(missed),
    }

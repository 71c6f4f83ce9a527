"""RAFT training records (Zhang et al., 2024): teach the reader to answer from retrieved excerpts and cite them.

Each training pair becomes a prompt with `k` numbered excerpts retrieved for its question — the prompt users get
(stages.common.prompting). With probability `p_gold` the pair's own source chunk is among them and the target is
the grounded answer ending with the citation of that excerpt (`… [2]`); otherwise only distractors are shown and
the target is the answer without a citation (RAFT's recipe: the model learns the domain too) or an abstention
(`no_gold_target: abstain`). A `closed_book_fraction` of pairs stays closed-book, so the tuned model still answers
without an index. Every draw is seeded per pair: the same data and params give the same records.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

from stages.common.prompting import ABSTAIN, rag_user_content, with_citation

log = logging.getLogger(__name__)

NO_GOLD_TARGETS = ("answer", "abstain")


def _turns(record: dict[str, Any]) -> tuple[list[dict[str, str]], str, str]:
    messages = record["messages"]
    system = [m for m in messages if m["role"] == "system"]
    question = next(m["content"] for m in messages if m["role"] == "user")
    return system, question, messages[-1]["content"]


def raft_records(records: Sequence[dict[str, Any]], retriever: Any, *, k: int, excerpt_words: int, p_gold: float,
                 closed_book_fraction: float, no_gold_target: str, seed: int,
                 stats: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """`records` are merge chat records (messages + qa_id, doc_id, chunk_id); returns {"messages"} records."""
    if no_gold_target not in NO_GOLD_TARGETS:
        raise ValueError(f"no_gold_target must be one of {', '.join(NO_GOLD_TARGETS)}, got {no_gold_target!r}")
    stats = stats if stats is not None else {}
    questions = [_turns(r)[1] for r in records]
    # k + a few: the gold chunk and other chunks of its document are removed from the distractors
    hits = retriever.search_batch(questions, k + 4, mode="hybrid") if records else []
    by_id = {c["chunk_id"]: i for i, c in enumerate(retriever.chunks)}
    out = []
    for record, found in zip(records, hits, strict=True):
        system, question, answer = _turns(record)
        rng = random.Random(f"{seed}:{record.get('qa_id', question)}")
        if rng.random() < closed_book_fraction:
            out.append({"messages": record["messages"]})
            stats["closed_book"] = stats.get("closed_book", 0) + 1
            continue
        gold_pos = by_id.get(record.get("chunk_id") or "")
        distractors = [h for h in found if h.doc_id != record.get("doc_id")]
        if gold_pos is not None and rng.random() < p_gold:
            excerpts = distractors[:k - 1]
            at = rng.randrange(len(excerpts) + 1)
            excerpts.insert(at, retriever.hit(gold_pos, 1.0))
            target = with_citation(answer, at + 1)
            stats["with_gold"] = stats.get("with_gold", 0) + 1
            stats["gold_retrieved"] = stats.get("gold_retrieved", 0) + int(
                any(h.chunk_id == record.get("chunk_id") for h in found[:k]))
        else:
            excerpts = distractors[:k]
            target = ABSTAIN if no_gold_target == "abstain" else answer
            stats["distractors_only" if gold_pos is not None else "no_gold_chunk"] = stats.get(
                "distractors_only" if gold_pos is not None else "no_gold_chunk", 0) + 1
        user = rag_user_content(question, excerpts, excerpt_words)
        out.append({"messages": [*system, {"role": "user", "content": user}, {"role": "assistant", "content": target}]})
    return out

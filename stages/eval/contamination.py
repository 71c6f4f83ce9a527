"""Train/eval overlap: the share of an eval set's items sharing a word 13-gram with the training split.

merge already drops training pairs that overlap the eval sets, so the expected share is 0; measuring it beside
every score is what makes a good score believable (GPT-3's 13-gram rule).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stages.common.jsonl import read_jsonl
from stages.common.text import words

log = logging.getLogger(__name__)


def ngram_hashes(text: str, n: int) -> set[int]:
    """Hashes of the lower-cased word n-grams of `text` (ints, not tuples: millions fit in memory)."""
    tokens = words(text, lower=True)
    return {hash(" ".join(tokens[i:i + n])) for i in range(len(tokens) - n + 1)}


def record_text(record: dict[str, Any]) -> str:
    """What a training record teaches: its user and assistant turns (the shared system prompt is left out)."""
    return "\n".join(m.get("content", "") for m in record.get("messages", []) if m.get("role") != "system")


def train_index(train_path: Path, n: int) -> set[int]:
    """All word n-grams of the training split; an absent file gives an empty index (and a warning)."""
    index: set[int] = set()
    if not train_path.is_file():
        log.warning("%s not found: contamination is measured against nothing", train_path)
        return index
    for record in read_jsonl(train_path):
        index |= ngram_hashes(record_text(record), n)
    return index


def contamination(texts: Iterable[str], index: set[int], n: int) -> dict[str, Any]:
    """Items with at least one n-gram in `index`; items under n words cannot match and are counted apart."""
    total = contaminated = too_short = 0
    for text in texts:
        total += 1
        grams = ngram_hashes(text, n)
        if not grams:
            too_short += 1
        elif not grams.isdisjoint(index):
            contaminated += 1
    return {"ngram": n, "n": total, "n_contaminated": contaminated, "n_too_short": too_short,
            "share": contaminated / total if total else 0.0}

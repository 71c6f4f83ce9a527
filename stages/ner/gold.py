"""Evaluation against the hand-annotated gold set: exact span+label P/R/F1, and the ambiguous names."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from stages.common.cli import StageError
from stages.common.jsonl import read_jsonl
from stages.ner.extract import EntityExtractor
from stages.ner.vocab import ENTITY_TYPES


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

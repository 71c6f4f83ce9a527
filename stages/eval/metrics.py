"""Text metrics computed locally (no `evaluate.load`, which needs the Hub) and seeded bootstrap intervals.

ROUGE-L F1 is per example (so it can be bootstrapped and broken down per project); BLEU and chrF are corpus-level
sacrebleu scores on the 0-100 scale, as sacrebleu reports them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from stages.common.text import words


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 with Porter stemming; an empty prediction scores 0 instead of erroring."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def corpus_chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)


def repeated_ngram_share(text: str, n: int = 4) -> float:
    """Share of a text's word n-grams that repeat an earlier one: 0 for fresh text, near 1 for a loop."""
    tokens = words(text, lower=True)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return (len(grams) - len(set(grams))) / len(grams)


def length_stats(answers: Sequence[str]) -> dict[str, float]:
    """Mean answer length in words and mean repeated-4-gram share: the two symptoms of a degenerate model."""
    if not answers:
        return {"answer_words_mean": 0.0, "repeated_4gram_share": 0.0}
    return {
        "answer_words_mean": float(np.mean([len(words(a, lower=True)) for a in answers])),
        "repeated_4gram_share": float(np.mean([repeated_ngram_share(a) for a in answers])),
    }


def bootstrap_ci(values: Sequence[float], samples: int, seed: int, alpha: float = 0.05) -> list[float]:
    """Percentile bootstrap interval of the mean; pass paired differences to get the interval of a delta."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0 or samples <= 0:
        return [math.nan, math.nan]
    rng = np.random.default_rng(seed)
    means = np.empty(samples, dtype=float)
    for start in range(0, samples, 256):  # bounded memory for big sets
        stop = min(samples, start + 256)
        idx = rng.integers(0, arr.size, size=(stop - start, arr.size))
        means[start:stop] = arr[idx].mean(axis=1)
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(lo), float(hi)]


def compare(base: float, tuned: float) -> dict[str, float]:
    """One metric row: base, tuned and the delta (tuned - base)."""
    return {"base": float(base), "tuned": float(tuned), "delta": float(tuned - base)}


def paired_with_ci(base_values: Sequence[float], tuned_values: Sequence[float], samples: int,
                   seed: int) -> dict[str, Any]:
    """Mean of per-example scores for both models with 95 % CIs; the delta CI resamples the pairs together."""
    base_arr = np.asarray(base_values, dtype=float)
    tuned_arr = np.asarray(tuned_values, dtype=float)
    row: dict[str, Any] = compare(base_arr.mean() if base_arr.size else math.nan,
                                  tuned_arr.mean() if tuned_arr.size else math.nan)
    row["ci95"] = {
        "base": bootstrap_ci(base_arr, samples, seed),
        "tuned": bootstrap_ci(tuned_arr, samples, seed + 1),
        "delta": bootstrap_ci(tuned_arr - base_arr, samples, seed + 2),
    }
    return row


def mean_with_ci(values: Sequence[float], samples: int, seed: int) -> dict[str, Any]:
    """One arm's mean of per-example scores and its 95 % bootstrap interval."""
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()) if arr.size else math.nan, "ci95": bootstrap_ci(arr, samples, seed)}


def paired_delta(reference: Sequence[float], new: Sequence[float], samples: int, seed: int) -> dict[str, Any]:
    """Δ = mean(new) - mean(reference) over the same items; the CI resamples the pairs together."""
    ref_arr, new_arr = np.asarray(reference, dtype=float), np.asarray(new, dtype=float)
    diff = new_arr - ref_arr
    return {"delta": float(diff.mean()) if diff.size else math.nan, "ci95": bootstrap_ci(diff, samples, seed + 2),
            "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum())}

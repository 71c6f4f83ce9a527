"""How much of an answer its source chunk supports.

Why a lexical score: a model-written answer that brings in facts the chunk does not hold is exactly what a
fine-tuning set must not teach. The share of the answer's content words found in the chunk catches invented
terms; the share of its word bigrams found there catches recombinations. Structural answers are cut from the
chunk, so they score ~1.0 by construction; llm/qag answers are where this filter earns its keep.
"""

from __future__ import annotations

from stages.common.text import words
from stages.qa_gen.textutil import content_words


def _stem(word: str) -> str:
    """Crude plural/verb-ending folding, so 'pods'/'pod' and 'configured'/'configure' match."""
    for suffix in ("ies", "es", "s", "ed", "ing"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _bigrams(text: str) -> set[tuple[str, str]]:
    toks = [_stem(w) for w in words(text, "identifier", lower=True)]
    return set(zip(toks, toks[1:], strict=False))


def grounding_score(answer: str, source: str) -> float:
    """Score in [0, 1]: mean of content-word recall and bigram recall of `answer` against `source`."""
    answer_words = [_stem(w) for w in content_words(answer)]
    if not answer_words:
        return 0.0
    source_words = {_stem(w) for w in content_words(source)}
    unigram = sum(w in source_words for w in answer_words) / len(answer_words)
    answer_bigrams = _bigrams(answer)
    if len(answer_bigrams) < 2:
        return round(unigram, 4)
    source_bigrams = _bigrams(source)
    bigram = len(answer_bigrams & source_bigrams) / len(answer_bigrams)
    return round((unigram + bigram) / 2, 4)

"""The one prompt shape for retrieval-augmented answers, shared by RAFT training, eval and every user entry point.

Why one module: a reader fine-tuned on excerpts numbered `[1]..[k]` with an instruction in the user turn only
works when eval, ask, chat and serve build exactly that prompt; two copies drift.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from stages.common.text import words

ABSTAIN = "The documentation excerpts I have do not cover this."
ABSTAIN_RE = re.compile(r"\b(do(?:es)? not|don't|doesn't) cover\b|\bnot covered\b|\bno information\b", re.IGNORECASE)
CITATION_RE = re.compile(r"\[(\d{1,2})\]")
INSTRUCTION = ("Answer the question with the facts in the numbered documentation excerpts and cite the excerpt "
               "you used as [n]. If they do not cover it, say so.")
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+|\n+")


class Excerpt(Protocol):
    """What a prompt needs of a retrieved chunk (stages.common.retrieval.Hit and inference.Source have it)."""

    project: str
    title: str
    text: str


def best_window(text: str, question: str, max_words: int) -> str:
    """The run of whole sentences, at most `max_words` long, that shares the most words with the question.

    Chunks run to 300 words; a prompt holds a few excerpts of ~100. Cutting every chunk at its start would drop
    the part a question is about; choosing by the question (never by the answer) keeps that part and leaks nothing.
    """
    if len(text.split()) <= max_words:
        return text.strip()
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    wanted = set(words(question, lower=True, min_len=3))
    best, best_score = "", -1.0
    for start in range(len(sentences)):
        taken: list[str] = []
        n = 0
        for sentence in sentences[start:]:
            size = len(sentence.split())
            if n + size > max_words and taken:
                break
            taken.append(sentence)
            n += size
        window = " ".join(taken)
        overlap = len(wanted & set(words(window, lower=True)))
        score = overlap - 0.01 * start  # ties go to the earlier window (definitions come first)
        if score > best_score:
            best, best_score = window, score
    clipped = best.split()
    return " ".join(clipped[:max_words]) + (" …" if len(clipped) > max_words else "")


def excerpt_header(excerpt: Excerpt) -> str:
    return " — ".join(x for x in (excerpt.project, excerpt.title) if x)


def rag_user_content(question: str, excerpts: Sequence[Excerpt], max_words: int) -> str:
    """The user turn: instruction, numbered excerpts (each cut to the part the question is about), question."""
    blocks = [f"[{n}] {excerpt_header(e)}\n{best_window(e.text, question, max_words)}"
              for n, e in enumerate(excerpts, start=1)]
    return f"{INSTRUCTION}\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question.strip()}"


def with_citation(answer: str, n: int) -> str:
    """The training target: the grounded answer, ending with the citation of its excerpt."""
    return f"{answer.rstrip()} [{n}]"


def cited_numbers(answer: str) -> list[int]:
    """Excerpt numbers an answer cites, in order of first appearance."""
    seen: list[int] = []
    for match in CITATION_RE.finditer(answer):
        n = int(match[1])
        if n not in seen:
            seen.append(n)
    return seen


def is_abstention(answer: str) -> bool:
    return bool(ABSTAIN_RE.search(answer))


def strip_citations(answer: str) -> str:
    """The answer text without `[n]` markers (for overlap metrics against references that have none)."""
    return re.sub(r"\s*\[\d{1,2}\]", "", answer).strip()

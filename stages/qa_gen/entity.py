"""Entity Q&A from the ner graph: "What is <Project>?" and "How does <A> relate to / integrate with <B>?".

Why: the structural generator asks about what a page is about; it never asks about a project as a whole or
about how two projects fit together, which is what people ask most. The ner stage already found the projects
and their typed relations with evidence chunks; answers are built only from the landscape description and
sentences of those chunks, so they are grounded like every other pair.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from stages.common.metrics import StageMetrics
from stages.common.schema import QaGenParams
from stages.qa_gen.textutil import chunk_context, display_name, n_words, prose_text, sentences

log = logging.getLogger(__name__)

RELATION_QUESTIONS = {
    "integrates-with": "How does {a} integrate with {b}?",
    "uses": "How does {a} use {b}?",
    "runs-on": "How does {a} run on {b}?",
    "part-of": "How is {a} part of {b}?",
    "extends": "How does {a} extend {b}?",
}
SKIP_RELATIONS = frozenset({"in-category", "has-maturity", "co-occurs-with"})
DEICTIC_START = re.compile(r"^(?:this|that|these|those|it|they|here|above|below)\b", re.I)
MAX_EVIDENCE_SENTENCES = 3


def generate_entity(
    chunks: list[dict[str, Any]],
    projects: list[dict[str, Any]],
    entities: list[dict[str, Any]],
    relations: list[dict[str, Any]],
    cfg: QaGenParams,
    metrics: StageMetrics,
) -> Iterator[dict[str, Any]]:
    """Yield candidate pairs; with no ner output there is nothing to ask about, so yield nothing and warn."""
    if not entities and not relations:
        log.warning("entity generator: data/ner is missing or empty; no entity pairs")
        metrics.inc("entity.no_ner_input")
        return
    by_id = {c["chunk_id"]: c for c in chunks}
    surfaces = surface_forms(entities)
    yield from project_pairs(chunks, projects, entities, cfg, metrics)
    yield from relation_pairs(by_id, relations, surfaces, cfg, metrics)


def surface_forms(entities: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """Canonical entity -> every way the ner stage saw it written (and its canonical name)."""
    forms: dict[str, set[str]] = defaultdict(set)
    for mention in entities:
        name = mention.get("entity")
        if not name:
            continue
        forms[name].add(name.lower())
        if mention.get("text"):
            forms[name].add(str(mention["text"]).lower())
    return forms


def _definition_score(sentence: str, chunk: dict[str, Any]) -> tuple[int, int, int]:
    """Higher is better: a sentence that says what the project is, near the top of a shallow page."""
    words = n_words(sentence)
    length_ok = 1 if 8 <= words <= 45 else 0
    bonus = sum(
        k in sentence.lower() for k in ("open source", "open-source", "cloud native", "cncf", "kubernetes")
    )
    depth = len(chunk.get("heading_path") or []) + (chunk.get("path") or "").count("/")
    return (length_ok, bonus, -depth)


def best_definition(name: str, chunks: Iterable[dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """The sentence among `chunks` that best defines `name` ("Argo CD is a declarative ... tool")."""
    # "Argo CD is a ..." counts for Argo; "SPIFFE IDs are ..." and "The gRPC proxy is ..." do not.
    pattern = re.compile(
        rf"^(?:[Tt]he\s+)?{re.escape(name)}(?:\s+(?:[A-Z]{{2,4}}|[A-Z][a-z]+[a-rt-z]))?"
        r"(?:\s*\([^)]*\))?\s+(?:is|are)\s+(?:an?|the|one)\s"
    )
    exact_pattern = re.compile(rf"^(?:[Tt]he\s+)?{re.escape(name)}(?:\s*\([^)]*\))?\s+(?:is|are)\s")
    best: tuple[tuple[int, ...], str, str, dict[str, Any]] | None = None
    for chunk in chunks:
        for paragraph in prose_text(chunk["text"]).split("\n\n")[:3]:
            for sent in sentences(paragraph)[:3]:
                if not pattern.match(sent) or re.search(r"\b(?:this|these|above)\b", sent, re.I):
                    continue
                exact = 1 if exact_pattern.match(sent) else 0  # "Argo is" beats "Argo CD is" for Argo
                key = ((exact, *_definition_score(sent, chunk)), sent, chunk["chunk_id"], chunk)
                if best is None or key[:3] > best[:3]:
                    best = key
    return (best[1], best[3]) if best else None


def project_pairs(
    chunks: list[dict[str, Any]],
    projects: list[dict[str, Any]],
    entities: list[dict[str, Any]],
    cfg: QaGenParams,
    metrics: StageMetrics,
) -> Iterator[dict[str, Any]]:
    """'What is <Project>?' for each landscape project the docs talk about."""
    mentioned: dict[str, set[str]] = defaultdict(set)
    for mention in entities:
        if mention.get("type") == "PROJECT" and mention.get("entity"):
            mentioned[mention["entity"]].add(mention.get("chunk_id", ""))
    chunks_by_project: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for chunk in chunks:
        chunks_by_project[display_name(chunk.get("project") or "")].append(chunk)
    by_id = {c["chunk_id"]: c for c in chunks}
    min_words, max_words = cfg.min_answer_words, cfg.max_answer_words
    for record in sorted(projects, key=lambda r: r.get("project", "")):
        project = record.get("project") or ""
        name = display_name(project)
        pool = chunks_by_project.get(name, []) + [
            by_id[i] for i in sorted(mentioned.get(project, ())) if i in by_id
        ]
        if not pool:
            continue
        found = best_definition(name, pool)
        if not found:
            metrics.inc("entity.no_definition")
            continue
        sentence, chunk = found
        description = " ".join((record.get("description") or "").split())
        if description and not description.endswith((".", "!", "?")):
            description += "."
        answer = (
            f"{description} {sentence}".strip()
            if description and description.lower() not in sentence.lower()
            else sentence
        )
        if not min_words <= n_words(answer) <= max_words:
            metrics.inc("entity.answer_out_of_bounds")
            continue
        yield {
            "question": f"What is {name}?",
            "answer": answer,
            "project": chunk.get("project") or project,
            "doc_id": chunk.get("doc_id", ""),
            "chunk_id": chunk["chunk_id"],
            "url": chunk.get("url", ""),
            "license": chunk.get("license", ""),
            "generator": "entity",
            "rule": "entity_what_is",
            "_source": f"{description}\n{chunk_context(chunk)}",
        }


def _mentions(sentence: str, forms: set[str]) -> bool:
    low = sentence.lower()
    return any(re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", low) for f in forms if len(f) > 1)


def relation_pairs(
    by_id: dict[str, dict[str, Any]],
    relations: list[dict[str, Any]],
    surfaces: dict[str, set[str]],
    cfg: QaGenParams,
    metrics: StageMetrics,
) -> Iterator[dict[str, Any]]:
    """'How does A <relation> B?' answered with evidence sentences that name both A and B."""
    min_words, max_words = cfg.min_answer_words, cfg.max_answer_words
    for rel in sorted(relations, key=lambda r: (r.get("head", ""), r.get("relation", ""), r.get("tail", ""))):
        relation, head, tail = rel.get("relation", ""), rel.get("head", ""), rel.get("tail", "")
        if rel.get("source") == "cooccurrence" or relation in SKIP_RELATIONS or not head or not tail:
            continue
        metrics.inc("entity.typed_relations")
        evidence = sorted(
            set(rel.get("evidence_chunk_ids") or [])
            | ({rel["evidence_chunk_id"]} if rel.get("evidence_chunk_id") else set())
        )
        head_forms = surfaces.get(head, set()) | {head.lower()}
        tail_forms = surfaces.get(tail, set()) | {tail.lower()}
        picked: list[str] = []
        used_chunks: list[dict[str, Any]] = []
        for chunk_id in evidence:
            chunk = by_id.get(chunk_id)
            if chunk is None:
                metrics.inc("entity.evidence_chunk_missing")
                continue
            for paragraph in prose_text(chunk["text"]).split("\n\n"):
                for sent in sentences(paragraph):
                    if DEICTIC_START.search(sent) or sent in picked:
                        continue
                    if (
                        _mentions(sent, head_forms)
                        and _mentions(sent, tail_forms)
                        and n_words(" ".join([*picked, sent])) <= max_words
                    ):
                        picked.append(sent)
                        if chunk not in used_chunks:
                            used_chunks.append(chunk)
                    if len(picked) >= MAX_EVIDENCE_SENTENCES:
                        break
                if len(picked) >= MAX_EVIDENCE_SENTENCES:
                    break
            if len(picked) >= MAX_EVIDENCE_SENTENCES:
                break
        answer = " ".join(picked)
        if not used_chunks or n_words(answer) < min_words:
            metrics.inc("entity.relation_without_evidence_sentences")
            continue
        first = used_chunks[0]
        template = RELATION_QUESTIONS.get(relation, "How does {a} relate to {b}?")
        yield {
            "question": template.format(a=head, b=tail),
            "answer": answer,
            "project": first.get("project", ""),
            "doc_id": first.get("doc_id", ""),
            "chunk_id": first["chunk_id"],
            "url": first.get("url", ""),
            "license": first.get("license", ""),
            "generator": "entity",
            "rule": f"entity_{relation}",
            "_source": "\n".join(chunk_context(c) for c in used_chunks),
        }

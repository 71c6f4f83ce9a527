"""qa_gen stage: langfilter chunks (+ ner graph, landscape projects) -> grounded Q&A pairs in data/qa_gen/qa.jsonl.

The generators (structural, entity, llm, qag) only propose pairs; this module owns what every pair must pass
whatever made it: a self-contained question, a non-empty answer, a grounding score against its source chunk
over `min_grounding`, and no duplicate question. Keeping that in one place is what lets a cheap generator and a
model-based one feed the same dataset.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stages.common.cli import StageError
from stages.common.jsonl import iter_jsonl_lenient, stable_id
from stages.common.metrics import StageMetrics
from stages.common.schema import QaGenParams
from stages.qa_gen.grounding import grounding_score
from stages.qa_gen.textutil import chunk_context, display_name, is_self_contained, n_words, normalize_question

log = logging.getLogger(__name__)

GENERATORS = ("structural", "entity", "llm", "qag")
# When two generators ask the same question, keep the answer of the first here: entity answers add the landscape
# description to the docs' definition, structural answers are the docs' own words, model answers come last.
PRIORITY = ("entity", "structural", "qag", "llm")
OUTPUT_KEYS = (
    "qa_id",
    "question",
    "answer",
    "project",
    "doc_id",
    "chunk_id",
    "url",
    "license",
    "generator",
    "grounding",
)


def read_records(path: Path, metrics: StageMetrics, what: str) -> list[dict[str, Any]]:
    """A JSONL file's records; a malformed line is a WARNING with its place and a counter, not a crash."""
    return list(iter_jsonl_lenient(path, lambda kind: metrics.inc(f"errors.bad_input_line.{what}")))


def load_chunks(path: Path, metrics: StageMetrics) -> list[dict[str, Any]]:
    if not path.is_file():
        raise StageError(f"chunks not found: {path} (run the langfilter stage first: dvc repro langfilter)")
    chunks = []
    for record in read_records(path, metrics, "chunks"):
        if not record.get("chunk_id") or not isinstance(record.get("text"), str):
            log.warning("%s: chunk without chunk_id/text skipped", path)
            metrics.inc("errors.bad_chunk")
            continue
        chunks.append(record)
    metrics.inc("chunks_in", len(chunks))
    return chunks


def load_optional(path: Path, metrics: StageMetrics, what: str) -> list[dict[str, Any]]:
    """Inputs some generators can do without (ner, projects): missing means empty, with a warning."""
    if not path.is_file():
        log.warning("%s not found: generators that need %s yield nothing", path, what)
        metrics.inc(f"missing_inputs.{what}")
        return []
    return read_records(path, metrics, what)


def known_names(
    projects: Iterable[dict[str, Any]], chunks: Iterable[dict[str, Any]], entities: Iterable[dict[str, Any]]
) -> list[str]:
    """Names a self-contained question may lean on: projects (full and display form) and ner entities."""
    names = {"Kubernetes", "CNCF"}
    for record in projects:
        if record.get("project"):
            names.update({record["project"], display_name(record["project"])})
    for chunk in chunks:
        if chunk.get("project"):
            names.update({chunk["project"], display_name(chunk["project"])})
    for mention in entities:
        if mention.get("entity") and len(mention["entity"]) > 2:
            names.add(mention["entity"])
    return sorted(names)


def finalize_pairs(
    candidates: Iterable[dict[str, Any]],
    chunks_by_id: dict[str, dict[str, Any]],
    cfg: QaGenParams,
    metrics: StageMetrics,
    names: list[str],
) -> list[dict[str, Any]]:
    """Apply the rules every pair must pass; returns output records in a deterministic order."""
    min_grounding, min_words = cfg.min_grounding, cfg.min_answer_words
    kept: dict[tuple[str, str], dict[str, Any]] = {}
    scored: list[dict[str, Any]] = []
    rules: dict[str, str] = {}  # qa_id -> the rule that made it (metrics only, not a data field)
    rank = {g: i for i, g in enumerate(PRIORITY)}
    for pair in sorted(candidates, key=lambda p: rank.get(p.get("generator", ""), len(rank))):  # stable
        generator = pair.get("generator", "unknown")
        metrics.inc(f"candidates.{generator}")
        source = pair.pop("_source", None)
        rule = pair.pop("rule", None)
        question, answer = (pair.get("question") or "").strip(), (pair.get("answer") or "").strip()
        chunk = chunks_by_id.get(pair.get("chunk_id", ""))
        if not question or not answer:
            metrics.inc("dropped.empty")
            continue
        if n_words(answer) < min_words:
            metrics.inc("dropped.short_answer")
            continue
        if chunk is None:
            metrics.inc("dropped.unknown_chunk")
            continue
        if not is_self_contained(question, names):
            metrics.inc("dropped.not_self_contained")
            continue
        score = grounding_score(answer, source if source is not None else chunk_context(chunk))
        if score < min_grounding:
            metrics.inc("dropped.low_grounding")
            metrics.inc(f"dropped_by_generator.low_grounding.{generator}")
            continue
        key = (pair["chunk_id"], normalize_question(question))
        if key in kept:
            metrics.inc("dropped.duplicate_in_chunk")
            continue
        record = {k: pair.get(k, "") for k in OUTPUT_KEYS}
        record.update(
            question=question,
            answer=answer,
            grounding=score,
            qa_id=stable_id(generator, pair["chunk_id"], question),
        )
        kept[key] = record
        scored.append(record)
        rules[record["qa_id"]] = rule or generator
    return _dedup_questions(scored, metrics, rules)


def _dedup_questions(
    records: list[dict[str, Any]], metrics: StageMetrics, rules: dict[str, str]
) -> list[dict[str, Any]]:
    """One answer per question across the dataset (versioned and translated docs repeat their headings)."""
    order = {g: i for i, g in enumerate(PRIORITY)}
    best: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: (order.get(r["generator"], 9), -r["grounding"], r["qa_id"])):
        key = normalize_question(record["question"])
        if key in best:
            metrics.inc("dropped.duplicate_question")
            continue
        best[key] = record
    out = sorted(
        best.values(), key=lambda r: (r["project"], r["doc_id"], r["chunk_id"], r["generator"], r["question"])
    )
    for rule, n in sorted(Counter(rules[r["qa_id"]] for r in out).items()):
        metrics.inc(f"pairs_by_rule.{rule}", n)
    by_generator = Counter(r["generator"] for r in out)
    by_project = Counter(r["project"] for r in out)
    for generator, n in sorted(by_generator.items()):
        metrics.inc(f"pairs_by_generator.{generator}", n)
    for project, n in sorted(by_project.items()):
        metrics.set(f"pairs_by_project.{project.replace('.', '_')}", n)
    metrics.inc("pairs_out", len(out))
    return out


def select_chunks(
    chunks: list[dict[str, Any]], max_chunks: int, seed: int, min_words: int = 40
) -> list[dict[str, Any]]:
    """A seeded, deterministic sample of prose chunks for the model-based generators (they cost seconds each)."""
    import random

    from stages.qa_gen.structural import skip_reason

    prose = sorted(
        (
            c
            for c in chunks
            if c.get("kind") not in ("yaml", "json")
            and not skip_reason(c)
            and int(c.get("n_words") or len(c["text"].split())) >= min_words
        ),
        key=lambda c: c["chunk_id"],
    )
    if max_chunks and len(prose) > max_chunks:
        prose = sorted(random.Random(seed).sample(prose, max_chunks), key=lambda c: c["chunk_id"])
    return prose


def generate_pairs(
    chunks: list[dict[str, Any]],
    projects: list[dict[str, Any]],
    entities: list[dict[str, Any]],
    relations: list[dict[str, Any]],
    cfg: QaGenParams,
    metrics: StageMetrics,
) -> list[dict[str, Any]]:
    """Run the generators named in `cfg.generators`, then the shared filters; returns output records."""
    generators = list(cfg.generators)
    unknown = sorted(set(generators) - set(GENERATORS))
    if unknown:
        raise StageError(f"qa_gen.generators: unknown generator(s) {unknown}; choose from {list(GENERATORS)}")
    names = known_names(projects, chunks, entities)
    candidates: list[dict[str, Any]] = []
    for generator in generators:
        before = len(candidates)
        if generator == "structural":
            from stages.qa_gen.structural import generate_structural

            candidates.extend(generate_structural(chunks, cfg, metrics, names))
        elif generator == "entity":
            from stages.qa_gen.entity import generate_entity

            candidates.extend(generate_entity(chunks, projects, entities, relations, cfg, metrics))
        elif generator == "llm":
            from stages.qa_gen.llm import generate_llm

            picked = select_chunks(chunks, cfg.llm.max_chunks, cfg.seed)
            candidates.extend(generate_llm(picked, cfg.llm, metrics))
        elif generator == "qag":
            from stages.qa_gen.qag import generate_qag

            picked = select_chunks(chunks, cfg.qag.max_chunks, cfg.seed)
            candidates.extend(generate_qag(picked, cfg.qag, metrics))
        log.info("%s: %d candidate pairs", generator, len(candidates) - before)
    return finalize_pairs(candidates, {c["chunk_id"]: c for c in chunks}, cfg, metrics, names)

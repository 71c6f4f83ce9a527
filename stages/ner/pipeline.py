"""The whole ner stage on explicit paths: read the inputs, extract, relate, write the outputs and metrics."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from stages.common.cli import StageError
from stages.common.jsonl import iter_jsonl_lenient, read_jsonl, write_jsonl
from stages.common.metrics import StageMetrics, recorded_failure
from stages.common.progress import progress
from stages.ner.extract import EntityExtractor
from stages.ner.gazetteer import WordStats, build_gazetteer, manifest_kinds
from stages.ner.gold import evaluate, load_gold
from stages.ner.graph import build_graph, draw_graph, write_graph
from stages.ner.landscape import load_landscape
from stages.ner.relations import (
    RelationAcc,
    RelKey,
    count_cooccurrence,
    landscape_relations,
    pattern_relations,
    relation_records,
)

log = logging.getLogger(__name__)


def read_chunks(path: Path, metrics: StageMetrics) -> list[dict[str, Any]]:
    """Chunks with a chunk_id and text; others are warned about, counted and skipped."""
    if not path.is_file():
        raise StageError(f"input chunks not found: {path} (run the langfilter stage first)")

    def on_bad(kind: str) -> None:  # every non-blank line is counted in; a line that is no JSON object dropped
        metrics.inc("chunks.in")
        metrics.inc("chunks.dropped.bad_json" if kind == "bad_json" else "chunks.dropped.bad_record")

    chunks: list[dict[str, Any]] = []
    for rec in iter_jsonl_lenient(path, on_bad):
        metrics.inc("chunks.in")
        if not rec.get("chunk_id") or not isinstance(rec.get("text"), str):
            log.warning("%s: record without chunk_id/text (keys: %s), skipped", path, sorted(rec)[:8])
            metrics.inc("chunks.dropped.bad_record")
            continue
        chunks.append(rec)
    chunks.sort(key=lambda r: r["chunk_id"])
    return chunks


def read_projects(path: Path, metrics: StageMetrics) -> list[dict[str, Any]]:
    if not path.is_file():
        log.warning("%s not found: chunk projects will not help disambiguate names", path)
        metrics.inc("errors.projects_missing")
        return []
    return [p for p in read_jsonl(path) if isinstance(p, dict) and p.get("project")]


def run_ner(chunks_path: Path, projects_path: Path, landscape_path: Path, out_dir: Path, params: dict[str, Any],
            gold_path: Path | None = None, metrics_path: Path | None = None,
            png_path: Path | None = None) -> dict[str, Any]:
    """The whole stage on explicit paths; returns the metrics dict it wrote (with the error, when it fails)."""
    metrics = StageMetrics("ner")
    with recorded_failure(metrics, metrics_path):
        return _run_ner(metrics, chunks_path, projects_path, landscape_path, out_dir, params, gold_path,
                        metrics_path, png_path)


def _run_ner(metrics: StageMetrics, chunks_path: Path, projects_path: Path, landscape_path: Path, out_dir: Path,
             params: dict[str, Any], gold_path: Path | None, metrics_path: Path | None,
             png_path: Path | None) -> dict[str, Any]:
    ambiguous_names = list(params["ambiguous_names"])
    min_cooc = int(params["min_cooccurrence"])
    max_per_type = int(params["max_relations_per_type"])
    batch_size = int(params["batch_size"])

    items = load_landscape(landscape_path)
    chunks = read_chunks(chunks_path, metrics)
    projects = read_projects(projects_path, metrics)
    gold = load_gold(gold_path) if gold_path and gold_path.is_file() else []
    texts = [c["text"] for c in chunks]
    stats = WordStats.from_texts([*texts, *(g["text"] for g in gold)])
    gaz = build_gazetteer(items, ambiguous_names, stats, manifest_kinds(texts))
    metrics.set("gazetteer.exact_forms", len(gaz.exact))
    metrics.set("gazetteer.folded_forms", len(gaz.folded))
    extractor = EntityExtractor(gaz)
    canonical_of = {it.canonical.lower(): it.canonical for it in items}
    chunk_projects = [canonical_of.get(str(c.get("project") or "").lower(), str(c.get("project") or ""))
                      for c in chunks]

    entities: list[dict[str, Any]] = []
    acc: dict[RelKey, RelationAcc] = defaultdict(RelationAcc)
    cooc: dict[tuple[tuple[str, str], tuple[str, str]], RelationAcc] = defaultdict(RelationAcc)
    mentioned: set[str] = set()
    stream = extractor.extract(texts, chunk_projects, batch_size=batch_size)
    for chunk, mentions in progress(zip(chunks, stream, strict=True), desc="ner", total=len(chunks), unit="chunk"):
        cid = chunk["chunk_id"]
        metrics.inc("chunks.processed")
        if not mentions:
            metrics.inc("chunks.without_entities")
        for m in mentions:
            entities.append({"entity": m.entity, "type": m.type, "text": m.text, "chunk_id": cid,
                             "span": [m.start, m.end]})
            metrics.inc(f"entities.by_type.{m.type}")
            if m.type == "PROJECT":
                mentioned.add(m.entity)
        text = chunk["text"]
        for head, relation, tail in pattern_relations(text, mentions):
            s, e = head.sent_span
            acc[(head.entity, head.type, relation, tail.entity, tail.type, "pattern")].add(cid, text[s:e])
        count_cooccurrence(text, mentions, cid, cooc)

    for (a, b), value in cooc.items():
        if value.count >= min_cooc:
            acc[(a[0], a[1], "co-occurs-with", b[0], b[1], "cooccurrence")] = value
    project_chunks: dict[str, set[str]] = defaultdict(set)
    for ent in entities:
        if ent["type"] == "PROJECT":
            project_chunks[ent["entity"]].add(ent["chunk_id"])
    wanted = mentioned | {canonical_of.get(str(p["project"]).lower(), str(p["project"])) for p in projects}
    for head, head_type, relation, tail, tail_type in landscape_relations(items, wanted):
        rel = acc[(head, head_type, relation, tail, tail_type, "landscape")]
        rel.count = len(project_chunks.get(head, ()))
        rel.chunks = project_chunks.get(head, set())

    relations = relation_records(acc, max_per_type)
    for rec in relations:
        metrics.inc(f"relations.by_type.{rec['relation']}")
        metrics.inc(f"relations.by_source.{rec['source']}")
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics.set("entities.total", write_jsonl(out_dir / "entities.jsonl", entities))
    metrics.set("relations.total", write_jsonl(out_dir / "relations.jsonl", relations))
    graph = build_graph(relations)
    write_graph(graph, out_dir / "graph.json", out_dir / "graph.graphml")
    metrics.set("graph.nodes", graph.number_of_nodes())
    metrics.set("graph.edges", graph.number_of_edges())
    if png_path is not None:
        metrics.set("graph.png_nodes", draw_graph(relations, png_path))
    if gold:
        metrics.set("gold", evaluate(extractor, gold, ambiguous_names))
    else:
        log.warning("no gold set at %s: precision/recall not measured", gold_path)
        metrics.inc("errors.gold_missing")
    metrics.set("throughput.chunks_per_second", round(len(chunks) / max(metrics.elapsed, 1e-9), 1))
    if metrics_path is not None:
        metrics.write(metrics_path)
    else:
        metrics.write()
    result = metrics.as_dict()
    log.info("ner: %d chunks, %d entities, %d relations in %.1fs", len(chunks), len(entities), len(relations),
             metrics.elapsed)
    return result

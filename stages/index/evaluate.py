"""index_eval: is the source document of a question among the top-k retrieved chunks? Measured, not assumed.

For every question with a known source document — the merge validation and test pairs (their `doc_id`) and the
hand-written eval sets (`checked_against`: `<owner>__<repo>/<path>`) — this stage reports recall@k of the source
document and its MRR, for BM25, dense and hybrid retrieval and for each project-filter setting, plus the latency
of one query (p50/p95). Writes metrics/index_eval.json.

    python -m stages.index.evaluate
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.common.cli import StageError, run_cli, setup_logging, stage_parser
from stages.common.jsonl import iter_jsonl_lenient, write_json
from stages.common.metrics import StageMetrics
from stages.common.retrieval import MODES, PROJECT_FILTERS, Retriever, docs_by_source_key
from stages.common.schema import EvalParams, EvalSetSpec, IndexParams, load_stage_params

log = logging.getLogger(__name__)

def questions_from_split(path: Path, stats: StageMetrics, name: str) -> list[tuple[str, set[str]]]:
    """(question, {source doc_id}) of each merge pair that names its document."""
    out = []
    if not path.is_file():
        log.warning("%s not found; %s skipped", path, name)
        return out
    for rec in iter_jsonl_lenient(path, lambda kind: stats.inc(f"dropped.{name}.{kind}")):
        question = next((m.get("content") for m in rec.get("messages", []) if m.get("role") == "user"), None)
        if question and rec.get("doc_id"):
            out.append((str(question), {str(rec["doc_id"])}))
        else:
            stats.inc(f"dropped.{name}.no_source")
    return out


def questions_from_evalset(path: Path, docs_by_key: dict[str, set[str]], stats: StageMetrics,
                           name: str) -> list[tuple[str, set[str]]]:
    """(question, {doc_id}) of each hand-written item whose `checked_against` document is in the index."""
    out = []
    if not path.is_file():
        log.warning("%s not found; %s skipped", path, name)
        return out
    for rec in iter_jsonl_lenient(path, lambda kind: stats.inc(f"dropped.{name}.{kind}")):
        docs = docs_by_key.get(str(rec.get("checked_against") or ""))
        if rec.get("question") and docs:
            out.append((str(rec["question"]), docs))
        else:
            stats.inc(f"dropped.{name}.source_not_indexed")
    return out


def score(retriever: Retriever, questions: Sequence[tuple[str, set[str]]], mode: str, project_filter: str,
          ks: Sequence[int]) -> dict[str, Any]:
    """recall@k (source document among the top-k chunks) and MRR (1 / rank of its first chunk, over max k)."""
    depth = max(ks)
    hits = retriever.search_batch([q for q, _ in questions], depth, mode=mode, project_filter=project_filter)
    ranks = []
    for (_, docs), found in zip(questions, hits, strict=True):
        rank = next((i for i, h in enumerate(found, start=1) if h.doc_id in docs), None)
        ranks.append(rank)
    n = len(questions)
    out: dict[str, Any] = {"n": n}
    for k in sorted(ks):
        out[f"recall@{k}"] = round(sum(1 for r in ranks if r is not None and r <= k) / n, 4) if n else None
    out["mrr"] = round(sum(1 / r for r in ranks if r) / n, 4) if n else None
    return out


def latency(retriever: Retriever, queries: Sequence[str], mode: str) -> dict[str, float]:
    """Wall time of one `search` call (the way a user's question is answered), p50/p95 in milliseconds."""
    times = []
    for query in queries:
        start = time.perf_counter()
        retriever.search(query, 5, mode=mode)
        times.append((time.perf_counter() - start) * 1000)
    if not times:
        return {}
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2),
            "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2), "n": len(times)}


def run(index_dir: Path, merge_dir: Path, eval_sets: Sequence[EvalSetSpec], params: IndexParams,
        metrics_path: Path) -> dict[str, Any]:
    stats = StageMetrics("index_eval")
    retriever = Retriever.load(index_dir)
    docs_by_key = docs_by_source_key(retriever.chunks)
    sets: dict[str, list[tuple[str, set[str]]]] = {
        "merge-validation": questions_from_split(merge_dir / "validation.jsonl", stats, "merge-validation"),
        "merge-test": questions_from_split(merge_dir / "test.jsonl", stats, "merge-test"),
    }
    for spec in eval_sets:
        sets[spec.name] = questions_from_evalset(Path(spec.path), docs_by_key, stats, spec.name)
    if not any(sets.values()):
        raise StageError("no question with a known source document: nothing to measure")
    results: dict[str, Any] = {}
    for name, questions in sets.items():
        if not questions:
            continue
        results[name] = {}
        for mode in MODES:
            for how in PROJECT_FILTERS:
                key = mode if how == "none" else f"{mode}+{how}"
                results[name][key] = score(retriever, questions, mode, how, params.eval_k)
        log.info("%s (%d): recall@5 bm25 %.3f dense %.3f hybrid %.3f", name, len(questions),
                 results[name]["bm25"]["recall@5"], results[name]["dense"]["recall@5"],
                 results[name]["hybrid"]["recall@5"])
    pool = [q for questions in sets.values() for q, _ in questions][: params.latency_queries]
    report = {
        "sets": results,
        "latency": {mode: latency(retriever, pool, mode) for mode in MODES},
        "configured": {"project_filter": retriever.project_filter, "dense_backend":
                       retriever.meta["query"].get("dense_backend"), "rrf_k": retriever.rrf_k,
                       "weights": {"bm25": retriever.weights[0], "dense": retriever.weights[1]}},
        "index": {"n_chunks": len(retriever.chunks), "n_documents": retriever.meta.get("n_documents")},
    }
    report["run"] = stats.as_dict()
    write_json(metrics_path, report)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--index-dir", default="data/index")
    parser.add_argument("--merge-dir", default="data/merge")
    parser.add_argument("--metrics", default="metrics/index_eval.json")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    params = load_stage_params("index", IndexParams, args.params)
    eval_sets = load_stage_params("eval", EvalParams, args.params).sets
    run(Path(args.index_dir), Path(args.merge_dir), eval_sets, params, Path(args.metrics))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

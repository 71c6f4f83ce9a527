"""Time unify + langfilter over the whole shared corpus and print a table (MB/s, chunks/s, wall time).

    python benchmarks/data_stages.py [CORPUS] [--workers N] [--params params.yaml] [--keep DIR]

The corpus is laid out as a data/scrape folder of symlinks (not timed, never copied), then both stages run
in-process through their plain functions with the params from params.yaml. The machine's load is printed too:
on a shared machine the figures are pessimistic. The goal on 2 cores: both stages in <= 30 s.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from stages import langfilter  # noqa: E402
from stages.common.metrics import StageMetrics  # noqa: E402
from stages.common.params import load_params  # noqa: E402
from stages.unify.pipeline import unify  # noqa: E402
from tests.helpers_scrape_fixture import scrape_from_corpus  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="?", default=str(REPO_ROOT.parent / "shared" / "corpus"),
                        help="shared corpus folder (default: ../shared/corpus)")
    parser.add_argument("--params", default=str(REPO_ROOT / "params.yaml"))
    parser.add_argument("--workers", type=int, default=0, help="override unify/langfilter workers (0 = params)")
    parser.add_argument("--keep", default="", help="write the outputs here instead of a temp folder")
    return parser.parse_args(argv)


Row = tuple[str, float, float, int]


def run(corpus: Path, work: Path, params_path: str,
        workers: int) -> tuple[list[Row], dict[str, int], dict[str, Any]]:
    """([(stage, seconds, MB in, chunks)] for unify then langfilter, unify counts, langfilter result)."""
    unify_params = load_params("unify", params_path)
    lf_params = load_params("langfilter", params_path)
    if workers:
        unify_params["workers"] = lf_params["workers"] = workers
    scrape = scrape_from_corpus(corpus, work / "scrape")
    rows: list[Row] = []
    start = time.perf_counter()
    counts = unify(scrape, work / "unify", unify_params, StageMetrics("unify"))
    t_unify = time.perf_counter() - start
    rows.append(("unify", t_unify, counts["bytes_in"] / 1e6, counts["chunks"]))
    chunks_mb = (work / "unify" / "chunks.jsonl").stat().st_size / 1e6
    start = time.perf_counter()
    result = langfilter.run(work / "unify", work / "langfilter", lf_params, StageMetrics("langfilter"),
                            corpus / "MANIFEST.csv")
    t_lf = time.perf_counter() - start
    rows.append(("langfilter", t_lf, chunks_mb, result["chunks_in"]))
    return rows, counts, result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    corpus = Path(args.corpus).resolve()
    if not (corpus / "MANIFEST.csv").is_file():
        print(f"no corpus at {corpus} (MANIFEST.csv missing)", file=sys.stderr)
        return 1
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        rows, counts, result = run(corpus, work, args.params, args.workers)
    load_after = os.getloadavg()
    total = sum(r[1] for r in rows)
    print(f"corpus: {corpus}  files: {counts['files_in']}  documents: {counts['documents']}  "
          f"chunks: {counts['chunks']}  kept: {result['kept']}  rejected: {result['rejected']}")
    print(f"cpus: {os.cpu_count()}  load (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}  "
          f"after: {' '.join(f'{x:.2f}' for x in load_after)}")
    print()
    print(f"| {'stage':<10} | {'seconds':>8} | {'MB in':>7} | {'MB/s':>6} | {'chunks':>7} | {'chunks/s':>8} |")
    print(f"|{'-' * 12}|{'-' * 10}|{'-' * 9}|{'-' * 8}|{'-' * 9}|{'-' * 10}|")
    for stage, secs, mb, n in rows:
        print(f"| {stage:<10} | {secs:8.2f} | {mb:7.2f} | {mb / secs:6.2f} | {n:7d} | {n / secs:8.0f} |")
    print(f"| {'total':<10} | {total:8.2f} | {'':>7} | {'':>6} | {'':>7} | {'':>8} |")
    q = result.get("quality", {})
    print()
    print(f"non-English chunks rejected: {q.get('non_english_rejected_pct')} % of {q.get('non_english_chunks')}; "
          f"English chunks rejected: {q.get('english_rejected_pct')} % of {q.get('english_chunks')}")
    print(f"goal: <= 30 s for both stages -> {'met' if total <= 30 else 'NOT met'} ({total:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""index: BM25 + dense (sentence-transformers) retrieval index over data/langfilter/chunks.jsonl -> data/index/.

Embeddings are cached by chunk text under `index.cache_dir`: a re-run embeds only what changed, a killed run
resumes. Query-time knobs (fusion weights, rrf_k, candidates, project filter) are written to meta.json, so every
reader (eval, ask, serve) searches the way this index was configured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from stages.common.cli import run_cli, setup_logging, stage_parser
from stages.common.metrics import StageMetrics
from stages.common.schema import IndexParams, load_stage_params
from stages.index.build import build_index

log = logging.getLogger("stages.index")


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--chunks", default="data/langfilter/chunks.jsonl")
    parser.add_argument("--out-dir", default="data/index")
    parser.add_argument("--metrics", default="metrics/index.json")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    params = load_stage_params("index", IndexParams, args.params)
    metrics = StageMetrics("index")
    try:
        meta = build_index(Path(args.chunks), Path(args.out_dir), params, metrics)
    except Exception as exc:
        metrics.set("error", f"{type(exc).__name__}: {exc}")
        metrics.write(args.metrics)
        raise
    metrics.write(args.metrics)
    log.info("index: %d chunks of %d documents (%.1fs)", meta["n_chunks"], meta["n_documents"], metrics.elapsed)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

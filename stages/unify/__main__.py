"""unify: data/scrape (manifest + files) -> data/unify/documents.jsonl + chunks.jsonl, metrics/unify.json.

Markdown/MDX/rst/adoc are cleaned of front matter, shortcodes, JSX/HTML and link syntax; PDFs are read page by
page; YAML/JSON become a one-line description plus a code block; HTML goes through trafilatura. Chunks are
heading-aware and bounded by unify.chunk_max_words. Same inputs + params -> byte-identical outputs, whatever
unify.workers is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from stages.common.cli import run_cli, setup_logging, stage_parser
from stages.common.metrics import StageMetrics, recorded_failure
from stages.common.schema import UnifyParams, load_stage_params
from stages.unify.pipeline import unify

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--scrape-dir", default="data/scrape", help="input folder (default: data/scrape)")
    parser.add_argument("--out-dir", default="data/unify", help="output folder (default: data/unify)")
    parser.add_argument("--metrics", default="metrics/unify.json", help="metrics file (default: metrics/unify.json)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    params = load_stage_params("unify", UnifyParams, args.params).model_dump()
    metrics = StageMetrics("unify")
    with recorded_failure(metrics, args.metrics):
        counts = unify(Path(args.scrape_dir), Path(args.out_dir), params, metrics)
    metrics.write(args.metrics)
    log.info("unify: %d files -> %d documents, %d chunks (%.1fs)", counts["files_in"], counts["documents"],
             counts["chunks"], metrics.elapsed)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

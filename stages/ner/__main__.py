"""Entry point of the ner stage (DVC `ner`): `python -m stages.ner`; the CLI help is the package docstring."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import stages.ner
from stages.common.cli import StageError, run_cli, setup_logging, stage_parser
from stages.common.schema import NerParams, load_stage_params
from stages.ner.pipeline import run_ner


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = stage_parser(stages.ner.__doc__)
    parser.add_argument("--chunks", default="data/langfilter/chunks.jsonl")
    parser.add_argument("--projects", default="data/scrape/projects.jsonl")
    parser.add_argument("--landscape", default="data/scrape/landscape.yml")
    parser.add_argument("--gold", default="tests/data/ner_gold.jsonl")
    parser.add_argument("--out-dir", default="data/ner")
    parser.add_argument("--metrics", default="metrics/ner.json")
    parser.add_argument("--graph-png", default="metrics/ner_graph.png")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    params = load_stage_params("ner", NerParams, args.params).model_dump()
    if not Path(args.landscape).is_file():
        raise StageError(f"landscape file not found: {args.landscape} (run the scrape stage first)")
    return run_ner(Path(args.chunks), Path(args.projects), Path(args.landscape), Path(args.out_dir), params,
                   gold_path=Path(args.gold), metrics_path=Path(args.metrics), png_path=Path(args.graph_png))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

"""Generate grounded Q&A pairs from the filtered docs chunks (python -m stages.qa_gen).

Reads data/langfilter/chunks.jsonl, data/ner/{entities,relations}.jsonl and data/scrape/projects.jsonl; writes
data/qa_gen/qa.jsonl and metrics/qa_gen.json. Generators are chosen with qa_gen.generators.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from stages.common.cli import run_cli, setup_logging, stage_parser
from stages.common.jsonl import write_jsonl
from stages.common.metrics import StageMetrics, recorded_failure
from stages.common.schema import QaGenParams, load_stage_params
from stages.qa_gen import generate_pairs, load_chunks, load_optional

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--chunks", default="data/langfilter/chunks.jsonl", type=Path)
    parser.add_argument("--ner-dir", default="data/ner", type=Path)
    parser.add_argument("--projects", default="data/scrape/projects.jsonl", type=Path)
    parser.add_argument("--out", default="data/qa_gen/qa.jsonl", type=Path)
    parser.add_argument("--metrics", default="metrics/qa_gen.json", type=Path)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_stage_params("qa_gen", QaGenParams, args.params)

    metrics = StageMetrics("qa_gen")
    with recorded_failure(metrics, args.metrics):
        chunks = load_chunks(args.chunks, metrics)
        projects = load_optional(args.projects, metrics, "projects")
        entities = load_optional(args.ner_dir / "entities.jsonl", metrics, "ner_entities")
        relations = load_optional(args.ner_dir / "relations.jsonl", metrics, "ner_relations")
        records = generate_pairs(chunks, projects, entities, relations, cfg, metrics)
        n = write_jsonl(args.out, records)
    metrics.set("generators", list(cfg.generators))
    metrics.set("chunks_per_second", round(len(chunks) / max(metrics.elapsed, 1e-9), 1))
    metrics.write(args.metrics)
    log.info("wrote %d pairs to %s (%.1fs)", n, args.out, metrics.elapsed)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

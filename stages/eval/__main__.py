"""Evaluate the fine-tuned model against its base: ROUGE-L/BLEU/chrF with bootstrap CIs, answer perplexity,
multiple-choice accuracy and train-overlap contamination on the merged test split and every `eval.sets` entry.

Reads models/base, models/adapter, data/merge/{train,test}.jsonl; writes metrics/eval.json,
data/eval/predictions.jsonl, metrics/report.md and metrics/eval_plots/*.png.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stages.common.cli import run_cli, setup_logging, stage_parser
from stages.common.inference import InferenceSettings
from stages.common.metrics import StageMetrics
from stages.common.params import load_params
from stages.common.schema import EvalParams, MergeParams, load_stage_params
from stages.eval.pipeline import EvalPaths, run_eval

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    setup_logging(args.log_level)
    # every section eval reads, validated once, before anything is loaded or written
    params = load_stage_params("eval", EvalParams, args.params)
    decontam_ngram = load_stage_params("merge", MergeParams, args.params).decontam_ngram
    settings = InferenceSettings.from_params(load_params(None, args.params))  # inference: + merge.system_prompt
    stats = StageMetrics("eval")
    paths = EvalPaths()
    run_eval(paths, params, settings, decontam_ngram, stats)
    log.info("wrote %s, %s, %s in %.1fs", paths.metrics, paths.predictions, paths.report, stats.elapsed)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

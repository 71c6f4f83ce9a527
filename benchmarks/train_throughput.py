"""Train throughput: real (non-pad) tokens per second for padded vs packed (padding-free BFD) LoRA batches.

Why: on a small CPU the budget is optimizer steps per minute; padding wastes most of a batch of Q&A pairs whose
lengths vary 5x. This runs the train stage's own SFTConfig/LoRA setup on the same examples twice, once per
batching mode, and prints a table (tokens/s, s/step, tokens/step, estimated minutes per epoch).

    python -m benchmarks.train_throughput                       # models/base if present, else the tiny model
    python -m benchmarks.train_throughput --steps 4 --data data/merge/train.jsonl --model models/base

Run it alone: two torch processes on two cores slow each other ~4x.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stages.common.schema import TrainParams

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # also runnable as `python benchmarks/train_throughput.py`
    sys.path.insert(0, str(REPO_ROOT))

log = logging.getLogger("benchmarks.train_throughput")

SYSTEM = "You are an expert on the CNCF cloud-native landscape. Answer accurately and concisely."
MODES = {"padded": {"packing": False}, "packed": {"packing": True, "packing_layout": "rows", "autocast": "none"},
         "flat": {"packing": True, "packing_layout": "flat"},
         "packed-bf16": {"packing": True, "packing_layout": "rows", "autocast": "bf16"}}
HEADING = re.compile(r"^#{1,4}\s+(.+?)\s*#*\s*$")


def sample_pairs(n: int, seed: int, corpus: Path | None) -> list[dict[str, Any]]:
    """Q&A chats of realistic lengths: markdown sections of the shared corpus (question from the heading, answer
    = 15-180 words of its prose), or random words of the same lengths when the corpus is absent."""
    rng = random.Random(seed)
    pairs: list[dict[str, Any]] = []
    if corpus and corpus.is_dir():
        for path in sorted(corpus.glob("*/**/*.md"))[:4000]:
            pairs.extend(_sections(path))
        rng.shuffle(pairs)
    if len(pairs) < n:
        words = ["pods", "services", "deployments", "scrape", "metrics", "alert", "rules", "chart", "values", "envoy", "proxy", "mesh", "sidecar", "cluster", "node", "kubelet", "etcd", "raft", "leader", "controller", "reconcile", "operator", "custom", "resource"]
        while len(pairs) < n:
            answer = " ".join(rng.choice(words) for _ in range(int(rng.triangular(15, 180, 60))))
            pairs.append((f"How does {rng.choice(words)} relate to {rng.choice(words)}?", answer))
    return [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                         {"role": "assistant", "content": a}]} for q, a in pairs[:n]]


def _sections(path: Path) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    heading, prose = None, []
    text = path.read_text(encoding="utf-8", errors="replace")
    text = re.sub(r"```.*?```", " ", text, flags=re.DOTALL)
    for line in [*text.splitlines(), "# end"]:
        match = HEADING.match(line)
        if match:
            words = " ".join(prose).split()
            if heading and len(words) >= 15:
                out.append((f"What does the documentation say about {heading}?", " ".join(words[:180])))
            heading, prose = match.group(1), []
        elif line.strip() and not line.lstrip().startswith(("|", "<", "{{", "---")):
            prose.append(line.strip())
    return out


def load_pairs(data: Path | None, n: int, seed: int) -> list[dict[str, Any]]:
    from stages.common.metrics import StageMetrics
    from stages.train import cap_examples, load_chat_split

    if data and data.is_file():
        return cap_examples(load_chat_split(data, StageMetrics("bench"), "train"), n, seed)
    corpus = Path(os.environ.get("CNCF_CORPUS", REPO_ROOT.parent / "shared" / "corpus")) / "repos"
    return sample_pairs(n, seed, corpus)


def default_model(workdir: Path) -> Path:
    base = REPO_ROOT / "models" / "base"
    if (base / "config.json").is_file():
        return base
    from stages.base_model import build_base_model
    from tests.fakes.tiny_model import build_tiny_model

    tiny = build_tiny_model(workdir / "tiny")
    build_base_model(str(tiny), workdir / "base")
    return workdir / "base"


def measure(model_dir: Path, records: list[dict[str, Any]], params: TrainParams, steps: int,
            workdir: Path) -> dict[str, float]:
    """Train `steps` (+1 warm-up) steps in one batching mode, with the train stage's collators; tokens/s = real
    tokens of the timed steps' batches over their wall time."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from stages.common.modeling import load_causal_lm, load_tokenizer
    from stages.train import (
        CountingCollator,
        TrainPaths,
        choose_collator,
        lora_config,
        sft_config,
        with_values,
    )

    ends: list[float] = []

    class Mark(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            ends.append(time.perf_counter())

    config = sft_config(with_values(params, max_steps=steps + 1), TrainPaths(checkpoint_dir=workdir), "cpu")
    config.save_strategy = "no"
    tokenizer = load_tokenizer(model_dir)
    trainer = SFTTrainer(model=load_causal_lm(model_dir), args=config, train_dataset=Dataset.from_list(records),
                         processing_class=tokenizer, peft_config=lora_config(params), callbacks=[Mark()])
    counter = CountingCollator(choose_collator(params, tokenizer, trainer.data_collator))
    trainer.data_collator = counter
    steps_per_epoch = len(trainer.get_train_dataloader()) // params.grad_accum
    counter.counts.clear()
    trainer.train()
    accum = params.grad_accum
    tokens = sum(counter.counts[accum:accum * (steps + 1)])
    seconds = ends[-1] - ends[0]
    return {"tokens_per_second": tokens / seconds, "seconds_per_step": seconds / steps,
            "tokens_per_step": tokens / steps, "steps_per_epoch": steps_per_epoch,
            "minutes_per_epoch": steps_per_epoch * seconds / steps / 60}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="HF model dir (default: models/base, else the tiny test model)")
    parser.add_argument("--data", type=Path, help="chat JSONL (default: data/merge/train.jsonl, else built-in)")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per mode (after 1 warm-up)")
    parser.add_argument("--examples", type=int, default=256, help="examples in the pool both modes draw from")
    parser.add_argument("--params", default=str(REPO_ROOT / "params.yaml"), help="train section: batch, length, LoRA")
    parser.add_argument("--batch-size", type=int, help="override train.batch_size")
    parser.add_argument("--max-length", type=int, help="override train.max_length")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--modes", default="padded,packed",
                        help="comma list of padded, packed (BFD bins as rows), flat (trl's one-row padding-free), "
                             "packed-bf16 (packed under CPU bf16 autocast)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from stages.common.modeling import setup_cpu_threads
    from stages.common.schema import TrainParams, load_stage_params
    from stages.train import with_values

    threads = setup_cpu_threads(args.threads or None)
    params = with_values(load_stage_params("train", TrainParams, args.params), quantization="none",
                         **{k: v for k, v in (("batch_size", args.batch_size), ("max_length", args.max_length)) if v})
    data = args.data or (REPO_ROOT / "data" / "merge" / "train.jsonl")
    records = load_pairs(data, args.examples, params.seed)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        model_dir = args.model or default_model(Path(tmp))
        results = {mode: measure(model_dir, records, with_values(params, **MODES[mode]), args.steps, Path(tmp) / mode)
                   for mode in args.modes.split(",")}
    print(f"\nmodel {model_dir} | {len(records)} examples from {data if data.is_file() else 'corpus sections (built-in sample)'} | "
          f"batch {params.batch_size} | max_length {params.max_length} | {threads} threads | {args.steps} steps")
    print(f"{'mode':8} {'tokens/s':>9} {'s/step':>8} {'tokens/step':>12} {'steps/epoch':>12} {'min/epoch':>10}")
    for mode, r in results.items():
        print(f"{mode:8} {r['tokens_per_second']:9.1f} {r['seconds_per_step']:8.2f} {r['tokens_per_step']:12.0f} "
              f"{r['steps_per_epoch']:12d} {r['minutes_per_epoch']:10.1f}")
    for mode in results.keys() - {"padded"}:
        if "padded" in results:
            speedup = results[mode]["tokens_per_second"] / results["padded"]["tokens_per_second"]
            print(f"{mode} / padded tokens/s: {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

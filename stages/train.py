"""LoRA / QLoRA supervised fine-tuning of models/base on data/merge, shaped like trl's `trl/scripts/sft.py`.

The recipe, top to bottom in `train()`: load data, load model, configure (SFTConfig + LoRA), train, save. Reads the
`messages` chat records of data/merge/{train,validation}.jsonl, trains a peft LoRA adapter with trl's SFTTrainer
(loss on assistant tokens only, optional BFD packing), evaluates the validation split before and after, and writes
models/adapter/, metrics/train.json and dvclive plots in metrics/train_live/. The helpers live in stages/common/:
chat templates (chat_templates), packed batches (packing), resumable checkpoints (checkpoints), callbacks
(train_callbacks), memory (memory), model loading (modeling).

A killed run resumes: checkpoints in models/checkpoints/ carry a fingerprint of the train params, the data and the
base model; a rerun with the same fingerprint continues from the last checkpoint, a run with different ones starts
clean.

Several processes (DDP, FSDP): `dvc repro train` with `train.launch.num_processes` > 1 runs this module under
`accelerate launch` (stages/launch.py), so the outputs still land in dvc.lock.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common.checkpoints import (  # noqa: F401 - re-exported for tests and benchmarks
    is_finished,
    prepare_checkpoints,
    restore_finished,
    run_fingerprint,
    step_of,
)
from stages.common.cli import StageError, run_cli, setup_logging, stage_parser
from stages.common.jsonl import read_json, write_json
from stages.common.memory import adapters_to_fp32, peak_memory
from stages.common.metrics import StageMetrics
from stages.common.modeling import (
    load_causal_lm,
    load_tokenizer,
    pick_device,
    pick_dtype,
    setup_cpu_threads,
    world_size,
)
from stages.common.packing import CountingCollator, RowPackedCollator, choose_collator  # noqa: F401
from stages.common.schema import InferenceParams, TrainParams, load_stage_params
from stages.common.train_callbacks import make_callbacks

log = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant"}
BASELINE_FILE = "baseline_eval.json"


@dataclass(frozen=True)
class TrainPaths:
    """Every file the stage touches; tests point them at tmp_path."""

    data_dir: Path = Path("data/merge")
    base_dir: Path = Path("models/base")
    adapter_dir: Path = Path("models/adapter")
    checkpoint_dir: Path = Path("models/checkpoints")
    merged_dir: Path = Path("models/merged")
    index_dir: Path = Path("data/index")
    metrics_path: Path = Path("metrics/train.json")
    live_dir: Path = Path("metrics/train_live")


def with_values(params: TrainParams, **values: Any) -> TrainParams:
    """`params` with some values replaced, validated again: benchmarks and tests vary a knob of a loaded run."""
    return TrainParams.model_validate({**params.model_dump(), **values})


class StopTraining(Exception):
    """Raised by a callback to simulate a killed run (tests)."""


# --------------------------------------------------------------------------------------------------- data
def load_chat_split(path: Path, metrics: StageMetrics, split: str) -> list[dict[str, Any]]:
    """Keep only well-formed `messages` lists (system?/user/assistant, ending on a non-empty assistant turn)."""
    if not path.is_file():
        return []
    from stages.common.jsonl import read_jsonl

    kept: list[dict[str, Any]] = []
    for n, record in enumerate(read_jsonl(path), start=1):
        metrics.inc(f"in.{split}")
        problem = _chat_problem(record.get("messages"))
        if problem:
            log.warning("%s line %d: skipped (%s)", path, n, problem)
            metrics.inc(f"dropped.{split}.{problem.split(':')[0].replace(' ', '_')}")
            continue
        kept.append({"messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]],
                     **{k: str(record.get(k) or "") for k in ("qa_id", "doc_id", "chunk_id")}})
    metrics.inc(f"out.{split}", len(kept))
    return kept


def _chat_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "no messages"
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return "bad message"
        if not m["content"].strip():
            return "empty content"
    if messages[-1]["role"] != "assistant":
        return "no final assistant turn"
    return None


def cap_examples(records: list[dict[str, Any]], limit: int, seed: int) -> list[dict[str, Any]]:
    """A seeded random subset (in original order) when `limit` > 0: time-boxed CPU runs still see every topic."""
    if limit <= 0 or len(records) <= limit:
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]


def load_training_records(params: TrainParams, paths: TrainPaths, metrics: StageMetrics,
                          inference: InferenceParams | None = None
                          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Step 1 of the recipe: the (capped) train and validation chat records, or one clear error line; with
    train.context=rag each becomes a RAFT prompt with retrieved excerpts (`with_context`)."""
    seed = params.seed
    train_path = paths.data_dir / "train.jsonl"
    if not train_path.is_file():
        raise StageError(f"{train_path} not found: run the merge stage first (dvc repro merge)")
    train_records = cap_examples(load_chat_split(train_path, metrics, "train"),
                                 params.max_train_examples, seed)
    val_records = cap_examples(load_chat_split(paths.data_dir / "validation.jsonl", metrics, "validation"),
                               params.max_eval_examples, seed)
    if not train_records:
        raise StageError(f"{train_path} has no usable chat records (see the warnings above)")
    train_records, val_records = with_context(train_records, val_records, params, inference, paths, metrics)
    if not val_records:
        log.warning("%s: no validation records; eval_loss will be missing", paths.data_dir / "validation.jsonl")
    return train_records, val_records


def with_context(train_records: list[dict[str, Any]], val_records: list[dict[str, Any]], params: TrainParams,
                 inference: InferenceParams | None, paths: TrainPaths, metrics: StageMetrics
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`train.context: rag` turns each pair into a RAFT prompt (stages.common.raft) with the excerpts users will
    get (inference.k excerpts of inference.excerpt_words); validation is built the same way, so eval_loss measures
    the task being trained. Only `messages` stay."""
    if params.context == "rag":
        from stages.common.raft import raft_records
        from stages.common.retrieval import Retriever

        if inference is None:
            raise StageError("train.context: rag needs the inference section (k, excerpt_words) of params.yaml")
        retriever = Retriever.load(paths.index_dir)
        raft = params.raft
        for name, records in (("train", train_records), ("validation", val_records)):
            counts: dict[str, int] = {}
            built = raft_records(records, retriever, k=inference.k, excerpt_words=inference.excerpt_words,
                                 p_gold=raft.p_gold, closed_book_fraction=raft.closed_book_fraction,
                                 no_gold_target=raft.no_gold_target, seed=params.seed, stats=counts)
            for key, value in sorted(counts.items()):
                metrics.inc(f"raft.{name}.{key}", value)
            if name == "train":
                train_records = built
            else:
                val_records = built
    strip = [{"messages": r["messages"]} for r in train_records], [{"messages": r["messages"]} for r in val_records]
    return strip


def load_model(params: TrainParams, base_dir: Path, device: str) -> tuple[Any, Any]:
    """Step 2: tokenizer and model (bitsandbytes-quantized and prepared for k-bit training under QLoRA)."""
    tokenizer = load_tokenizer(base_dir)
    model = load_causal_lm(base_dir, params.quantization, device)
    if params.quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=params.gradient_checkpointing)
    return model, tokenizer


# --------------------------------------------------------------------------------------------------- config
def lora_config(params: TrainParams) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                      target_modules=params.target_modules, bias="none", task_type="CAUSAL_LM")


def sft_config(params: TrainParams, paths: TrainPaths, device: str) -> Any:
    """Every trainer knob in one object, from params. On CPU: fp32 or bf16 autocast, no checkpointing (trl's
    default checkpointing costs 16x)."""
    import torch
    from trl import SFTConfig

    on_gpu = device == "cuda"
    # GPU: bf16 where supported, else fp16. CPU: fp32, or bf16 autocast (weights stay fp32) when train.autocast says
    # so; accelerate then runs each forward under torch.autocast("cpu", bfloat16).
    bf16 = torch.cuda.is_bf16_supported() if on_gpu else params.autocast == "bf16"
    return SFTConfig(
        output_dir=str(paths.checkpoint_dir),
        # data: chat `messages`, loss on the assistant turns only
        assistant_only_loss=True,
        max_length=params.max_length,
        packing=params.packing,
        packing_strategy="bfd",  # best-fit decreasing bins of whole examples (truncated to max_length)
        # optimisation
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler,
        warmup_steps=params.warmup_ratio,  # < 1: a fraction of the steps (transformers 5)
        num_train_epochs=float(params.epochs),
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.eval_batch_size,
        gradient_accumulation_steps=params.grad_accum,
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        seed=params.seed,
        data_seed=params.seed,
        # hardware
        bf16=bf16,
        fp16=on_gpu and not bf16,
        use_cpu=not on_gpu,
        activation_checkpointing=params.gradient_checkpointing,  # trl defaults to True
        dataloader_num_workers=0,
        dataloader_pin_memory=on_gpu,
        ddp_find_unused_parameters=False,
        # checkpoints, logs
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=2,
        save_only_model=False,  # optimizer + scheduler + RNG state, so a resumed run is the same run
        eval_strategy="no",  # evaluated before and after training, explicitly
        logging_steps=params.logging_steps,
        logging_first_step=True,
        report_to=[],  # dvclive through our own callback: no git commits, no dvc.yaml edits
        disable_tqdm=None,
    )


def save_adapter(trainer: Any, tokenizer: Any, resolved: dict[str, Any], adapter_dir: Path) -> None:
    """All ranks save (FSDP gathers), rank 0 swaps the finished dir in: no half-written models/adapter."""
    tmp = adapter_dir.with_name(f".{adapter_dir.name}.tmp")
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / "training_args.json", resolved)
        shutil.rmtree(adapter_dir, ignore_errors=True)
        tmp.rename(adapter_dir)
    trainer.accelerator.wait_for_everyone()


def save_merged(adapter_dir: Path, base_dir: Path, merged_dir: Path) -> None:
    """A standalone model (base + LoRA folded in) for runtimes without peft (vLLM, llama.cpp conversion)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    tmp = merged_dir.with_name(f".{merged_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp), safe_serialization=True)
    load_tokenizer(adapter_dir).save_pretrained(str(tmp))
    shutil.rmtree(merged_dir, ignore_errors=True)
    tmp.rename(merged_dir)


def resolved_config(params: TrainParams, config: Any, peft_config: Any, n_train: int, n_val: int,
                    base_dir: Path) -> dict[str, Any]:
    """What training_args.json records: the params, the full SFTConfig and LoRA config actually used."""
    base_info = base_dir / "base_model.json"
    peft_dict = {k: (sorted(v) if isinstance(v, set) else v) for k, v in peft_config.to_dict().items()}
    return {
        "params": params.model_dump(),
        "sft_config": json.loads(config.to_json_string()),
        "lora_config": json.loads(json.dumps(peft_dict, default=str)),
        "base_model": read_json(base_info) if base_info.is_file() else {"path": str(base_dir)},
        "n_train_examples": n_train,
        "n_validation_examples": n_val,
    }


# --------------------------------------------------------------------------------------------------- main flow

def train(params: TrainParams, paths: TrainPaths = TrainPaths(), callbacks: Iterable[Any] = (),
          inference: InferenceParams | None = None) -> dict[str, Any]:
    """Load data and model, configure LoRA + SFT, train, evaluate, save adapter + metrics; returns the metrics.
    `inference` is params.yaml's inference section (retrieval settings for train.context=rag)."""
    from datasets import Dataset
    from trl import SFTTrainer

    metrics = StageMetrics("train")
    device = pick_device()
    threads = setup_cpu_threads() if device == "cpu" else None

    # 1. data
    train_records, val_records = load_training_records(params, paths, metrics, inference)
    fingerprint = run_fingerprint(params, train_records, val_records, paths.base_dir)
    resume_from = prepare_checkpoints(paths.checkpoint_dir, fingerprint, main=int(os.environ.get("RANK", "0")) == 0)

    # 2. model
    model, tokenizer = load_model(params, paths.base_dir, device)

    # 3. configure: SFT + LoRA, packed batches, throughput + dvclive callbacks
    peft_config = lora_config(params)
    config = sft_config(params, paths, device)
    counter = CountingCollator(None)
    throughput, live = make_callbacks(paths.live_dir, resume_from is not None, counter,
                                      params.grad_accum, world_size())
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train_records),
        eval_dataset=Dataset.from_list(val_records) if val_records else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[throughput, live, *callbacks],
    )
    counter.inner = choose_collator(params, tokenizer, trainer.data_collator)
    trainer.data_collator = counter
    if params.quantization != "none" and device == "cpu":
        adapters_to_fp32(trainer.model)
    if trainer.is_world_process_zero():
        trainer.model.print_trainable_parameters()

    # 4. train: baseline eval (LoRA B starts at zero: step 0 is the base model), train, final eval
    baseline = _baseline_eval(trainer, paths.checkpoint_dir, params, bool(val_records), resume_from is not None)
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    start = time.perf_counter()
    if is_finished(resume_from):  # resuming there would run one more step on every rerun
        log.info("%s already ends this run: reusing its adapter without training", resume_from)
        train_loss = restore_finished(trainer, resume_from)
    else:
        train_loss = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None).training_loss
    train_seconds = time.perf_counter() - start
    final = trainer.evaluate() if val_records else {}
    live.close()

    # 5. save
    resolved = resolved_config(params, config, peft_config, len(train_records), len(val_records), paths.base_dir)
    save_adapter(trainer, tokenizer, resolved, paths.adapter_dir)
    if params.merge and trainer.is_world_process_zero():
        save_merged(paths.adapter_dir, paths.base_dir, paths.merged_dir)
    summary = run_summary(trainer, throughput, train_loss, baseline, final, train_seconds, resume_from)
    summary.update({
        "n_train_examples": len(train_records),
        "n_validation_examples": len(val_records),
        "device": device,
        "dtype": str(pick_dtype(device)).replace("torch.", ""),
        "torch_threads": threads,
        "world_size": world_size(),
        "quantization": params.quantization,
        "packing": params.packing,
        "packing_layout": params.packing_layout if params.packing else None,
        "fingerprint": fingerprint,
        **peak_memory(),
    })
    for key, value in summary.items():
        metrics.set(key, value)
    if trainer.is_world_process_zero():
        metrics.write(paths.metrics_path)
    log.info("train loss %.4f, eval loss %s -> %s, %.1f tokens/s, %d steps", summary["train_loss"],
             summary["eval_loss_before"], summary["eval_loss"], summary["train_tokens_per_second"], summary["steps"])
    return metrics.as_dict()


def run_summary(trainer: Any, throughput: Any, train_loss: float | None, baseline: dict[str, Any],
                final: dict[str, Any], train_seconds: float, resume_from: Path | None) -> dict[str, Any]:
    """Losses before/after, perplexities, throughput and steps of a finished run (metrics/train.json)."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "train_loss": _round(train_loss),
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "eval_loss": _round(final.get("eval_loss")),
        "eval_perplexity": _round(math.exp(final["eval_loss"]) if "eval_loss" in final else None),
        "eval_loss_before": _round(baseline.get("eval_loss")),
        "eval_perplexity_before": _round(math.exp(baseline["eval_loss"]) if "eval_loss" in baseline else None),
        "train_tokens_per_second": round(throughput.tokens_per_second, 2),
        "train_tokens": int(throughput.last_tokens),
        "seconds_per_step": round(train_seconds / max(1, trainer.state.global_step - step_of(resume_from)), 3),
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0.0), 3),
        "resumed_from_step": step_of(resume_from),
        "train_seconds": round(train_seconds, 1),
    }


def _baseline_eval(trainer: Any, checkpoint_dir: Path, params: TrainParams, has_val: bool,
                   resuming: bool) -> dict[str, float]:
    """Eval loss of the untouched base, kept beside the checkpoints so a resumed run does not recompute it.

    Every rank must take the same branch (evaluate is collective): the cache is read only when resuming, when
    no rank writes or clears the checkpoint dir."""
    if not has_val or not params.eval_before_train:
        return {}
    cached = checkpoint_dir / BASELINE_FILE
    if resuming and cached.is_file():
        return read_json(cached)
    result = {k: v for k, v in trainer.evaluate().items() if isinstance(v, int | float)}
    if trainer.is_world_process_zero():
        write_json(cached, result)
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 5)


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--data-dir", default=str(TrainPaths.data_dir), help="folder of train/validation.jsonl")
    parser.add_argument("--base-dir", default=str(TrainPaths.base_dir), help="plain HF model dir (models/base)")
    parser.add_argument("--adapter-dir", default=str(TrainPaths.adapter_dir))
    parser.add_argument("--checkpoint-dir", default=str(TrainPaths.checkpoint_dir))
    parser.add_argument("--index-dir", default=str(TrainPaths.index_dir), help="retrieval index (train.context=rag)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    params = load_stage_params("train", TrainParams, args.params)
    inference = load_stage_params("inference", InferenceParams, args.params)
    paths = TrainPaths(data_dir=Path(args.data_dir), base_dir=Path(args.base_dir),
                       adapter_dir=Path(args.adapter_dir), checkpoint_dir=Path(args.checkpoint_dir),
                       index_dir=Path(args.index_dir))
    train(params, paths, inference=inference)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

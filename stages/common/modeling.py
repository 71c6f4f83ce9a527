"""Model-loading helpers shared by train, eval and qa_gen: device/dtype choice, CPU threads, bitsandbytes.

Why one place: every stage that runs models/base must make the same choices (fp32 on CPU because bf16 there is
slow, bf16 on GPUs that support it, NF4 double-quant for QLoRA, no `device_map` under a multi-process launch),
or the trained adapter and the evaluated model silently differ. torch/transformers are imported inside the
functions so light modules and tests can import this file for free.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.common.cli import StageError

log = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "4bit", "8bit")


def setup_cpu_threads(n: int | None = None) -> int:
    """Use every core we were given (or `n`): torch's default can be lower than the cores of a cgroup. Under a
    multi-process CPU launch each rank gets its share, so the ranks do not oversubscribe the cores."""
    import torch

    if not n:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = cores // world_size()
    torch.set_num_threads(max(1, n))
    return max(1, n)


def pick_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu' (MPS is left out: bitsandbytes and bf16 LoRA are unreliable there)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str) -> Any:
    """bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU (bf16 matmuls on CPU are ~10x slower here)."""
    import torch

    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def compute_context(device: str, autocast: str) -> Any:
    """bf16 autocast on CPU when `autocast` is "bf16" (fp32 weights, bf16 matmuls: ~1.8x per prefill on CPUs with
    AVX-512-BF16/AMX, measured in benchmarks/train_throughput.py); otherwise no change. GPUs run in their load dtype.

    Autocast state is per thread: enter it in the thread that runs the model (the streaming path runs generate in
    a worker thread)."""
    import contextlib

    import torch

    if device == "cpu" and autocast == "bf16":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def world_size() -> int:
    """Processes in this launch (`accelerate launch`/torchrun set WORLD_SIZE); 1 for a plain `python -m`."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def bnb_config(quantization: str, device: str) -> Any:
    """The BitsAndBytesConfig for `quantization` (none|4bit|8bit), or None; QLoRA recipe: NF4 + double quant."""
    import torch

    if quantization not in QUANTIZATIONS:
        raise StageError(f"train.quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    if quantization == "none":
        return None
    try:
        import bitsandbytes  # noqa: F401  - fail here with one clear line, not deep inside from_pretrained
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise StageError(f"quantization={quantization} needs bitsandbytes ({exc}); pip install bitsandbytes "
                         "or set train.quantization=none") from None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def load_tokenizer(model_dir: str | Path) -> Any:
    """The tokenizer of a plain HF model dir, with a pad token (eos when the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model_dir: str | Path, quantization: str = "none", device: str | None = None) -> Any:
    """Load models/base (or any plain HF dir) for training or inference, optionally bitsandbytes-quantized.

    Unquantized models load on CPU and the Trainer / caller moves them; quantized ones must be placed at load
    time: on the local rank's GPU under a multi-process launch, `auto` for one process, CPU without a GPU.
    """
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise StageError(f"no model at {model_dir} (config.json missing): run `python -m stages.base_model` first")
    device = device or pick_device()
    kwargs: dict[str, Any] = {"dtype": pick_dtype(device)}
    quant = bnb_config(quantization, device)
    if quant is not None:
        kwargs["quantization_config"] = quant
        if device == "cuda":
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))} if world_size() > 1 else "auto"
        else:
            kwargs["device_map"] = {"": "cpu"}
    log.info("loading %s (quantization=%s, device=%s, dtype=%s)", model_dir, quantization, device, kwargs["dtype"])
    return AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)


def stop_token_ids(model_or_generation_config: Any, tokenizer: Any) -> list[int]:
    """Every token generation must stop on: the generation config's eos_token_id (an int or a list: Gemma's
    <eos> + <end_of_turn>, Llama-3's <|end_of_text|> + <|eom_id|> + <|eot_id|>), the tokenizer's eos, and the
    end-of-turn token the chat template closes an assistant turn with. Passing only `tokenizer.eos_token_id` to
    generate() overrides the list, and a Gemma answer then runs on past its turn."""
    from stages.common.chat_templates import current_template, has_generation_markers, turn_end_token_ids

    config = getattr(model_or_generation_config, "generation_config", model_or_generation_config)
    eos = getattr(config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list | tuple) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if has_generation_markers(current_template(tokenizer)):
        try:
            ids.update(turn_end_token_ids(tokenizer))
        except StageError as exc:  # a template whose mask cannot be read: the config's stops still hold
            log.debug("no end-of-turn token from the chat template: %s", exc)
    return sorted(int(i) for i in ids)


def generation_config_for(model: Any, tokenizer: Any, **settings: Any) -> Any:
    """A GenerationConfig with `settings` (max_new_tokens, do_sample, ...) that stops on every stop token of the
    model (`stop_token_ids`) and pads with the tokenizer's pad token; shared by eval, ask, chat and serve."""
    from transformers import GenerationConfig

    return GenerationConfig(eos_token_id=stop_token_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id,
                            **settings)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped longest first, so each batch holds sequences of similar length (less padding, fewer wasted
    FLOPs) and the largest batch comes first (an out-of-memory shows at once, not at the end)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    size = max(1, batch_size)
    return [order[i:i + size] for i in range(0, len(order), size)]

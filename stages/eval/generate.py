"""Model loading and batched greedy generation through the chat template.

One model object serves both sides of the comparison: the tuned model is base + adapter, and the base answers
come from the same object under `disable_adapter()`, so the weights are loaded once and both sides see exactly the
same prompts, padding and decoding settings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.common.cli import StageError
from stages.common.progress import progress

log = logging.getLogger(__name__)


def load_tokenizer(base_dir: Path, adapter_dir: Path) -> Any:
    """The adapter's tokenizer if it saved one (train may add tokens or a template), else the base's; left padding."""
    from transformers import AutoTokenizer

    source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise StageError(f"tokenizer in {source} has no chat template; eval prompts through the chat format")
    return tokenizer


def load_model(base_dir: Path, adapter_dir: Path, device: str, quantization: str = "none") -> Any:
    """Base weights (loaded the way train loads them, stages.common.modeling) + the peft adapter, in eval mode."""
    from peft import PeftModel

    from stages.common.modeling import load_causal_lm

    for path, what in ((base_dir, "base model"), (adapter_dir, "adapter")):
        if not path.is_dir():
            raise StageError(f"{what} not found at {path} (run `dvc repro base_model train` first)")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise StageError(f"{adapter_dir} holds no adapter_config.json: not a peft adapter")
    base = load_causal_lm(base_dir, quantization, device)
    model = PeftModel.from_pretrained(base, adapter_dir)
    if quantization == "none":  # quantized weights were placed at load time and cannot be moved
        model.to(device)
    model.eval()
    return model


def chat_prompt(tokenizer: Any, question: str, system: str | None) -> str:
    """The prompt text the model saw in training: optional system turn, user turn, assistant header."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped longest first, so each batch pads to similar lengths (less wasted compute)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    size = max(1, batch_size)
    return [order[i:i + size] for i in range(0, len(order), size)]


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int, max_new_tokens: int,
                     repetition_penalty: float, max_prompt_tokens: int, desc: str = "generate") -> list[str]:
    """Greedy answers for `prompts`, in input order; prompts longer than the cap lose their start, not their end."""
    import torch

    from stages.common.modeling import generation_config_for

    if not prompts:
        return []
    tokenizer.truncation_side = "left"  # keep the question's end and the assistant header
    encoded = [tokenizer(p, add_special_tokens=False, truncation=True, max_length=max_prompt_tokens)["input_ids"]
               for p in prompts]
    config = generation_config_for(model, tokenizer, max_new_tokens=max_new_tokens, do_sample=False,
                                   repetition_penalty=repetition_penalty)  # stops on every stop token
    device = next(model.parameters()).device
    answers: list[str] = [""] * len(prompts)
    batches = length_sorted_batches([len(ids) for ids in encoded], batch_size)
    for batch in progress(batches, desc=desc, unit="batch"):
        padded = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, padding=True, return_tensors="pt")
        padded = {k: v.to(device) for k, v in padded.items()}
        with torch.inference_mode():
            out = model.generate(**padded, generation_config=config)
        new_tokens = out[:, padded["input_ids"].shape[1]:]
        for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
            answers[i] = text.strip()
    return answers

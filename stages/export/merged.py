"""Merge the LoRA adapter into its base and save a plain safetensors model in the base's own dtype."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from stages.common.cli import StageError

log = logging.getLogger(__name__)


def merge_adapter(base_dir: Path, adapter_dir: Path) -> tuple[Any, Any]:
    """(merged model, tokenizer): the adapter folded into the weights, so no runtime needs peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (base_dir / "config.json").is_file():
        raise StageError(f"no base model at {base_dir}: run `dvc repro base_model` first")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise StageError(f"no adapter at {adapter_dir}: run `dvc repro train` first")
    # dtype="auto": the dtype the base was saved in (the model's own), not whatever this machine prefers.
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto")
    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    model.eval()
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    log.info("merged %s into %s (%s, %.1fM parameters)", adapter_dir, base_dir, model.dtype,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model, tokenizer


def save_merged(model: Any, tokenizer: Any, out_dir: Path) -> None:
    """safetensors (sharded as transformers does) plus the tokenizer and its chat template."""
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))

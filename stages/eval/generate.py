"""Model loading for eval: base + adapter in one object.

One model object serves both sides of the comparison: the tuned model is base + adapter, and the base answers
come from the same object under `disable_adapter()` (stages.common.inference.Assistant.base_only), so the weights
are loaded once and both sides see exactly the same prompts, padding and decoding settings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from stages.common.cli import StageError

log = logging.getLogger(__name__)


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

"""Memory helpers for training: peak host/GPU memory figures and QLoRA adapter precision on CPU."""

from __future__ import annotations

import resource
from typing import Any


def peak_memory() -> dict[str, float]:
    import torch

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def adapters_to_fp32(model: Any) -> None:
    """trl casts QLoRA adapters to bf16, which CPUs without bf16 matmuls run ~10x slower: train them in fp32."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.float()

"""Prove a GGUF file holds the merged model: load it back with transformers and compare next-token logits.

Every position of every fixed prompt is compared (top-1 token and max |logit difference|), with the token ids
from the merged model's tokenizer fed to both, so the figures measure the weights alone; the GGUF's own
tokenizer is checked separately (same ids for the same prompts).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def prompt_ids(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """Each prompt as the chat-formatted user turn the served model sees, plus the assistant header."""
    out = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def logits_for(model: Any, ids: list[list[int]]) -> list[Any]:
    import torch

    with torch.inference_mode():
        return [model(torch.tensor([row])).logits[0].float() for row in ids]


def compare_logits(reference: list[Any], candidate: list[Any]) -> dict[str, Any]:
    """max/mean |diff| over all logits, and how often the argmax token agrees (all positions of all prompts)."""
    import torch

    max_diff, total_diff, n_logits, agree, n_pos = 0.0, 0.0, 0, 0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        diff = (ref - cand).abs()
        max_diff = max(max_diff, float(diff.max()))
        total_diff += float(diff.sum())
        n_logits += diff.numel()
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        n_pos += ref.shape[0]
    return {"max_abs_diff": round(max_diff, 6), "mean_abs_diff": round(total_diff / max(n_logits, 1), 6),
            "top1_agreement": round(agree / max(n_pos, 1), 6), "positions": n_pos,
            "finite": bool(all(torch.isfinite(c).all() for c in candidate))}


def check_gguf(gguf_path: Path, tokenizer: Any, reference: list[Any], ids: list[list[int]],
               prompts: list[str]) -> dict[str, Any]:
    """Load `gguf_path` with transformers (dequantized to fp32) and compare it with the reference logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    result = compare_logits(reference, logits_for(model, ids))
    gguf_tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    plain = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    theirs = [gguf_tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    result["tokenizer_agreement"] = round(sum(a == b for a, b in zip(plain, theirs, strict=True)) / len(prompts), 6)
    result["chat_template_kept"] = bool(gguf_tokenizer.chat_template)
    del model
    log.info("%s: top-1 agreement %.4f, max |dlogit| %.4g, tokenizer agreement %.2f", name,
             result["top1_agreement"], result["max_abs_diff"], result["tokenizer_agreement"])
    return result

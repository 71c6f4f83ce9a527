"""Multiple-choice accuracy by option log-likelihood, with options shuffled per item by a seed.

The model never sees the options listed, so the score is "which answer does the model find likeliest after the
question". Shuffling (seeded per item) keeps a set written with the right answer always first from rewarding a
position bias. Three choices are reported: summed log-likelihood (favours short options), per token and per
character (length-normalised, lm-eval-harness's acc / acc_norm idea).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

NORMS = ("sum", "token", "char")


@dataclass(frozen=True)
class McqItem:
    item_id: str
    question: str
    options: list[tuple[str, str]]  # (option id, text), in the shuffled order the model is scored in
    answer: str  # the correct option id
    project: str
    source: str = ""  # `checked_against`: the document that answers it, <owner>__<repo>/<path>


def parse_options(raw: Any) -> list[tuple[str, str]]:
    """Options as a list of {id, text} objects or an {id: text} mapping; ids are kept as strings."""
    if isinstance(raw, dict):
        return [(str(k), str(v)) for k, v in sorted(raw.items())]
    if isinstance(raw, list) and all(isinstance(o, dict) and "id" in o and "text" in o for o in raw):
        return [(str(o["id"]), str(o["text"])) for o in raw]
    raise ValueError("options must be a list of {id, text} or a mapping id -> text")


def parse_item(record: dict[str, Any], seed: int) -> McqItem:
    """Validate one MCQ row and shuffle its options with a per-item seed (stable across runs and set order)."""
    options = parse_options(record.get("options"))
    answer = str(record.get("answer", ""))
    item_id = str(record.get("id") or record.get("qa_id") or "")
    question = str(record.get("question") or "").strip()
    if not item_id or not question:
        raise ValueError("MCQ row needs an id and a question")
    if len(options) < 2 or len({oid for oid, _ in options}) != len(options):
        raise ValueError("MCQ row needs at least two options with distinct ids")
    if answer not in {oid for oid, _ in options}:
        raise ValueError(f"answer {answer!r} is not one of the option ids")
    random.Random(f"{seed}:{item_id}").shuffle(options)
    return McqItem(item_id, question, options, answer, str(record.get("project") or "unknown"),
                   str(record.get("checked_against") or ""))


def choose(logprobs: Sequence[float], n_tokens: Sequence[int], options: Sequence[str], norm: str) -> int:
    """Index of the likeliest option under one normalisation; ties go to the earlier (shuffled) position."""
    if norm == "sum":
        values = list(logprobs)
    elif norm == "token":
        values = [lp / max(1, n) for lp, n in zip(logprobs, n_tokens, strict=True)]
    elif norm == "char":
        values = [lp / max(1, len(text)) for lp, text in zip(logprobs, options, strict=True)]
    else:
        raise ValueError(f"unknown normalisation {norm!r}")
    return max(range(len(values)), key=lambda i: (values[i], -i))


def item_correct(item: McqItem, scores: Sequence[tuple[float, int]]) -> dict[str, int]:
    """1/0 correctness of one item under each normalisation, from (sum logprob, n tokens) per option."""
    logprobs = [s for s, _ in scores]
    counts = [n for _, n in scores]
    texts = [text for _, text in item.options]
    right = [oid for oid, _ in item.options].index(item.answer)
    return {norm: int(choose(logprobs, counts, texts, norm) == right) for norm in NORMS}


def score_continuations(model: Any, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]],
                        max_tokens: int = 0) -> list[tuple[float, int]]:
    """(sum log p, n tokens) of each continuation after one shared prompt, reading the prompt once.

    The prompt's KV cache is computed once and shared by all options, so a 500-token retrieval prompt with four
    options costs one prompt pass instead of four (the options are scored exactly as in separate passes)."""
    import torch
    import torch.nn.functional as F

    if max_tokens > 0:
        longest = max((len(c) for c in continuations), default=0)
        prompt_ids = list(prompt_ids)[-max(1, max_tokens - longest):]
    device = next(model.parameters()).device
    with torch.inference_mode():
        # only the prompt's last position predicts anything here: the LM head runs on that one position
        prefix = model(input_ids=torch.tensor([list(prompt_ids)], device=device), use_cache=True, logits_to_keep=1)
        last_logits = prefix.logits[0, -1].float()
        results = []
        for cont in continuations:
            if not cont:
                results.append((0.0, 0))
                continue
            cache = _copy_cache(prefix.past_key_values)
            out = model(input_ids=torch.tensor([list(cont)], device=device), past_key_values=cache, use_cache=True)
            logits = torch.cat([last_logits[None], out.logits[0, :-1].float()], dim=0)
            nll = F.cross_entropy(logits, torch.tensor(list(cont), device=device), reduction="sum")
            results.append((-float(nll), len(cont)))
    return results


def _copy_cache(cache: Any) -> Any:
    import copy

    return copy.deepcopy(cache)


def score_items_shared_prefix(model: Any, tokenizer: Any, prompts: Sequence[str], items: Sequence[McqItem], *,
                              max_tokens: int, desc: str) -> list[dict[str, int]]:
    """Correctness per item, each item's options scored after its own prompt (closed-book or with excerpts)."""
    from stages.common.progress import progress

    out = []
    for prompt, item in progress(list(zip(prompts, items, strict=True)), desc=desc, unit="item"):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        conts = [tokenizer(text, add_special_tokens=False)["input_ids"] for _, text in item.options]
        out.append(item_correct(item, score_continuations(model, prompt_ids, conts, max_tokens)))
    return out

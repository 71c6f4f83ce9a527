"""Log-likelihood of chosen tokens under a model: reference-answer perplexity and MCQ option scores.

Perplexity counts the assistant tokens only (the `{% generation %}` span of the chat template): the prompt is the
same for both models and would only dilute the difference the fine-tuning made.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from stages.common.modeling import length_sorted_batches
from stages.common.progress import progress

log = logging.getLogger(__name__)

Scored = tuple[list[int], list[int]]  # token ids, 0/1 mask of the tokens whose log-likelihood counts


def assistant_sequence(tokenizer: Any, messages: list[dict[str, str]]) -> Scored:
    """Token ids of a whole chat record and the mask of its assistant tokens.

    Uses the template's generation markers; a template without them falls back to "everything after the
    prompt with the assistant header", which is the same span for ChatML-style templates.
    """
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids = list(enc["input_ids"])
    mask = list(enc.get("assistant_masks") or [])
    if len(mask) == len(ids) and any(mask):
        return ids, [int(m) for m in mask]
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if ids[:len(prompt_ids)] != prompt_ids:
        log.debug("chat template prompt is not a token prefix of the full record; masking by length anyway")
    n_prompt = min(len(prompt_ids), len(ids))
    return ids, [0] * n_prompt + [1] * (len(ids) - n_prompt)


def continuation_sequence(tokenizer: Any, prompt: str, continuation: str) -> Scored:
    """A prompt followed by a continuation whose tokens alone are scored (an MCQ option after its question)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    cont_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    return list(prompt_ids) + list(cont_ids), [0] * len(prompt_ids) + [1] * len(cont_ids)


def truncate_left(seq: Scored, max_tokens: int) -> Scored:
    """Keep the last `max_tokens`: the scored tokens sit at the end, the prompt can lose its start."""
    ids, mask = seq
    if max_tokens > 0 and len(ids) > max_tokens:
        return ids[-max_tokens:], mask[-max_tokens:]
    return ids, mask


def masked_logprobs(model: Any, sequences: Sequence[Scored], *, pad_id: int, batch_size: int,
                    max_tokens: int = 0, desc: str = "score") -> list[tuple[float, int]]:
    """(sum of log p(token | prefix), number of scored tokens) per sequence, in input order."""
    import torch
    import torch.nn.functional as F

    seqs = [truncate_left(s, max_tokens) for s in sequences]
    results: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    device = next(model.parameters()).device
    for batch in progress(length_sorted_batches([len(s[0]) for s in seqs], batch_size), desc=desc, unit="batch"):
        width = max(len(seqs[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        scored = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, i in enumerate(batch):  # right padding: positions stay those of an unpadded run
            n = len(seqs[i][0])
            ids[row, :n] = torch.tensor(seqs[i][0])
            attn[row, :n] = 1
            scored[row, :n] = torch.tensor(seqs[i][1], dtype=torch.bool)
        # The LM head (a 49k-262k vocabulary) runs only from the position before the batch's first scored token:
        # a retrieval prompt is ~10x longer than the reference it conditions, and its own logits are never read.
        first = min((int(row.nonzero()[0]) for row in scored if row.any()), default=1)
        start = max(first - 1, 0)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device),
                           logits_to_keep=width - start).logits.float()
            # token t is predicted from position t-1; the first token of a sequence has no prediction
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, start + 1:].to(device), reduction="none")
        target_mask = scored[:, start + 1:].to(device)
        sums = -(nll * target_mask).sum(dim=1)
        counts = target_mask.sum(dim=1)
        for row, i in enumerate(batch):
            results[i] = (float(sums[row]), int(counts[row]))
    return results


def perplexity(scores: Sequence[tuple[float, int]]) -> float:
    """Token-weighted perplexity over many sequences: exp(total NLL / total scored tokens)."""
    total_tokens = sum(n for _, n in scores)
    if total_tokens == 0:
        return math.nan
    return math.exp(-sum(s for s, _ in scores) / total_tokens)

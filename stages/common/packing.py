"""Packed training batches: BFD-packed rows collated with per-example positions, and a real-token counter.

Why here and not in trl: trl's padding-free layout flattens a batch into one row, which costs (B*L)^2 attention on
hardware without varlen flash-attention; these collators keep one row per packed bin. Shared by train and the
throughput benchmark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stages.common.schema import TrainParams


class RowPackedCollator:
    """Collate BFD-packed bins as separate rows: positions restart at every packed example and no attention_mask
    is sent, so transformers builds a block-diagonal causal mask per row (no attention across examples).

    Why not trl's padding-free layout: it flattens the whole batch into ONE row, which costs (B*L)^2 attention
    instead of B*L^2 -- 8x at batch 8 -- on hardware without varlen flash-attention (every CPU).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        position_ids = torch.zeros((len(examples), width), dtype=torch.long)  # pads: one-token "sequences"
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            lengths = example.get("seq_lengths") or [n]
            input_ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            position_ids[row, :n] = torch.cat([torch.arange(k) for k in lengths])
        labels[position_ids == 0] = -100  # never predict an example's first token from the previous example
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


class CountingCollator:
    """Wrap the batch collator to count real (non-pad) tokens per batch, in the order the trainer draws them.

    trl's own `num_tokens` counts one row of a position_ids batch; and the dataloader fetches a batch ahead, so
    the throughput callback sums only the batches of the optimizer steps done so far."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.counts: list[int] = []

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        self.counts.append(sum(len(e["input_ids"]) for e in examples))
        return self.inner(examples)


def choose_collator(params: TrainParams, tokenizer: Any, trl_collator: Any) -> Any:
    """packing + layout rows: RowPackedCollator; layout flat: trl's one-row padding-free batches (best with
    flash-attention varlen kernels on GPU); no packing: trl's padded batches. (The schema allows rows | flat.)"""
    if params.packing and params.packing_layout == "rows":
        return RowPackedCollator(tokenizer.pad_token_id)
    return trl_collator

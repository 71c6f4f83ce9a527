"""Trainer callbacks of the train stage: real-token throughput and dvclive logging (rank 0 only)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

LIVE_METRICS = {"loss", "learning_rate", "grad_norm", "tokens_per_second", "num_tokens", "mean_token_accuracy",
                "entropy"}


def make_callbacks(live_dir: Path, resume: bool, counter: Any, grad_accum: int,
                   world_size: int) -> tuple[Any, Any]:
    """Throughput (real tokens/s from the counting collator) and dvclive logging, rank 0 only.

    dvclive continues its plots on a resumed run and starts them afresh otherwise."""
    from transformers import TrainerCallback

    class Throughput(TrainerCallback):
        def __init__(self) -> None:
            self.start = self.last_time = time.perf_counter()
            self.start_step = 0
            self.last_tokens = 0.0
            self.train_seconds = 0.0

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.start = self.last_time = time.perf_counter()
            self.start_step = state.global_step  # > 0 on a resumed run
            counter.counts.clear()  # batches of the baseline eval are not training

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if not logs or "loss" not in logs:
                return
            now = time.perf_counter()
            batches = (state.global_step - self.start_step) * grad_accum
            tokens = float(sum(counter.counts[:batches]) * world_size)
            logs["num_tokens"] = tokens  # replaces trl's count, which misses rows of position_ids batches
            if tokens > self.last_tokens and now > self.last_time:
                logs["tokens_per_second"] = round((tokens - self.last_tokens) / (now - self.last_time), 2)
            self.last_tokens, self.last_time = tokens, now
            self.train_seconds = now - self.start

        @property
        def tokens_per_second(self) -> float:
            return self.last_tokens / self.train_seconds if self.train_seconds > 0 else 0.0

    class LiveLogger(TrainerCallback):
        def __init__(self) -> None:
            self.live: Any = None

        def _open(self) -> Any:
            if self.live is None:
                from dvclive import Live

                self.live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None, resume=resume)
            return self.live

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if not logs or not state.is_world_process_zero:
                return
            live = self._open()
            live.step = state.global_step
            for key in sorted(logs):
                value = logs[key]
                name = key.removeprefix("eval_")
                if name in LIVE_METRICS and isinstance(value, int | float) and math.isfinite(value):
                    live.log_metric(f"{'eval' if key.startswith('eval_') else 'train'}/{name}", value)
            live.make_summary()

        def close(self) -> None:
            if self.live is not None:
                self.live.end()

    return Throughput(), LiveLogger()

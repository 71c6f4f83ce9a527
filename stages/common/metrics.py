"""Per-stage counters that end up in metrics/<stage>.json (counts, drops by reason, errors by kind, speed)."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.common.jsonl import write_json

METRICS_DIR = Path("metrics")


class StageMetrics:
    """Counters plus a wall clock; `as_dict()` nests counters by their dotted prefix."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.counts: Counter[str] = Counter()
        self.values: dict[str, Any] = {}
        self._start = time.perf_counter()

    def inc(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in sorted(self.counts):
            _nested_set(out, key, self.counts[key])
        for key in sorted(self.values):
            _nested_set(out, key, self.values[key])
        # Timings make the file differ between identical runs; that is fine for metrics (cache: false, git-tracked).
        out["wall_seconds"] = round(self.elapsed, 3)
        return out

    def write(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path else METRICS_DIR / f"{self.stage}.json"
        write_json(path, self.as_dict())
        return path


def _nested_set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):  # a counter and a group share a name: keep both readable
            child = node[part] = {"total": child}
        node = child
    if isinstance(node.get(leaf), dict):
        node[leaf]["total"] = value
    else:
        node[leaf] = value


@contextlib.contextmanager
def recorded_failure(metrics: StageMetrics, path: str | Path | None = None) -> Iterator[StageMetrics]:
    """Write the stage's metrics, with the error, when the block fails; then let the error go on.

    Outputs are written atomically at the end of each stage, so a failure inside the block leaves the previous
    run's outputs as they were; the metrics file says what happened and how far the run got.
    """
    try:
        yield metrics
    except BaseException as exc:
        message = " ".join(str(exc).split())[:500] or type(exc).__name__
        metrics.set("failed", {"error": type(exc).__name__, "message": message})
        metrics.write(path)
        raise

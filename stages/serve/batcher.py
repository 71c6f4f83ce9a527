"""Dynamic batching: requests that arrive together share one `Assistant.answer_batch` call.

The first request of an idle server waits up to `window_s` for company; while a batch runs, new requests
queue and the next batch takes all of them (up to `max_batch`) at once. Only requests with the same
generation options, retrieval switch and k can share a generate call, so the queue is grouped by that key.
The queue is bounded: `try_acquire` fails once `max_queue` requests (queued, running or streaming) are in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from stages.common.inference import Answer, GenerationOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchKey:
    """What requests must share to go through one generate call."""

    closed_book: bool
    k: int | None
    options: GenerationOptions


@dataclass
class Job:
    conversation: list[dict[str, str]]
    key: BatchKey
    future: asyncio.Future[Answer]
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    largest: int = 0
    rejected: int = 0


class Batcher:
    def __init__(self, answer_batch: Callable[..., list[Answer]], *, max_batch: int = 8, window_s: float = 0.02,
                 max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 1 or window_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and the window >= 0")
        self.answer_batch = answer_batch
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_queue = max_queue
        self.pending: deque[Job] = deque()
        self.in_system = 0  # queued + running + streaming: what the bound counts
        self.stats = BatchStats()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-generate")

    # -------------------------------------------------------------- slots
    def try_acquire(self) -> bool:
        if self.in_system >= self.max_queue:
            self.stats.rejected += 1
            return False
        self.in_system += 1
        return True

    def release(self) -> None:
        self.in_system = max(0, self.in_system - 1)

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -------------------------------------------------------------- requests
    async def submit(self, conversation: list[dict[str, str]], key: BatchKey) -> Answer:
        """Queue one request (its slot already acquired) and wait for its answer; frees the slot."""
        assert self._wakeup is not None, "Batcher.start() was not called"
        job = Job(conversation, key, asyncio.get_running_loop().create_future())
        self.pending.append(job)
        self._wakeup.set()
        try:
            return await job.future
        finally:
            self.release()

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            if len(self.pending) < self.max_batch and self.window_s > 0:
                await asyncio.sleep(self.window_s)  # let the requests arriving with this one join it
            batch = self._take_batch()
            if not batch:
                continue
            key = batch[0].key
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            try:
                call = functools.partial(self.answer_batch, [j.conversation for j in batch],
                                         closed_book=key.closed_book, k=key.k, options=key.options)
                answers = await loop.run_in_executor(self._executor, call)
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
                log.exception("batch of %d failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, answer in zip(batch, answers, strict=True):
                if not job.future.done():
                    job.future.set_result(answer)

    def _take_batch(self) -> list[Job]:
        """Up to max_batch waiting jobs sharing the oldest job's key, in arrival order; abandoned ones dropped."""
        while self.pending and self.pending[0].future.done():
            self.pending.popleft()
        if not self.pending:
            return []
        key = self.pending[0].key
        batch, rest = [], deque()
        while self.pending:
            job = self.pending.popleft()
            if job.future.done():
                continue
            if job.key == key and len(batch) < self.max_batch:
                batch.append(job)
            else:
                rest.append(job)
        self.pending = rest
        return batch

"""Bounded work in process pools: a per-item time budget, and workers that never outlive their stage.

Why: one pathological input (a markup file, a PDF) must cost a counted `timeout`, not a hung stage; and a
killed stage must not leave pool workers running as orphans.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import signal
import sys
import threading
from collections.abc import Iterator

PR_SET_PDEATHSIG = 1


class TimeBudgetExceeded(Exception):  # noqa: N818 - reads as the event it reports
    """The item ran past its time budget."""


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Raise TimeBudgetExceeded inside the block after `seconds` of wall time (SIGALRM; main thread only).

    Python-level work (markdown-it, pypdf, lxml callbacks) is interrupted at the next bytecode; elsewhere (a
    non-main thread, no SIGALRM) the block simply runs unbounded.
    """
    usable = seconds > 0 and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise TimeBudgetExceeded(f"over the {seconds:g}s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def die_with_parent() -> None:
    """Pool initializer: the kernel kills this worker when its parent dies, even by SIGKILL (Linux), and SIGTERM
    kills it outright.

    Why SIGTERM goes back to its default: a forked worker inherits run_cli's Python-level SIGTERM handler, and
    Python runs such a handler only between bytecodes. `Pool.terminate()` takes the task queue's lock and then
    SIGTERMs the idle workers; a signal that lands just before a worker blocks on that lock wakes nothing, and the
    parent waits for the worker forever. This hung `dvc repro` at the end of unify (seen in CI; reproduced here)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it terminates the pool
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

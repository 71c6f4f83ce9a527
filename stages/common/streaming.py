"""Token streams for the user-facing entry points (serve, chat, app): cancellable, and trimmed so the streamed
text is exactly the final `Answer.text`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from stages.common.inference import Answer, GenerationOptions


def cancellable_stream(assistant: Any, conversation: list[dict[str, str]], *, closed_book: bool, k: int | None,
                       options: GenerationOptions, cancel: threading.Event) -> Iterator[str | Answer]:
    """Text deltas, then the final Answer; raises StreamCancelled when `cancel` was set mid-generation."""
    return assistant.stream(conversation, closed_book=closed_book, k=k, options=options, cancel=cancel)


def trimmed(stream: Iterator[str | Answer]) -> Iterator[str | Answer]:
    """The deltas without leading and trailing whitespace, so the streamed text is exactly the final
    `Answer.text` (which the core strips); closing this closes (and cancels) the inner stream."""
    started, pending = False, ""
    try:
        for item in stream:
            if isinstance(item, Answer):
                yield item
                continue
            if not started:
                item = item.lstrip()
                if not item:
                    continue
                started = True
            text = pending + item
            body = text.rstrip()
            pending = text[len(body):]
            if body:
                yield body
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()

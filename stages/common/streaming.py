"""A token stream from the inference core that stops generating when its reader goes away (serve, chat, app).

`Assistant.stream` cannot be told to stop: a client that disconnects would leave `generate` running to
max_tokens while holding the model. This runs the same steps as `Assistant.stream` (same retrieval, prompt,
decoding and final Answer) with a streamer that raises once `cancel` is set, which ends `generate` at the next
token. It reaches into the Assistant's `_encode/_generate_tensors/_decode/_lock`; if the core grows a cancel
hook this module shrinks to a call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from stages.common.inference import Answer, GenerationOptions


class StreamCancelled(Exception):
    """Raised inside generate() by the streamer once the client is gone."""


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str | None:
    positions = [text.find(s) for s in stops if s and s in text]
    return text[:min(positions)] if positions else None


def cancellable_stream(assistant: Any, conversation: list[dict[str, str]], *, closed_book: bool, k: int | None,
                       options: GenerationOptions, cancel: threading.Event) -> Iterator[str | Answer]:
    """Text deltas, then the final Answer; raises StreamCancelled when `cancel` was set mid-generation."""
    from transformers import TextIteratorStreamer

    class Streamer(TextIteratorStreamer):
        def put(self, value: Any) -> None:
            if cancel.is_set():
                raise StreamCancelled()
            super().put(value)

    question = conversation[-1]["content"]
    sources = [] if closed_book else assistant.retrieve(question, k)
    prompt = assistant.build_prompt(conversation, sources)
    encoded = assistant._encode([prompt])
    streamer = Streamer(assistant.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=None)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            with assistant._lock:
                result["out"] = assistant._generate_tensors(encoded, options, streamer=streamer)
        except BaseException as exc:  # noqa: BLE001 - surfaced in the caller's thread below
            result["error"] = exc
        finally:
            streamer.end()

    thread = threading.Thread(target=run, name="stream-generate", daemon=True)
    thread.start()
    emitted = ""
    try:
        for delta in streamer:
            cut = cut_at_stop(emitted + delta, options.stop)
            if cut is not None:
                if len(cut) > len(emitted):
                    yield cut[len(emitted):]
                emitted = cut
                break
            emitted += delta
            if delta:
                yield delta
    except GeneratorExit:  # the consumer went away (client disconnected): end generate at the next token
        cancel.set()
        thread.join()
        raise
    thread.join()  # a stop string ends generate by itself (GenerationConfig.stop_strings)
    if "error" in result:
        raise result["error"]
    text, n_in, n_out, finish = assistant._decode(encoded, result["out"], options)[0]
    yield Answer(text=text, sources=list(sources), closed_book=closed_book, prompt_tokens=n_in,
                 completion_tokens=n_out, finish_reason=finish)


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

"""The FastAPI app: GET /health, GET /v1/models, POST /v1/chat/completions (JSON or server-sent events).

Answers are the inference core's: `content` is the answer text plus `format_sources` (numbered links for plain
clients) and the extra field `sources` lists them as data. Errors use the OpenAI shape with 4xx codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from stages.common.inference import Answer, GenerationOptions, StreamCancelled, format_sources
from stages.common.streaming import cancellable_stream, trimmed
from stages.serve.batcher import Batcher, BatchKey
from stages.serve.schema import ChatRequest, ServeError, validation_message

log = logging.getLogger(__name__)

API_KEY_ENV = "CNCF_LLM_API_KEY"


@dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 8              # requests per generate call (1 = one at a time)
    batch_window_ms: float = 20.0   # how long the first request of an idle server waits for company
    max_queue: int = 64             # requests in the server (queued + running + streaming) before 503
    max_tokens_limit: int = 1024    # largest max_tokens a request may ask for
    max_body_bytes: int = 1_000_000
    max_message_chars: int = 16_000  # per message
    max_messages: int = 64
    retry_after_s: int = 1


def create_app(assistant: Any, config: ServeConfig = ServeConfig(), api_key: str | None = None) -> Any:
    """The app over a loaded Assistant. `api_key` (else $CNCF_LLM_API_KEY) makes /v1/* require Bearer auth."""
    key = (api_key if api_key is not None else os.environ.get(API_KEY_ENV)) or None  # "" = no key
    batcher = Batcher(assistant.answer_batch, max_batch=config.max_batch,
                      window_s=config.batch_window_ms / 1000, max_queue=config.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="cncf-llm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.state.streams_cancelled = 0
    app.state.api_key_required = key is not None

    @app.exception_handler(ServeError)
    async def _serve_error(_request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed: %s", type(exc).__name__)
        return JSONResponse(ServeError(500, f"internal error ({type(exc).__name__})").body(), 500)

    @app.exception_handler(404)
    async def _not_found(request: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse(ServeError(404, f"no route {request.method} {request.url.path}").body(), 404)

    @app.exception_handler(405)
    async def _not_allowed(request: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse(ServeError(405, f"{request.method} not allowed on {request.url.path}").body(), 405)

    def check_auth(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ServeError(401, "invalid or missing API key (Authorization: Bearer ...)", code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": assistant.name, "versions": assistant.versions,
                "retrieval": getattr(assistant, "retriever", None) is not None,
                "in_flight": batcher.in_system, "max_queue": config.max_queue,
                "batches": batcher.stats.batches, "batched_requests": batcher.stats.requests,
                "largest_batch": batcher.stats.largest, "rejected": batcher.stats.rejected}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_auth(request)
        return {"object": "list", "data": [{"id": assistant.name, "object": "model", "created": 0,
                                            "owned_by": "cncf-llm", "versions": assistant.versions}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        check_auth(request)
        chat = await parse_request(request, assistant.name, config)
        conversation = [{"role": m.role, "content": m.text()} for m in chat.messages]
        options = GenerationOptions(
            max_new_tokens=chat.max_completion_tokens or chat.max_tokens or assistant.default_options().max_new_tokens,
            temperature=float(chat.temperature), top_p=float(chat.top_p), stop=chat.stop_tuple(), seed=chat.seed,
            repetition_penalty=assistant.default_options().repetition_penalty)
        if not batcher.try_acquire():
            raise ServeError(503, "the server is at capacity; retry shortly", code="overloaded",
                             headers={"Retry-After": str(config.retry_after_s)})
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if chat.stream:
            stream = sse_events(app, assistant, batcher, conversation, chat, options, completion_id, created)
            return EventSourceResponse(stream, ping=15, sep="\n")
        answer = await batcher.submit(conversation, BatchKey(chat.closed_book, chat.k, options))
        return completion_body(assistant.name, completion_id, created, answer)

    return app


async def parse_request(request: Request, model_name: str, config: ServeConfig) -> ChatRequest:
    """Body -> ChatRequest, or a ServeError naming what is wrong (size, JSON, types, model, messages)."""
    from pydantic import ValidationError

    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > config.max_body_bytes:
        raise ServeError(413, f"request body over {config.max_body_bytes} bytes")
    raw = await request.body()
    if len(raw) > config.max_body_bytes:
        raise ServeError(413, f"request body over {config.max_body_bytes} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServeError(400, f"malformed JSON body: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ServeError(400, "the body must be a JSON object", code="invalid_json")
    try:
        chat = ChatRequest.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise ServeError(400, message, param=param, code="invalid_value") from None
    if chat.model != model_name:
        raise ServeError(404, f"the model {chat.model!r} does not exist; this server serves {model_name!r}",
                         param="model", code="model_not_found")
    limit = chat.max_completion_tokens or chat.max_tokens
    if limit is not None and limit > config.max_tokens_limit:
        raise ServeError(400, f"max_tokens must be at most {config.max_tokens_limit}", param="max_tokens",
                         code="invalid_value")
    if len(chat.messages) > config.max_messages:
        raise ServeError(400, f"at most {config.max_messages} messages", param="messages", code="invalid_value")
    for i, message in enumerate(chat.messages):
        if len(message.text()) > config.max_message_chars:
            raise ServeError(400, f"messages[{i}] is over {config.max_message_chars} characters",
                             param=f"messages.{i}.content", code="invalid_value")
    last = chat.messages[-1]
    if last.role != "user" or not last.text().strip():
        raise ServeError(400, "the last message must be a non-empty user message", param="messages",
                         code="invalid_value")
    return chat


def answer_content(answer: Answer) -> str:
    return answer.text + format_sources(answer.sources)


def completion_body(model: str, completion_id: str, created: int, answer: Answer) -> dict[str, Any]:
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer_content(answer)},
                     "finish_reason": answer.finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                  "total_tokens": answer.prompt_tokens + answer.completion_tokens},
        "sources": [s.public() for s in answer.sources],
        "closed_book": answer.closed_book,
    }


def _chunk(model: str, completion_id: str, created: int, delta: dict[str, Any], finish: str | None = None,
           **extra: Any) -> dict[str, str]:
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
    return {"data": json.dumps(body, ensure_ascii=False)}


async def sse_events(app: Any, assistant: Any, batcher: Batcher, conversation: list[dict[str, str]],
                     chat: ChatRequest, options: GenerationOptions, completion_id: str,
                     created: int) -> AsyncIterator[dict[str, str]]:
    """Chunks as the model writes; on client disconnect generation stops and the slot is freed."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancel = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in trimmed(cancellable_stream(assistant, conversation, closed_book=chat.closed_book,
                                                   k=chat.k, options=options, cancel=cancel)):
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except StreamCancelled:
            app.state.streams_cancelled += 1
        except Exception as exc:  # noqa: BLE001 - reported to the client as the stream's last event
            log.exception("stream failed")
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, done)

    worker = threading.Thread(target=produce, name="stream", daemon=True)
    name = assistant.name
    try:
        worker.start()
        yield _chunk(name, completion_id, created, {"role": "assistant", "content": ""})
        while True:
            item = await queue.get()
            if item is done:
                break
            if isinstance(item, Exception):
                yield {"data": json.dumps(ServeError(500, f"generation failed: {type(item).__name__}").body())}
                break
            if isinstance(item, Answer):
                tail = format_sources(item.sources)
                if tail:
                    yield _chunk(name, completion_id, created, {"content": tail})
                usage = {"prompt_tokens": item.prompt_tokens, "completion_tokens": item.completion_tokens,
                         "total_tokens": item.prompt_tokens + item.completion_tokens}
                yield _chunk(name, completion_id, created, {}, item.finish_reason, usage=usage,
                             sources=[s.public() for s in item.sources], closed_book=item.closed_book)
                continue
            yield _chunk(name, completion_id, created, {"content": item})
        yield {"data": "[DONE]"}
    finally:  # normal end, or the client went away (cancelled: no await may run here)
        cancel.set()  # generate stops at its next token and frees the model
        batcher.release()

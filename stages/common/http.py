"""HTTP client shared by the network stages: bounded retries, backoff with jitter, rate limits, size caps.

Why not plain `requests.get`: GitHub and StackExchange both rate-limit (429/403 with Retry-After or
X-RateLimit-Reset), flake with 5xx, and sometimes cut bodies short. Every stage needs the same answers to
those, plus a fast, clear failure when the machine is offline, and no token ever in a log line.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from stages.common.cli import StageError

log = logging.getLogger(__name__)

RETRY_STATUSES = {500, 502, 503, 504}
ERROR_BODY_BYTES = 1 << 16


class HttpError(Exception):
    """A request that failed for good (after retries) or cannot succeed (404, too large)."""

    def __init__(self, message: str, status: int | None = None, kind: str = "http", body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.body = body  # the first bytes of an error response: APIs explain themselves there

    def json_body(self) -> Any:
        """The error body as JSON (StackExchange's `error_id`, GitHub's `message`), or None."""
        try:
            return json.loads(self.body.decode("utf-8", errors="replace")) if self.body else None
        except ValueError:
            return None


class OfflineError(StageError):
    """The host cannot be reached at all: stop at once and tell the user the offline alternative."""


@dataclass
class HttpClient:
    """A requests.Session with the retry policy every network stage needs.

    `offline_hint` names the offline alternative (mirror source, replay dir, local model path); it is the
    whole message a user sees when the first connection fails.
    """

    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 20.0
    connect_timeout: float = 5.0
    max_retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_rate_limit_wait: float = 900.0
    offline_hint: str = ""
    sleep: Callable[[float], None] = time.sleep
    stats: dict[str, int] = field(default_factory=dict)
    _session: requests.Session = field(default_factory=requests.Session, repr=False)
    _ever_connected: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._session.headers.update({"User-Agent": "cncf-llm/0.1 (+https://github.com/cncf/landscape)"})
        self._session.headers.update(self.headers)

    def _count(self, key: str) -> None:
        with self._lock:  # stages download with a thread pool through one client; `+= 1` on a dict races
            self.stats[key] = self.stats.get(key, 0) + 1

    def _backoff(self, attempt: int) -> float:
        delay = min(self.backoff_max, self.backoff_base * (2**attempt))
        return delay * (0.5 + random.random() / 2)  # jitter: never all clients at once

    def get(self, url: str, *, params: dict[str, Any] | None = None, max_bytes: int | None = None,
            headers: dict[str, str] | None = None) -> requests.Response:
        """GET with retries; the returned response's `.content` is complete (Content-Length checked)."""
        last_error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            self._count("requests")
            try:
                resp = self._session.get(url, params=params, headers=headers, stream=True,
                                         timeout=(self.connect_timeout, self.timeout))
            except (requests.ConnectionError, requests.Timeout) as exc:
                if not self._ever_connected and _is_unreachable(exc):
                    hint = f"; {self.offline_hint}" if self.offline_hint else ""
                    raise OfflineError(f"cannot reach {_host(url)} ({type(exc).__name__}){hint}") from None
                self._count("errors.timeout" if isinstance(exc, requests.Timeout) else "errors.connection")
                last_error = f"{type(exc).__name__}"
                self._wait(self._backoff(attempt), url, last_error)
                continue
            self._ever_connected = True
            status = resp.status_code
            if status in (403, 429) and _is_rate_limited(resp):
                self._count("rate_limited")
                wait = _rate_limit_wait(resp, self._backoff(attempt))
                if wait > self.max_rate_limit_wait:
                    raise HttpError(f"rate limited by {_host(url)} for {wait:.0f}s (over the {self.max_rate_limit_wait:.0f}s cap)",
                                    status, kind="rate_limit")
                last_error = f"HTTP {status} rate limit"
                resp.close()  # a streamed response holds its connection until closed
                self._wait(wait, url, last_error)
                continue
            if status in RETRY_STATUSES:
                self._count(f"errors.http_{status}")
                last_error = f"HTTP {status}"
                resp.close()
                self._wait(self._backoff(attempt), url, last_error)
                continue
            if status >= 400:
                self._count(f"errors.http_{status}")
                body = _read_error_body(resp)
                resp.close()
                raise HttpError(f"HTTP {status} for {url}", status, body=body)
            try:
                body = _read_body(resp, max_bytes)
            except HttpError:
                self._count("errors.too_large")
                raise
            except (requests.RequestException, ConnectionError) as exc:  # truncated body, reset mid-stream
                self._count("errors.truncated")
                last_error = f"truncated body ({type(exc).__name__})"
                self._wait(self._backoff(attempt), url, last_error)
                continue
            resp._content = body  # noqa: SLF001 - hand back a normal, fully read response
            self._count("ok")
            return resp
        raise HttpError(f"giving up on {url} after {self.max_retries + 1} attempts: {last_error}", kind="retries")

    def get_json(self, url: str, **kwargs: Any) -> Any:
        resp = self.get(url, **kwargs)
        try:
            return resp.json()
        except ValueError as exc:
            self._count("errors.bad_json")
            raise HttpError(f"malformed JSON from {url}: {exc}", resp.status_code, kind="bad_json") from None

    def _wait(self, seconds: float, url: str, reason: str) -> None:
        self._count("retries")
        log.warning("%s from %s; retrying in %.1fs", reason, _host(url), seconds)
        self.sleep(seconds)


def _host(url: str) -> str:
    return requests.utils.urlparse(url).netloc or url


def _is_unreachable(exc: Exception) -> bool:
    """DNS failure, refused connection or connect timeout: the host is not there, retrying will not help."""
    text = repr(exc)
    return isinstance(exc, requests.ConnectTimeout) or any(
        marker in text for marker in ("NameResolution", "Name or service not known", "Temporary failure in name",
                                      "Connection refused", "No route to host", "Network is unreachable",
                                      "nodename nor servname"))


def _is_rate_limited(resp: requests.Response) -> bool:
    if resp.status_code == 429:
        return True
    h = resp.headers
    return h.get("X-RateLimit-Remaining") == "0" or "Retry-After" in h or b"rate limit" in resp.content[:2000].lower()


def _rate_limit_wait(resp: requests.Response, fallback: float) -> float:
    h = resp.headers
    if "Retry-After" in h:
        try:
            return max(0.0, float(h["Retry-After"]))
        except ValueError:
            return fallback
    if h.get("X-RateLimit-Remaining") == "0" and "X-RateLimit-Reset" in h:
        try:
            return max(0.0, float(h["X-RateLimit-Reset"]) - time.time()) + 1.0
        except ValueError:
            return fallback
    return fallback


def _read_error_body(resp: requests.Response, limit: int = ERROR_BODY_BYTES) -> bytes:
    """Up to `limit` bytes of an error response; a body that breaks off is returned as far as it came."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in resp.iter_content(chunk_size=1 << 14):
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    except (requests.RequestException, ConnectionError):
        pass
    return b"".join(chunks)[:limit]


def _read_body(resp: requests.Response, max_bytes: int | None) -> bytes:
    announced = resp.headers.get("Content-Length")
    if max_bytes is not None and announced and announced.isdigit() and int(announced) > max_bytes:
        resp.close()
        raise HttpError(f"{resp.url} announces {announced} bytes, over the {max_bytes}-byte cap", resp.status_code,
                        kind="too_large")
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_content(chunk_size=1 << 16):
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            resp.close()
            raise HttpError(f"{resp.url} is over the {max_bytes}-byte cap", resp.status_code, kind="too_large")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoded = resp.headers.get("Content-Encoding")
    if announced and announced.isdigit() and not encoded and len(body) < int(announced):
        raise requests.exceptions.ChunkedEncodingError(f"got {len(body)} of {announced} bytes")
    return body

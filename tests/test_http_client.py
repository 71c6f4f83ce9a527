"""stages/common/http.py against the local fake server: retries, rate limits, caps, truncation, offline."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from stages.common.http import HttpClient, HttpError, OfflineError
from tests.fakes.github_server import FakeGitHub, FakeRepo

BODY = b"# Hello\n" + b"x" * 5000


@pytest.fixture()
def fake() -> FakeGitHub:
    with FakeGitHub({"o/r": FakeRepo({"docs/a.md": BODY})}) as server:
        yield server


def raw(fake: FakeGitHub, path: str = "docs/a.md") -> str:
    return f"{fake.raw_url}/o/r/{fake.repos['o/r'].sha}/{path}"


def client(**kwargs: object) -> tuple[HttpClient, list[float]]:
    sleeps: list[float] = []
    options = {"max_retries": 3, "backoff_base": 0.01, "timeout": 1.0, "sleep": sleeps.append, **kwargs}
    return HttpClient(**options), sleeps  # type: ignore[arg-type]


def test_plain_get_and_json(fake: FakeGitHub) -> None:
    http, sleeps = client()
    assert http.get(raw(fake)).content == BODY
    assert http.get_json(f"{fake.api_url}/repos/o/r")["default_branch"] == "main"
    assert http.stats == {"requests": 2, "ok": 2} and sleeps == []


def test_5xx_is_retried_with_growing_backoff(fake: FakeGitHub) -> None:
    fake.add_fault("/raw/", "500", times=2)
    http, sleeps = client(backoff_base=1.0)
    assert http.get(raw(fake)).content == BODY
    assert http.stats["errors.http_500"] == 2 and http.stats["retries"] == 2
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # base * 2**attempt, with jitter


def test_5xx_forever_gives_up(fake: FakeGitHub) -> None:
    fake.add_fault("/raw/", "500", times=99)
    http, sleeps = client()
    with pytest.raises(HttpError) as info:
        http.get(raw(fake))
    assert info.value.kind == "retries" and len(sleeps) == 4 and http.stats["requests"] == 4


def test_429_waits_retry_after(fake: FakeGitHub) -> None:
    fake.add_fault("/raw/", "429", retry_after=7)
    http, sleeps = client()
    assert http.get(raw(fake)).content == BODY
    assert sleeps == [7.0] and http.stats["rate_limited"] == 1


def test_403_rate_limit_waits_until_reset(fake: FakeGitHub) -> None:
    fake.add_fault("/api/", "403", reset_in=30)
    http, sleeps = client()
    assert http.get_json(f"{fake.api_url}/repos/o/r")["name"] == "r"
    assert 28 <= sleeps[0] <= 32 and http.stats["rate_limited"] == 1


def test_rate_limit_over_the_cap_fails_at_once(fake: FakeGitHub) -> None:
    fake.add_fault("/api/", "403", reset_in=3600)
    http, sleeps = client(max_rate_limit_wait=60)
    with pytest.raises(HttpError) as info:
        http.get(f"{fake.api_url}/repos/o/r")
    assert info.value.kind == "rate_limit" and info.value.status == 403 and sleeps == []


def test_404_is_not_retried(fake: FakeGitHub) -> None:
    http, sleeps = client()
    with pytest.raises(HttpError) as info:
        http.get(f"{fake.api_url}/repos/o/missing")
    assert info.value.status == 404 and sleeps == [] and http.stats["requests"] == 1


def test_truncated_body_is_retried(fake: FakeGitHub) -> None:
    fake.add_fault("/raw/", "truncate")
    http, _ = client()
    assert http.get(raw(fake)).content == BODY
    assert http.stats["errors.truncated"] == 1


def test_slow_response_times_out_then_retries(fake: FakeGitHub) -> None:
    fake.add_fault("/raw/", "slow", delay=1.0)
    http, _ = client(timeout=0.3)
    assert http.get(raw(fake)).content == BODY
    assert http.stats["errors.timeout"] == 1


def test_size_cap_announced_and_streamed(fake: FakeGitHub) -> None:
    fake.repos["o/r"].extra_entries.append({"path": "big.pdf", "type": "blob", "size": 200_000_000, "sha": "0"})
    http, _ = client()
    start = time.monotonic()
    with pytest.raises(HttpError) as info:
        http.get(raw(fake, "big.pdf"), max_bytes=1_000_000)  # announced, never sent: must not wait for it
    assert info.value.kind == "too_large" and time.monotonic() - start < 2
    with pytest.raises(HttpError, match="cap"):
        http.get(raw(fake), max_bytes=100)
    assert http.stats["errors.too_large"] == 2


def test_malformed_json(fake: FakeGitHub) -> None:
    http, _ = client()
    with pytest.raises(HttpError) as info:
        http.get_json(raw(fake))
    assert info.value.kind == "bad_json"


def test_unreachable_host_is_offline_with_hint() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    http, sleeps = client(offline_hint="use -S scrape.source=mirror")
    start = time.monotonic()
    with pytest.raises(OfflineError, match=r"cannot reach 127\.0\.0\.1:\d+ .*scrape\.source=mirror"):
        http.get(f"http://127.0.0.1:{port}/x")
    assert time.monotonic() - start < 5 and sleeps == []


def test_token_header_sent_never_logged(fake: FakeGitHub, caplog: pytest.LogCaptureFixture) -> None:
    token = "ghp_SECRET_in_header_only"
    fake.add_fault("/api/", "500", times=2)
    http, _ = client(headers={"Authorization": f"Bearer {token}"})
    with caplog.at_level(logging.DEBUG):
        http.get_json(f"{fake.api_url}/repos/o/r")
    assert fake.auth_headers[-1] == f"Bearer {token}"
    assert "retrying" in caplog.text and token not in caplog.text


def test_counts_are_exact_under_threads(fake: FakeGitHub) -> None:
    from concurrent.futures import ThreadPoolExecutor

    http, _ = client()
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda _: http.get(raw(fake)).content, range(200)))
    assert bodies == [BODY] * 200
    assert http.stats["requests"] == 200 and http.stats["ok"] == 200

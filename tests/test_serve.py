"""The OpenAI-compatible server on 127.0.0.1 with the tiny model + tiny index, driven by the official `openai`
client (and raw httpx for malformed requests): answers equal the inference core's, sources travel, errors are
OpenAI-shaped 4xx, batching shares generate calls, the queue is bounded, a disconnect stops generation."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stages.common.inference import GenerationOptions, format_sources
from stages.serve.server import ServeConfig, create_app
from tests.serve_helpers import running_server, tiny_assistant, tiny_index

QUESTION = "What is a Pod in Kubernetes?"
SEED = 7


@pytest.fixture(scope="module")
def assistant(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tiny_assistant(tiny_model_dir, tiny_index(tmp_path_factory.mktemp("index")))


@pytest.fixture(scope="module")
def server(assistant: Any) -> Iterator[tuple[str, Any]]:
    app = create_app(assistant, ServeConfig(max_batch=8, batch_window_ms=150, max_queue=16, max_tokens_limit=512,
                                            max_body_bytes=20_000, max_message_chars=2_000), api_key="")
    with running_server(app) as url:
        yield url, app


def client(url: str, **kwargs: Any) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0, timeout=60, **kwargs)


def expected(assistant: Any, messages: list[dict[str, str]], max_tokens: int) -> Any:
    """The core's answer to the same request. Seeded sampling: the random tiny model's greedy answer is blank
    lines (empty once stripped), a seeded sample is distinct text that a wrong server cannot reproduce."""
    options = GenerationOptions(max_new_tokens=max_tokens, temperature=1.0, top_p=1.0, seed=SEED,
                                repetition_penalty=assistant.default_options().repetition_penalty)
    answer = assistant.answer(messages, options=options)
    assert len(answer.text) > 5
    return answer


def test_answer_equals_the_core_with_sources(server: tuple[str, Any], assistant: Any) -> None:
    url, _ = server
    messages = [{"role": "user", "content": QUESTION}]
    reference = expected(assistant, messages, 12)
    assert reference.sources and reference.sources[0].chunk_id == "k8s-pod"  # BM25 finds the Pod chunk
    response = client(url).chat.completions.create(model="cncf-llm", messages=messages, max_tokens=12,
                                                   temperature=1.0, seed=SEED)
    content = response.choices[0].message.content
    assert content == reference.text + format_sources(reference.sources)
    assert "[1] Pods - https://kubernetes.io/docs/concepts/workloads/pods/ (Kubernetes, CC-BY-4.0)" in content
    sources = response.model_extra["sources"]
    assert [s["chunk_id"] for s in sources] == [s.chunk_id for s in reference.sources]
    assert set(sources[0]) == {"n", "url", "project", "title", "license", "chunk_id"}
    assert response.usage.completion_tokens == reference.completion_tokens > 0
    assert response.choices[0].finish_reason == reference.finish_reason

    closed = client(url).chat.completions.create(model="cncf-llm", messages=messages, max_tokens=12,
                                                 extra_body={"closed_book": True})
    assert closed.model_extra["sources"] == [] and "Sources:" not in closed.choices[0].message.content


def test_stream_matches_the_plain_answer(server: tuple[str, Any], assistant: Any) -> None:
    url, _ = server
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}]
    reference = expected(assistant, messages, 12)
    stream = client(url).chat.completions.create(model="cncf-llm", messages=messages, max_tokens=12, stream=True,
                                                 temperature=1.0, seed=SEED)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) > 3
    assert text == reference.text + format_sources(reference.sources)
    last = chunks[-1]
    assert last.choices[0].finish_reason == reference.finish_reason
    assert [s["chunk_id"] for s in last.model_extra["sources"]] == [s.chunk_id for s in reference.sources]


def test_models_and_health(server: tuple[str, Any]) -> None:
    url, _ = server
    assert [m.id for m in client(url).models.list()] == ["cncf-llm"]
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["retrieval"] is True and health["versions"]["base"] == "tiny"


@pytest.mark.parametrize("body, status, param", [
    (b'{"model": "cncf-llm", "messages": [', 400, None),
    (b'[1, 2]', 400, None),
    (json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}).encode(), 404, "model"),
    (json.dumps({"model": "cncf-llm", "messages": []}).encode(), 400, "messages"),
    (json.dumps({"model": "cncf-llm", "messages": [{"role": "user", "content": "  "}]}).encode(), 400, "messages"),
    (json.dumps({"model": "cncf-llm", "messages": [{"role": "assistant", "content": "hi"}]}).encode(), 400,
     "messages"),
    (json.dumps({"model": "cncf-llm", "messages": [{"role": "user", "content": "x" * 3000}]}).encode(), 400,
     "messages.0.content"),
    (json.dumps({"model": "cncf-llm", "messages": [{"role": "user", "content": "x" * 30000}]}).encode(), 413, None),
    (json.dumps({"model": "cncf-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}).encode(),
     400, "max_tokens"),
    (json.dumps({"model": "cncf-llm", "messages": [{"role": "user", "content": "hi"}],
                 "max_tokens": 10**9}).encode(), 400, "max_tokens"),
    (json.dumps({"model": "cncf-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "10"}).encode(),
     400, "max_tokens"),
    (json.dumps({"model": "cncf-llm", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(),
     400, "temperature"),
    (json.dumps({"model": "cncf-llm", "messages": [{"role": "wizard", "content": "hi"}]}).encode(), 400,
     "messages.0.role"),
    (json.dumps({"model": "cncf-llm", "messages": [{"role": "user", "content": "hi"}], "stop": [""]}).encode(),
     400, "stop"),
])
def test_bad_requests_get_openai_errors(server: tuple[str, Any], body: bytes, status: int, param: str | None) -> None:
    url, _ = server
    response = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if param:
        assert (error["param"] or "").startswith(param)


def test_unknown_model_through_the_client(server: tuple[str, Any]) -> None:
    from openai import NotFoundError

    url, _ = server
    with pytest.raises(NotFoundError):
        client(url).chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])


def test_concurrent_requests_share_generate_calls(server: tuple[str, Any], assistant: Any) -> None:
    url, app = server
    before = app.state.batcher.stats.batches
    questions = ["What is a Pod?", "How does Prometheus scrape?", "What is a Helm chart?", "What is a Pod?"]
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        r = client(url).chat.completions.create(model="cncf-llm", max_tokens=8,
                                                messages=[{"role": "user", "content": questions[i]}])
        results[i] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert app.state.batcher.stats.batches - before < 4
    assert app.state.batcher.stats.largest >= 2
    assert "Prometheus" in results[1] and "Helm" in results[2]  # each got its own sources back


def test_full_queue_answers_503(server: tuple[str, Any]) -> None:
    url, app = server
    batcher = app.state.batcher
    taken = 0
    while batcher.try_acquire():
        taken += 1
    try:
        response = httpx.post(f"{url}/v1/chat/completions",
                              json={"model": "cncf-llm", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "overloaded"
    finally:
        for _ in range(taken):
            batcher.release()


def test_disconnect_mid_stream_stops_generation(server: tuple[str, Any]) -> None:
    url, app = server
    before = app.state.streams_cancelled
    body = {"model": "cncf-llm", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 500,
            "stream": True, "closed_book": True, "temperature": 1.0, "seed": SEED}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        seen = 0
        for line in lines:
            if line.startswith("data:"):
                seen += 1
            if seen >= 3:
                break
    deadline = time.monotonic() + 20
    while (app.state.streams_cancelled == before or app.state.batcher.in_system) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.state.streams_cancelled == before + 1  # generate was stopped, not run to 500 tokens
    assert app.state.batcher.in_system == 0


def test_api_key_is_required_and_never_logged(assistant: Any, capfd: pytest.CaptureFixture[str]) -> None:
    from openai import AuthenticationError

    secret = "sk-local-test-key-123"
    with running_server(create_app(assistant, ServeConfig(), api_key=secret)) as url:
        with pytest.raises(AuthenticationError):
            client(url, api_key="wrong").models.list()
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert [m.id for m in client(url, api_key=secret).models.list()] == ["cncf-llm"]
        r = client(url, api_key=secret).chat.completions.create(
            model="cncf-llm", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
        assert r.usage.completion_tokens > 0
    out = capfd.readouterr()
    assert secret not in out.out + out.err


def test_cli_serves_and_refuses_bad_flags(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`python -m stages.serve` as a user runs it: loads through Assistant.from_params, answers, stops on SIGTERM."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.pinned_params import params_file
    from tests.serve_helpers import free_port

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(params_file(
        merge={"system_prompt": "You are a CNCF expert."}, train={"quantization": "none"},
        inference={"k": 2, "max_new_tokens": 8, "retrieval_mode": "bm25", "autocast": "none"})))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CNCF_LLM_API_KEY": "sk-cli-secret"}
    bad = subprocess.run([sys.executable, "-m", "stages.serve", "--max-batch", "0"], capture_output=True, text=True,
                         cwd=root, env=env, timeout=120)
    assert bad.returncode == 1 and "--max-batch" in bad.stderr
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "stages.serve", "--params", str(params), "--base",
                               str(tiny_model_dir), "--base-only", "--index", str(tiny_index(tmp_path)), "--port",
                               str(port)], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        reply = client(f"http://127.0.0.1:{port}", api_key="sk-cli-secret").chat.completions.create(
            model="cncf-llm", messages=[{"role": "user", "content": QUESTION}], max_tokens=8)
        assert reply.model_extra["sources"][0]["chunk_id"] == "k8s-pod"
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "sk-cli-secret" not in output and "API key required" in output

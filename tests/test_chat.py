"""stages.chat on the tiny model + tiny index: one-shot mode and the REPL commands, driven through stdin."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages.chat import ChatSession, repl
from stages.common.inference import format_sources
from tests.pinned_params import params_file
from tests.serve_helpers import tiny_assistant, tiny_index

QUESTION = "What is a Pod in Kubernetes?"
SAMPLING = ["--temperature", "1", "--seed", "7"]  # the random tiny model's greedy answers are blank lines


def sampled(assistant: Any) -> Any:
    from dataclasses import replace

    return replace(assistant.default_options(), temperature=1.0, seed=7)


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("chat")
    index = tiny_index(root)
    params = root / "params.yaml"
    # the pinned params with the reference assistant's settings (tests/serve_helpers.tiny_assistant)
    params.write_text(yaml.safe_dump(params_file(
        merge={"system_prompt": "You are an expert on the CNCF landscape."},
        train={"quantization": "none"},
        inference={"k": 2, "max_new_tokens": 16, "retrieval_mode": "bm25", "excerpt_words": 100,
                   "max_prompt_tokens": 1024, "repetition_penalty": 1.2, "autocast": "none"})))
    return {"root": root, "index": index, "params": params, "assistant": tiny_assistant(tiny_model_dir, index)}


def run_chat(setup: dict[str, Any], model_dir: Path, args: list[str], stdin: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "stages.chat", "--params", str(setup["params"]), "--base", str(model_dir),
           "--base-only", "--index", str(setup["index"]), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300, env=env,
                          cwd=Path(__file__).resolve().parents[1])


def test_once_prints_the_cores_answer_with_sources(setup: dict[str, Any], tiny_model_dir: Path) -> None:
    reference = setup["assistant"].answer(QUESTION, options=sampled(setup["assistant"]))
    assert reference.sources and len(reference.text) > 5
    done = run_chat(setup, tiny_model_dir, ["--once", QUESTION, *SAMPLING], "")
    assert done.returncode == 0, done.stderr
    assert done.stdout == reference.text + format_sources(reference.sources) + "\n"
    from_stdin = run_chat(setup, tiny_model_dir, ["--once", "-", *SAMPLING], QUESTION + "\n")
    assert from_stdin.stdout == done.stdout
    empty = run_chat(setup, tiny_model_dir, ["--once", "-"], "  \n")
    assert empty.returncode == 1 and "non-empty question" in empty.stderr


def test_repl_commands_through_stdin(setup: dict[str, Any], tiny_model_dir: Path) -> None:
    script = f"/help\n{QUESTION}\n/sources\n/closed-book\n{QUESTION}\n/sources\n/bogus\n/reset\n/quit\nnever asked\n"
    done = run_chat(setup, tiny_model_dir, [], script)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "/closed-book  toggle retrieval" in out
    assert out.count("Sources:\n[1] Pods - https://kubernetes.io/docs/concepts/workloads/pods/") == 1  # 2nd is closed
    assert "    A Pod is the smallest deployable unit" in out  # /sources shows the excerpt
    assert "(retrieval off: closed-book)" in out and "(no sources" in out
    assert "(unknown command /bogus" in out and "(conversation cleared)" in out


def test_session_history_and_reset(setup: dict[str, Any]) -> None:
    assistant = setup["assistant"]
    out = io.StringIO()
    options = sampled(assistant)
    session = ChatSession(assistant, out, options=options)
    repl(session, io.StringIO(f"{QUESTION}\nAnd what about Helm charts?\n"), interactive=False)
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    first = assistant.answer(QUESTION, options=options)
    second = assistant.answer([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": first.text},
                               {"role": "user", "content": "And what about Helm charts?"}], options=options)
    assert first.text and second.text and session.history[1]["content"] == first.text
    assert out.getvalue() == (first.text + format_sources(first.sources) + "\n"
                              + second.text + format_sources(second.sources) + "\n")
    assert [s.chunk_id for s in session.last_sources] == [s.chunk_id for s in second.sources]
    assert session.command("/reset") and session.history == [] and session.last_sources == []
    assert session.command("/quit") is False

"""The Gradio web chat (app.py) in a real headless Chromium: type a question, wait for the streamed answer,
check the answer is the inference core's and a source link appears, save a screenshot."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.browser import HeadlessChromium
from tests.serve_helpers import free_port, tiny_assistant, tiny_index

QUESTION = "What is a Pod in Kubernetes?"
POD_URL = "https://kubernetes.io/docs/concepts/workloads/pods/"


def alnum(text: str) -> str:
    return re.sub(r"[\W_]+", "", text)


@pytest.fixture(scope="module")
def app_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
            gradio_safe_abc: None) -> Iterator[tuple[str, Any, Any]]:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app import build_demo

    assistant = tiny_assistant(tiny_model_dir, tiny_index(tmp_path_factory.mktemp("index")))
    # Seeded sampling: the random tiny model's greedy answer is blank lines.
    options = replace(assistant.default_options(), temperature=1.0, seed=7, max_new_tokens=24)
    demo = build_demo(assistant, options=options)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", assistant, options
    finally:
        demo.close()


def test_web_chat_in_headless_chromium(app_url: tuple[str, Any, Any], tmp_path: Path) -> None:
    url, assistant, options = app_url
    expected = assistant.answer(QUESTION, options=options)
    assert len(alnum(expected.text)) > 5 and expected.sources
    browser = HeadlessChromium.start(tmp_path)
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=url)
        browser.wait_for("!!document.querySelector('textarea')", timeout=60)
        assert browser.evaluate("document.body.innerText.includes('adapter')")  # versions shown in the header
        browser.evaluate("document.querySelector('textarea').focus()")
        browser.type_text(QUESTION)
        browser.press_enter()
        link = browser.wait_for(f"(() => {{ const a = document.querySelector('a[href=\"{POD_URL}\"]'); "
                                "return a ? a.innerText : null; })()", timeout=90)
        assert link == "Pods"
        page_text = browser.evaluate("document.body.innerText")
        assert QUESTION in page_text
        assert alnum(expected.text) in alnum(page_text)  # the streamed answer is the core's answer
        shot = browser.screenshot(tmp_path / "web_chat.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    finally:
        browser.close()


def test_sources_markdown_escapes_outside_text() -> None:
    from app import sources_markdown
    from stages.common.inference import Source

    md = sources_markdown([Source(1, "c", "https://x.io/a", "Proj", "T](javascript:alert(1))<b>", "MIT", "t", 1.0),
                           Source(2, "d", "javascript:alert(1)", "P", "Bad", "MIT", "t", 1.0)])
    assert "1. [T\\]\\(javascript:alert\\(1\\)\\)&lt;b&gt;](https://x.io/a) — Proj, MIT" in md
    assert "2. Bad \\(javascript:alert\\(1\\)\\) — P, MIT" in md and "](javascript" not in md

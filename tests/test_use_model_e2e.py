"""End to end on the tiny model: train a LoRA adapter (the train stage) -> export (GGUF round trip within
tolerance) -> chat one-shot -> the server answers through the `openai` client, streaming and not, with sources ->
the web page renders the answer in headless Chromium. Every step uses the trained adapter, loaded the way users
load it (`Assistant.from_params`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml

from stages.common.inference import format_sources
from stages.common.metrics import StageMetrics
from tests.serve_helpers import running_server, tiny_index

QUESTION = "How does Prometheus scrape metrics?"


def test_train_export_chat_serve_web(tiny_model_dir: Path, tmp_path: Path, gradio_safe_abc: None) -> None:
    import io
    import os

    from stages.base_model import build_base_model
    from stages.chat import ChatSession
    from stages.common.inference import Assistant
    from stages.export.__main__ import run_export, validate
    from stages.serve.server import ServeConfig, create_app
    from stages.train import train
    from tests.pinned_params import params_file
    from tests.test_train import PARAMS, make_data, make_paths

    # train: the real stage, a few LoRA steps
    base = tmp_path / "models" / "base"
    build_base_model(str(tiny_model_dir), base)
    make_data(tmp_path / "data" / "merge")
    paths = make_paths(tmp_path, base, tmp_path / "data" / "merge")
    train(PARAMS, paths)
    assert (paths.adapter_dir / "adapter_config.json").is_file()

    # export: merged + GGUF, checked against the merged model
    cfg = validate({"name": "cncf-llm", "file_types": ["f16", "q8_0"], "check_prompts": [QUESTION, "What is etcd?"],
                    "min_top1_agreement": {"f16": 0.99, "q8_0": 0.9}, "runtime": {"temperature": 0.0},
                    "system_prompt": ""},
                   "You are a CNCF expert.")
    exported = run_export(cfg, base, paths.adapter_dir, tmp_path / "models", StageMetrics("export"))
    assert exported["gguf"]["f16"]["passed"] and exported["gguf"]["q8_0"]["passed"]
    assert exported["gguf"]["f16"]["top1_agreement"] == 1.0

    # the assistant users get: base + trained adapter + index, from a params file
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(params_file(
        merge={"system_prompt": "You are a CNCF expert."}, train={"quantization": "none"},
        inference={"k": 2, "max_new_tokens": 12, "retrieval_mode": "bm25", "autocast": "none"})))
    assistant = Assistant.from_params(params, base_dir=base, adapter_dir=paths.adapter_dir,
                                      index_dir=tiny_index(tmp_path))
    options = replace(assistant.default_options(), temperature=1.0, seed=3)
    reference = assistant.answer(QUESTION, options=options)
    assert reference.text and reference.sources[0].project == "Prometheus"
    with assistant.base_only():
        assert assistant.answer(QUESTION, options=options).text != reference.text  # the adapter changes answers

    # chat one-shot
    out = io.StringIO()
    ChatSession(assistant, out, options=options).ask(QUESTION)
    assert out.getvalue() == reference.text + format_sources(reference.sources) + "\n"

    # server through the openai client, plain and streaming
    from openai import OpenAI

    with running_server(create_app(assistant, ServeConfig(), api_key="")) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        kwargs = {"model": "cncf-llm", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12,
                  "temperature": 1.0, "seed": 3}
        plain = client.chat.completions.create(**kwargs)
        assert plain.choices[0].message.content == reference.text + format_sources(reference.sources)
        assert plain.model_extra["sources"][0]["project"] == "Prometheus"
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kwargs,
                                                                                                      stream=True))
        assert streamed == plain.choices[0].message.content

    # the web page in headless Chromium
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app import build_demo
    from tests.browser import HeadlessChromium
    from tests.serve_helpers import free_port
    from tests.test_app import alnum

    demo = build_demo(assistant, options=options)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    browser = HeadlessChromium.start(tmp_path)
    try:
        browser.send("Page.navigate", url=f"http://127.0.0.1:{port}/")
        browser.wait_for("!!document.querySelector('textarea')", timeout=60)
        browser.evaluate("document.querySelector('textarea').focus()")
        browser.type_text(QUESTION)
        browser.press_enter()
        browser.wait_for(f"!!document.querySelector('a[href=\"{reference.sources[0].url}\"]')", timeout=90)
        assert alnum(reference.text) in alnum(browser.evaluate("document.body.innerText"))
        assert browser.screenshot(tmp_path / "web_chat.png").stat().st_size > 10_000
    finally:
        browser.close()
        demo.close()

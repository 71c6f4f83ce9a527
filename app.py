"""Web chat with the tuned model: a Gradio app in the layout a Hugging Face Space runs (`python app.py`).

Answers stream as the model writes them and end with their sources as links; the header shows the model,
adapter, index and dataset versions. It calls the same inference core as eval, chat and serve.

    python app.py                  # http://127.0.0.1:7860 ; models/base + models/adapter + data/index
    python app.py --host 0.0.0.0 --port 7860 --base-only
"""

from __future__ import annotations

import argparse
import html
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

log = logging.getLogger("app")

EXAMPLES = ["What is a Pod in Kubernetes?", "How does Prometheus discover scrape targets?",
            "How do I roll back a Helm release?"]


def sources_markdown(sources: Sequence[Any]) -> str:
    """Numbered links under the answer ([n] in the text refers to these)."""
    if not sources:
        return ""
    lines = [f"{s.n}. {_link(s.title or s.url, s.url)} — {_md_text(s.project)}, {_md_text(s.license)}"
             for s in sources]
    return "\n\n**Sources**\n\n" + "\n".join(lines)


def _link(label: str, url: str) -> str:
    """A markdown link for http(s) URLs without spaces or parentheses; anything else is shown as text."""
    if re.fullmatch(r"https?://[^\s()<>]+", url or ""):
        return f"[{_md_text(label)}]({url})"
    return _md_text(f"{label} ({url})" if url and url != label else label)


def _md_text(text: str) -> str:
    """Outside text shown as text: markdown/HTML control characters escaped."""
    escaped = html.escape(text or "", quote=False)
    for ch in "[]()*_`#|":
        escaped = escaped.replace(ch, "\\" + ch)
    return escaped


def history_messages(history: Sequence[Any]) -> list[dict[str, str]]:
    """Gradio's chat history (openai-style dicts, content a str or parts) -> plain {role, content} turns."""
    turns = []
    for message in history or []:
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if role in ("user", "assistant") and isinstance(content, str) and content.strip():
            if role == "assistant":
                content = content.split("\n\n**Sources**")[0]  # the links are for the reader, not the model
            turns.append({"role": role, "content": content})
    return turns


def make_responder(assistant: Any, options: Any = None) -> Any:
    """The ChatInterface function: yields the growing answer, then the answer with its source links."""
    from stages.common.inference import Answer
    from stages.common.streaming import cancellable_stream, trimmed

    def respond(message: str, history: list[Any], closed_book: bool) -> Iterator[str]:
        if not (message or "").strip():
            yield "Ask a question about a CNCF project."
            return
        conversation = [*history_messages(history), {"role": "user", "content": message.strip()}]
        cancel = threading.Event()
        text = ""
        stream = trimmed(cancellable_stream(assistant, conversation, closed_book=bool(closed_book), k=None,
                                            options=options or assistant.default_options(), cancel=cancel))
        try:
            for item in stream:
                if isinstance(item, Answer):
                    yield item.text + sources_markdown(item.sources)
                else:
                    text += item
                    yield text
        finally:  # the user pressed stop or left: end generate
            stream.close()

    return respond


def build_demo(assistant: Any, options: Any = None) -> Any:
    """The Blocks app; `options` (GenerationOptions) defaults to the core's (greedy, params `inference`)."""
    import gradio as gr

    versions = " · ".join(f"{k} `{v}`" for k, v in assistant.versions.items())
    with gr.Blocks(title="cncf-llm") as demo:
        gr.Markdown(f"# cncf-llm\nAnswers about CNCF projects from their documentation, with sources.\n\n"
                    f"Model **{assistant.name}** — {versions}", elem_id="versions")
        closed_book = gr.Checkbox(label="Closed-book (no retrieved excerpts)", value=False, render=False)
        gr.ChatInterface(make_responder(assistant, options), additional_inputs=[closed_book], examples=None,
                         chatbot=gr.Chatbot(elem_id="chat", height=520), fill_height=True)
        gr.Markdown("Examples: " + " · ".join(EXAMPLES))
    return demo


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--base", default="models/base")
    parser.add_argument("--adapter", default="models/adapter")
    parser.add_argument("--index", default="data/index")
    parser.add_argument("--base-only", action="store_true", help="the base model without the adapter")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from stages.common.inference import Assistant

    assistant = Assistant.from_params(args.params, base_dir=args.base, adapter_dir=args.adapter,
                                      index_dir=args.index, use_adapter=not args.base_only)
    build_demo(assistant).queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()

"""Screenshot of the web chat (app.py) answering one question with the real model, for metrics/web_chat.png.

Starts the Gradio app on 127.0.0.1 over models/base + models/adapter + data/index, asks the question in headless
Chromium (Debian's `chromium`, over the DevTools protocol), waits for the answer's source links and saves the page.

    python scripts/web_chat_screenshot.py                       # after `dvc repro`: writes metrics/web_chat.png
    python scripts/web_chat_screenshot.py --question "How do I roll back a Helm release?" --out /tmp/chat.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

log = logging.getLogger("web_chat_screenshot")
LINK_IN_ANSWER = "document.querySelectorAll('.message a[href^=\"http\"], [data-testid=\"bot\"] a[href^=\"http\"]').length"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--base", default="models/base")
    parser.add_argument("--adapter", default="models/adapter")
    parser.add_argument("--index", default="data/index")
    parser.add_argument("--base-only", action="store_true")
    parser.add_argument("--question", default="What is a Pod in Kubernetes?")
    parser.add_argument("--out", default="metrics/web_chat.png")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from app import build_demo
    from stages.common.inference import Assistant
    from tests.browser import HeadlessChromium
    from tests.serve_helpers import free_port

    assistant = Assistant.from_params(args.params, base_dir=args.base, adapter_dir=args.adapter,
                                      index_dir=args.index, use_adapter=not args.base_only)
    demo = build_demo(assistant)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    browser = HeadlessChromium.start(Path(tempfile.mkdtemp(prefix="web_chat_")))
    try:
        browser.send("Page.navigate", url=f"http://127.0.0.1:{port}/")
        browser.wait_for("!!document.querySelector('textarea')", timeout=60)
        browser.evaluate("document.querySelector('textarea').focus()")
        browser.type_text(args.question)
        browser.press_enter()
        start = time.monotonic()
        if assistant.retriever is not None:
            browser.wait_for(LINK_IN_ANSWER, timeout=args.timeout)
        else:  # closed-book: no links; wait until the answer stops changing
            last, stable = "", 0
            while stable < 5 and time.monotonic() - start < args.timeout:
                text = browser.evaluate("document.body.innerText")
                stable = stable + 1 if text == last else 0
                last = text
                time.sleep(1)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        browser.screenshot(out)
        log.info("answered in %.1fs; wrote %s (%s)", time.monotonic() - start, out, json.dumps(assistant.versions))
    finally:
        browser.close()
        demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

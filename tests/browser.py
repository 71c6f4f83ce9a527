"""A real headless Chromium (Debian's `chromium`) driven over the Chrome DevTools Protocol (websocket-client).

Tests that need a browser call `HeadlessChromium.start(tmp_dir)`; a missing or broken Chromium raises
BrowserError with the install hint (CI installs it in .ci/run): the test fails, it is never skipped.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.serve_helpers import free_port


class BrowserError(RuntimeError):
    """Chromium is missing or did not start."""


class HeadlessChromium:
    def __init__(self, process: subprocess.Popen, ws: Any) -> None:
        self.process = process
        self.ws = ws
        self._id = 0

    @classmethod
    def start(cls, work_dir: Path, timeout: float = 30.0) -> HeadlessChromium:
        import websocket

        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            raise BrowserError("chromium not found: apt-get install -y chromium (.ci/run does this)")
        port = free_port()
        log = (work_dir / "chromium.log").open("wb")
        process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--disable-extensions", "--window-size=1200,900", f"--remote-debugging-port={port}",
             "--remote-allow-origins=*", f"--user-data-dir={work_dir / 'profile'}", "about:blank"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                page = next(p for p in pages if p.get("type") == "page")
                break
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    tail = (work_dir / "chromium.log").read_text(errors="replace")[-800:]
                    raise BrowserError(f"chromium did not start ({exc}); log tail:\n{tail}") from None
                time.sleep(0.2)
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout)
        return cls(process, ws)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command; returns its result (events arriving meanwhile are skipped)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JS error: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for: {expression}")

    def type_text(self, text: str) -> None:
        self.send("Input.insertText", text=text)

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                      nativeVirtualKeyCode=13, **({"text": "\r"} if kind == "keyDown" else {}))

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

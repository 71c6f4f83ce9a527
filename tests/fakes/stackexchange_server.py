"""A local stand-in for the StackExchange API 2.3 on 127.0.0.1, serving real question pages.

Questions come from the saved `/questions` pages of the shared corpus (read in place at test time), answers from
hand-written fixtures (tests/data/stackexchange_answers). The fake re-sorts and re-paginates like the API
(`tagged`, `sort=votes`, `min`, `page`, `pagesize`, `has_more`), embeds answers only for the filter made by
`/filters/create` with `question.answers`, counts a quota, and can inject the API's `backoff` field, quota
exhaustion, HTTP 502/429 and malformed JSON per method, so the stage's handling of each is testable.
"""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

ANSWERS_FIXTURES = Path(__file__).resolve().parents[1] / "data" / "stackexchange_answers"
CUSTOM_FILTER = "!6WPIomp-eb(U5"  # what /filters/create returns; only it embeds answers and body_markdown


class FakeStackExchange:
    """Start with `with FakeStackExchange(dir) as api:`; `api.url` is the base URL (…/2.3)."""

    def __init__(self, questions_dir: Path, answers_dir: Path = ANSWERS_FIXTURES, max_pages: int | None = None,
                 quota: int = 10_000) -> None:
        files = sorted(questions_dir.glob("questions_*_page_*.json"))[:max_pages]
        self.questions: list[dict[str, Any]] = [i for f in files for i in json.loads(f.read_text())["items"]]
        self.answers: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for path in sorted(answers_dir.glob("answers_*.json")):
            for item in json.loads(path.read_text())["items"]:
                self.answers[int(item["question_id"])].append(item)
        self.quota_max = quota
        self.quota_remaining = quota
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.backoff: dict[str, list[int]] = defaultdict(list)  # method -> backoff values for its next responses
        self.fail: dict[str, list[int]] = defaultdict(list)  # method -> HTTP statuses to answer first
        self.malformed: dict[str, int] = defaultdict(int)  # method -> how many broken JSON bodies to send
        self.api_errors: dict[str, list[dict[str, Any]]] = defaultdict(list)  # method -> HTTP 400 error bodies
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # ------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> FakeStackExchange:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                status, body, headers = fake.handle(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/2.3"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def calls(self, method: str) -> list[dict[str, str]]:
        return [params for m, params in self.requests if m == method]

    # -------------------------------------------------------------------------------------- routing
    def handle(self, raw_path: str) -> tuple[int, bytes, dict[str, str]]:
        parsed = urlparse(raw_path)
        params = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        path = parsed.path.removeprefix("/2.3/")
        method, route = _route(path)
        with self.lock:
            self.requests.append((method, params))
            if self.fail[method]:
                status = self.fail[method].pop(0)
                headers = {"Retry-After": "0"} if status == 429 else {}
                return status, b"<html><body>Bad Gateway</body></html>", headers
            if self.api_errors[method]:  # the real API's way: HTTP 400 with error_id/error_name/error_message
                return 400, _dump(self.api_errors[method].pop(0)), {}
            if self.malformed[method] > 0:
                self.malformed[method] -= 1
                return 200, b'{"items": [{"question_id": 1, "title": "cut', {}
            self.quota_remaining -= 1
            if self.quota_remaining < 0:
                return 400, _dump({"error_id": 502, "error_name": "throttle_violation",
                                   "error_message": "too many requests from this IP, more requests available in "
                                                    "80000 seconds"}), {}
            backoff = self.backoff[method].pop(0) if self.backoff[method] else None
        if route is None:
            return 404, _dump({"error_id": 404, "error_name": "no_method", "error_message": "no method"}), {}
        payload = route(self, path, params)
        payload.update({"quota_max": self.quota_max, "quota_remaining": max(0, self.quota_remaining)})
        if backoff:
            payload["backoff"] = backoff
        return 200, _dump(payload), {}

    def filters_create(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        include = params.get("include", "").split(";")
        return {"items": [{"filter": CUSTOM_FILTER, "filter_type": "safe", "included_fields": include}],
                "has_more": False}

    def tags_info(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        wanted = unquote(path.split("/")[1]).split(";")
        counts: dict[str, int] = defaultdict(int)
        for q in self.questions:
            for tag in q["tags"]:
                counts[tag] += 1
        items = [{"name": t, "count": counts[t], "has_synonyms": False, "is_moderator_only": False,
                  "is_required": False} for t in wanted if t in counts]
        return {"items": items, "has_more": False}

    def questions_list(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        tagged = [t for t in params.get("tagged", "").split(";") if t]
        items = [q for q in self.questions if all(t in q["tags"] for t in tagged)]
        if params.get("sort") == "votes":
            items.sort(key=lambda q: (-q["score"], q["question_id"]))
            if "min" in params:
                items = [q for q in items if q["score"] >= int(params["min"])]
        page_items, has_more = _paginate(items, params)
        return {"items": [self._shape_question(q, params.get("filter", "default")) for q in page_items],
                "has_more": has_more}

    def question_answers(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        ids = [int(i) for i in unquote(path.split("/")[1]).split(";") if i]
        items = [a for qid in ids for a in self.answers.get(qid, [])]
        items.sort(key=lambda a: (-a["score"], a["answer_id"]))
        page_items, has_more = _paginate(items, params)
        return {"items": [self._shape_answer(a, params.get("filter", "default")) for a in page_items],
                "has_more": has_more}

    # ---------------------------------------------------------------------------------------- shape
    def _shape_question(self, q: dict[str, Any], filter_name: str) -> dict[str, Any]:
        out = dict(q)
        if filter_name not in (CUSTOM_FILTER, "withbody"):
            out.pop("body", None)
        if filter_name == CUSTOM_FILTER and self.answers.get(q["question_id"]):
            # The API omits empty fields: answer-less questions carry no `answers` key at all.
            out["answers"] = [self._shape_answer(a, filter_name) for a in
                              sorted(self.answers[q["question_id"]], key=lambda a: (-a["score"], a["answer_id"]))]
        return out

    @staticmethod
    def _shape_answer(a: dict[str, Any], filter_name: str) -> dict[str, Any]:
        out = dict(a)
        if filter_name != CUSTOM_FILTER:
            out.pop("body_markdown", None)
        if filter_name not in (CUSTOM_FILTER, "withbody"):
            out.pop("body", None)
        return out


def _route(path: str) -> tuple[str, Any]:
    if path == "filters/create":
        return "filters/create", FakeStackExchange.filters_create
    if re.fullmatch(r"tags/[^/]+/info", path):
        return "tags/info", FakeStackExchange.tags_info
    if path == "questions":
        return "questions", FakeStackExchange.questions_list
    if re.fullmatch(r"questions/[0-9;%A-Fa-f]+/answers", path):
        return "questions/answers", FakeStackExchange.question_answers
    return path, None


def _paginate(items: list[dict[str, Any]], params: dict[str, str]) -> tuple[list[dict[str, Any]], bool]:
    page = max(1, int(params.get("page", 1)))
    size = max(1, min(100, int(params.get("pagesize", 30))))
    start = (page - 1) * size
    return items[start:start + size], len(items) > start + size


def _dump(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")

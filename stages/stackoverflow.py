"""stackoverflow: human-written Q&A pairs per CNCF project from Stack Overflow (StackExchange API 2.3).

Why: generated docs pairs teach what the docs say; Stack Overflow answers teach how people fix real problems.
Every record keeps its attribution (question link, answer author, licence), which CC BY-SA 4.0 requires.

Sources (`stackoverflow.source`):
- `api`: the live API. Tags per project come from the landscape's `stack_overflow_url` (else a slug of the
  name, or the `stackoverflow.tags` override) and are validated with `/tags/{tags}/info`. Questions come from
  `/questions?tagged=<tag>&sort=votes&order=desc&min=<min_question_score>` with a custom filter. The real API
  needs a filter that includes `question.body_markdown;question.answers;answer.body_markdown;answer.score;
  answer.is_accepted;answer.owner` (plus the default fields): with `stackoverflow.filter: ""` the stage creates
  it once with `/filters/create`; `filter: withbody` also works (answers are then fetched separately from
  `/questions/{ids}/answers`). The API's `backoff` field, `quota_remaining` and an optional `STACKEXCHANGE_KEY`
  (env only) are honoured.
- `dir`: replay saved API pages (offline runs, quota-free reruns, tests). Layout, one API page per file:
    questions_<tag>_page_NNN.json       a `/questions` response (items may embed `answers`)
    answers_<tag>_page_NNN.json         a `/questions/{ids}/answers` response for the questions of page NNN
    answers_<tag>_page_NNN_MM.json      its continuation pages (MM >= 02) when that call had `has_more`
  Answers are matched to questions by `question_id`. With `stackoverflow.save_dir`, the `api` source writes
  exactly this layout, so any live run can be replayed.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from stages.common.cli import StageError, run_cli, setup_logging, stage_parser
from stages.common.fs import UnsafePathError, read_regular_file, resolve_under
from stages.common.http import HttpClient, HttpError
from stages.common.jsonl import stable_id, write_json, write_jsonl
from stages.common.metrics import StageMetrics, recorded_failure
from stages.common.progress import progress
from stages.common.schema import StackOverflowParams, load_stage_params
from stages.common.text import LIST_ITEM_RE, html_to_markdown, tidy_markdown

log = logging.getLogger(__name__)

PROJECTS_PATH = Path("data/scrape/projects.jsonl")
OUT_PATH = Path("data/stackoverflow/qa.jsonl")
LICENSE = "CC BY-SA 4.0"
FILTER_INCLUDE = ("question.body_markdown", "question.answers", "question.link", "question.title",
                  "question.tags", "question.score", "question.answer_count", "answer.body_markdown",
                  "answer.body", "answer.score", "answer.is_accepted", "answer.owner", "answer.answer_id",
                  "answer.question_id", "answer.content_license", "shallow_user.display_name")
API_PAGE_SIZE_MAX = 100
API_ERROR_RETRIES = 3  # throttle_violation / temporarily_unavailable / internal_error: wait and retry this often
RETRYABLE_API_ERRORS = frozenset({"throttle_violation", "temporarily_unavailable", "internal_error"})
MAX_BAD_PAGES = 5  # malformed (or empty) pages in a row before a tag is given up
MAX_BACKOFF_S = 3600  # a `backoff` field beyond this is garbage, not a request for silence
TAG_RE = re.compile(r"[a-z0-9][a-z0-9.+#-]{0,34}")  # StackExchange tag names; they become file names too
OFFLINE_HINT = ("to run offline, replay saved API pages: -S stackoverflow.source=dir "
                "-S stackoverflow.dir=<folder of questions_<tag>_page_NNN.json> "
                "(e.g. ../shared/corpus/stackexchange)")
_HTML_TAG_RE = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")
_LANG_HINT_RE = re.compile(r"^\s*<!--\s*language(?:-all)?:\s*(?:lang-)?([\w+#.-]+)\s*-->\s*$")


# ------------------------------------------------------------------------------------------------ tags
def tags_from_url(url: str) -> list[str]:
    """`.../questions/tagged/argoproj+or+argo` -> [argoproj, argo]; a search URL names no tag."""
    path = urlparse(url or "").path
    match = re.search(r"/questions/tagged/([^/?#]+)", path)
    if not match:
        return []
    parts = re.split(r"[+ ;]", unquote(match.group(1)).lower())
    return [p for p in parts if p and p not in ("or", "and")]


def slug_tag(name: str) -> str:
    """Stack Overflow tag spelling of a project name: lowercase, words joined by '-'."""
    return re.sub(r"[^a-z0-9.+#]+", "-", name.lower()).strip("-")


def project_tags(projects: Iterable[dict[str, Any]], overrides: dict[str, Any]) -> dict[str, list[str]]:
    """Tags to query per project, in a stable order; an override replaces what the landscape says."""
    out: dict[str, list[str]] = {}
    for rec in projects:
        name = str(rec.get("project") or "").strip()
        if not name:
            continue
        if name in overrides:
            value = overrides[name]
            tags = [value] if isinstance(value, str) else list(value or [])
        else:
            tags = tags_from_url(str(rec.get("stack_overflow_url") or "")) or [slug_tag(name)]
        out[name] = sorted({str(t).strip().lower() for t in tags if str(t).strip()})
    return dict(sorted(out.items()))


def read_projects(path: Path, metrics: StageMetrics) -> list[dict[str, Any]]:
    if not path.is_file():
        raise StageError(f"{path} not found: run `dvc repro scrape` first")
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError as exc:
                log.warning("%s:%d: malformed JSON (%s); skipped", path, lineno, exc)
                metrics.inc("errors.bad_projects_line")
    return out


# -------------------------------------------------------------------------------------------- markup
def markdown_from_api(body_markdown: str) -> str:
    """`body_markdown` is HTML-escaped Stack Overflow markdown; indented code blocks become fenced ones."""
    lines = html.unescape(body_markdown).replace("\r\n", "\n").split("\n")
    out: list[str] = []
    lang = ""
    i = 0
    in_fence = False
    while i < len(lines):
        line = lines[i]
        hint = _LANG_HINT_RE.match(line)
        if hint and not in_fence:
            lang = hint.group(1)
            i += 1
            continue
        if line.strip().startswith(("```", "~~~")):
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if not in_fence and _is_indented(line) and _code_may_start(out):
            block: list[str] = []
            while i < len(lines) and (_is_indented(lines[i]) or not lines[i].strip()):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            code = "\n".join(b[4:] if b.startswith("    ") else b.lstrip("\t") for b in block)
            out += [f"```{lang}", code, "```", ""]
            continue
        out.append(line)
        i += 1
    return tidy_markdown("\n".join(out), keep_indent=True)


def _is_indented(line: str) -> bool:
    return line.startswith(("    ", "\t")) and bool(line.strip())


def _code_may_start(out: list[str]) -> bool:
    """An indented block is code after a blank line, unless it continues a list item."""
    if out and out[-1].strip():
        return False
    previous = next((line for line in reversed(out) if line.strip()), "")
    return not (LIST_ITEM_RE.match(previous) or _is_indented(previous))


def post_text(post: dict[str, Any]) -> str:
    """A post's text as markdown: body_markdown when the filter gave it, else the HTML body."""
    if post.get("body_markdown"):
        return markdown_from_api(str(post["body_markdown"]))
    body = str(post.get("body") or "")
    if not _HTML_TAG_RE.search(body):  # listing excerpts (and the shared corpus) are plain text: keep lines
        return tidy_markdown(html.unescape(body))
    return html_to_markdown(body)


# ------------------------------------------------------------------------------------------ validation
def as_int(value: Any, default: int = 0) -> int:
    """An API number that may be missing, null, a string or garbage."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def page_problem(data: dict[str, Any]) -> str | None:
    """Why a saved or fetched page cannot be used (the metrics reason), or None."""
    if "error_id" in data:
        return "error_page"
    if "items" not in data or data["items"] is None:
        return "items_null"
    if not isinstance(data["items"], list):
        return "items_not_list"
    return None


def valid_items(data: dict[str, Any], kind: str, id_key: str, metrics: StageMetrics, where: str) -> list[dict[str, Any]]:
    """The page's items that are objects with an integer id; every other one is counted under a reason."""
    items = data.get("items")
    if not isinstance(items, list):
        metrics.inc(f"malformed.{kind}_items_null" if items is None else f"malformed.{kind}_items_not_list")
        return []
    out = []
    for item in items:
        if not isinstance(item, dict):
            metrics.inc(f"malformed.{kind}_not_object")
        elif isinstance(item.get(id_key), bool) or not isinstance(item.get(id_key), int):
            metrics.inc(f"malformed.{kind}_bad_id")
        else:
            out.append(item)
    if len(out) < len(items):
        log.warning("%s: %d malformed %s item(s) skipped", where, len(items) - len(out), kind)
    return out


# --------------------------------------------------------------------------------------------- sources
class ApiSource:
    """The live API: backoff per method, quota, retries (HttpClient), pages saved for replay."""

    def __init__(self, cfg: dict[str, Any], client: HttpClient, metrics: StageMetrics,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.base = str(cfg["api_url"]).rstrip("/")
        self.site = str(cfg["site"])
        self.filter = str(cfg["filter"])
        self.min_question_score = int(cfg["min_question_score"])
        self.save_dir = Path(cfg["save_dir"]) if cfg["save_dir"] else None
        self.key = os.environ.get("STACKEXCHANGE_KEY", "")
        self.client, self.metrics, self.sleep, self.clock = client, metrics, sleep, clock
        self.not_before: dict[str, float] = {}
        self.stopped = False
        self.last_error = ""  # kind of the last failed call: bad_json pages are skipped, others end a tag

    def saved_page(self, save_as: str | None) -> dict[str, Any] | None:
        """A page an earlier (killed or finished) run saved: a resumed run reads it instead of calling the API."""
        if not (self.save_dir and save_as):
            return None
        path = resolve_under(self.save_dir, save_as)
        if not path.is_file():
            return None
        try:
            data = json.loads(read_regular_file(path).decode("utf-8"))
        except (ValueError, UnsafePathError, OSError):
            return None  # broken or odd: fetched again and overwritten
        if not isinstance(data, dict) or "error_id" in data or not isinstance(data.get("items"), list):
            return None
        self.metrics.inc("pages.resumed")
        return data

    def call(self, method: str, path: str, params: dict[str, Any],
             save_as: str | None = None) -> dict[str, Any] | None:
        """One API request; None when it failed for good (counted) or the quota is spent.

        An API error (HTTP 400 with an `error_id` body) is read and honoured: throttling and temporary
        unavailability wait (as long as the API says, up to the client's rate-limit cap) and retry; a throttle
        longer than the cap stops the run cleanly; other errors end the call, counted by their `error_name`.
        """
        if self.stopped:
            return None
        saved = self.saved_page(save_as)
        if saved is not None:
            return saved
        for attempt in range(API_ERROR_RETRIES + 1):
            wait = self.not_before.get(method, 0.0) - self.clock()
            if wait > 0:
                self.metrics.inc("backoff.waits")
                self.sleep(wait)
            query = {**params, "site": self.site}
            if self.key:
                query["key"] = self.key  # never logged: HttpClient logs hosts only
            try:
                data = self.client.get_json(f"{self.base}/{path}", params=query)
            except HttpError as exc:
                error = exc.json_body()
                if isinstance(error, dict) and "error_id" in error:
                    if self.api_error(method, error, attempt):
                        continue
                    return None
                self.last_error = exc.kind if exc.kind != "http" else f"http_{exc.status}"
                log.warning("%s: %s", method, str(exc).split("?")[0])
                self.metrics.inc(f"errors.{self.last_error}")
                return None
            return self.accept(method, data, save_as)
        return None

    def api_error(self, method: str, error: dict[str, Any], attempt: int) -> bool:
        """Honour one API error body; True when the call should be retried."""
        name = str(error.get("error_name") or error.get("error_id"))
        message = str(error.get("error_message") or "")
        self.metrics.inc(f"errors.api_{name}")
        self.last_error = f"api_{name}"
        if error.get("backoff"):
            self.not_before[method] = self.clock() + min(as_int(error["backoff"]), MAX_BACKOFF_S)
        if name not in RETRYABLE_API_ERRORS or attempt >= API_ERROR_RETRIES:
            log.warning("%s: API error %s (%s)", method, name, message[:200])
            return False
        found = re.search(r"(\d+)\s*seconds", message)
        wait = float(found.group(1)) if found else min(60.0, 2.0 ** (attempt + 2))
        if wait > self.client.max_rate_limit_wait:
            log.warning("StackExchange %s for %.0fs (over the %.0fs cap): stopping; rerun later (saved pages "
                        "are reused with stackoverflow.save_dir)", name, wait, self.client.max_rate_limit_wait)
            self.metrics.inc(f"stopped.{name}")
            self.stopped = True
            return False
        log.warning("%s: API %s; waiting %.0fs and retrying", method, name, wait)
        self.metrics.inc("throttle.waits")
        self.sleep(wait)
        return True

    def accept(self, method: str, data: Any, save_as: str | None) -> dict[str, Any] | None:
        """Bookkeeping of a 200 answer: backoff, quota, saving the page for replay and resume."""
        if not isinstance(data, dict) or "error_id" in data:
            self.last_error = "api_error"
            log.warning("%s: API error %s", method, data.get("error_name") if isinstance(data, dict) else data)
            self.metrics.inc("errors.api_error")
            return None
        self.metrics.inc("requests.ok")
        if data.get("backoff"):
            # The API asks for silence on this method; ignoring it gets the key or IP throttled.
            self.not_before[method] = self.clock() + min(as_int(data["backoff"]), MAX_BACKOFF_S)
            self.metrics.inc("backoff.received")
        if "quota_remaining" in data:
            self.metrics.set("quota_remaining", as_int(data["quota_remaining"], 1))
            if as_int(data["quota_remaining"], 1) <= 0:
                log.warning("StackExchange quota exhausted: stopping after this page; rerun later or set "
                            "STACKEXCHANGE_KEY for a larger quota")
                self.metrics.inc("stopped.quota_exhausted")
                self.stopped = True
        if self.save_dir and save_as:
            write_json(resolve_under(self.save_dir, save_as), data)
        return data

    def ensure_filter(self) -> None:
        """Create the custom filter once (the real API only returns body_markdown and answers with it)."""
        if self.filter:
            return
        data = self.call("filters/create", "filters/create",
                         {"include": ";".join(FILTER_INCLUDE), "base": "default", "unsafe": "false"})
        items = (data or {}).get("items") or []
        if not isinstance(items, list) or not items or not isinstance(items[0], dict) or not items[0].get("filter"):
            raise StageError("could not create a StackExchange filter; set stackoverflow.filter (e.g. withbody)")
        self.filter = str(items[0]["filter"])
        log.info("created StackExchange filter %s", self.filter)

    def has_page(self, tag: str, page: int) -> bool:
        return True  # the API answers any page; malformed pages in a row are bounded by the caller

    def known_tags(self, tags: Sequence[str]) -> set[str]:
        known: set[str] = set()
        for start in range(0, len(tags), 20):
            batch = list(tags[start:start + 20])
            data = self.call("tags/info", f"tags/{quote(';'.join(batch), safe=';')}/info",
                             {"pagesize": API_PAGE_SIZE_MAX})
            if data is None:
                if self.stopped:
                    break
                known.update(batch)  # unverifiable (error counted): let the questions call decide
                continue
            items = data.get("items") if isinstance(data.get("items"), list) else []
            known.update(str(item.get("name", "")).lower() for item in items if isinstance(item, dict))
        return known

    def questions_page(self, tag: str, page: int, page_size: int) -> dict[str, Any] | None:
        self.ensure_filter()
        return self.call("questions", "questions",
                         {"tagged": tag, "sort": "votes", "order": "desc", "min": self.min_question_score,
                          "filter": self.filter, "page": page, "pagesize": page_size},
                         save_as=f"questions_{tag}_page_{page:03d}.json")

    def answers(self, tag: str, page: int, question_ids: Sequence[int]) -> list[dict[str, Any]]:
        """Answers of questions whose page did not embed them, one `/questions/{ids}/answers` walk."""
        out: list[dict[str, Any]] = []
        ids = ";".join(str(i) for i in question_ids)
        apage = 1
        while True:
            suffix = "" if apage == 1 else f"_{apage:02d}"
            name = f"answers_{tag}_page_{page:03d}{suffix}.json"
            data = self.call("questions/answers", f"questions/{ids}/answers",
                             {"sort": "votes", "order": "desc", "filter": self.filter, "page": apage,
                              "pagesize": API_PAGE_SIZE_MAX}, save_as=name)
            if data is None:
                return out
            out += valid_items(data, "answer_page", "question_id", self.metrics, name)
            if not data.get("has_more"):
                return out
            apage += 1


class DirSource:
    """Replays saved pages (see the module doc for the layout); a broken file is a warning and a counter."""

    def __init__(self, directory: Path, metrics: StageMetrics) -> None:
        if not directory.is_dir():
            raise StageError(f"stackoverflow.dir {directory} is not a folder of saved API pages")
        self.dir, self.metrics = directory, metrics
        self.stopped = False
        self.last_error = ""
        self._answers: dict[str, dict[int, list[dict[str, Any]]]] = {}

    def _load(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(read_regular_file(path, follow_symlinks=True).decode("utf-8"))
        except (ValueError, UnicodeDecodeError, UnsafePathError, OSError) as exc:
            log.warning("%s: malformed JSON (%s); skipped", path, exc)
            self.metrics.inc("errors.bad_json")
            self.last_error = "bad_json"
            return None
        if not isinstance(data, dict):
            log.warning("%s: not an API response object; skipped", path)
            self.metrics.inc("errors.bad_json")
            self.last_error = "bad_json"
            return None
        return data

    def known_tags(self, tags: Sequence[str]) -> set[str]:
        return {t for t in tags if (self.dir / f"questions_{t}_page_001.json").is_file()}

    def has_page(self, tag: str, page: int) -> bool:
        return (self.dir / f"questions_{tag}_page_{page:03d}.json").is_file()  # tags are checked by TAG_RE

    def questions_page(self, tag: str, page: int, page_size: int) -> dict[str, Any] | None:
        if not self.has_page(tag, page):
            return {"items": [], "has_more": False}
        data = self._load(self.dir / f"questions_{tag}_page_{page:03d}.json")
        if data is not None and page_problem(data) is None:
            data["has_more"] = self.has_page(tag, page + 1)  # a saved run may have been cut short: files are the truth
        return data

    def answers(self, tag: str, page: int, question_ids: Sequence[int]) -> list[dict[str, Any]]:
        if tag not in self._answers:
            index: dict[int, list[dict[str, Any]]] = {}
            for path in sorted(self.dir.glob(f"answers_{tag}_page_*.json")):
                data = self._load(path)
                if data is None:
                    continue
                for item in valid_items(data, "answer_page", "question_id", self.metrics, str(path)):
                    index.setdefault(int(item["question_id"]), []).append(item)
            self._answers[tag] = index
        return [a for qid in question_ids for a in self._answers[tag].get(int(qid), [])]


# ---------------------------------------------------------------------------------------------- pairs
def pick_answers(answers: Sequence[dict[str, Any]], min_score: int, limit: int,
                 metrics: StageMetrics) -> list[dict[str, Any]]:
    """Accepted answer first, then by score; low-scored and surplus answers are counted, not kept."""
    good = [a for a in answers if as_int(a.get("score")) >= min_score]
    metrics.inc("dropped.low_answer_score", len(answers) - len(good))
    good.sort(key=lambda a: (not a.get("is_accepted"), -as_int(a.get("score")), as_int(a.get("answer_id"))))
    metrics.inc("dropped.extra_answers", max(0, len(good) - limit))
    return good[:limit]


def make_pairs(project: str, question: dict[str, Any], answers: Sequence[dict[str, Any]],
               site: str, metrics: StageMetrics) -> list[dict[str, Any]]:
    title = html.unescape(str(question.get("title") or "")).strip()
    body = post_text(question)
    q_text = f"{title}\n\n{body}".strip() if body else title
    url = str(question.get("link") or f"https://{site}.com/questions/{question.get('question_id')}")
    out = []
    for ans in answers:
        a_text = post_text(ans)
        if not q_text or not a_text:
            metrics.inc("dropped.empty")
            continue
        owner = ans.get("owner") if isinstance(ans.get("owner"), dict) else {}
        out.append({
            "qa_id": stable_id("stackoverflow", site, str(question.get("question_id")), str(ans.get("answer_id"))),
            "question": q_text, "answer": a_text, "project": project, "url": url,
            "score": as_int(ans.get("score")), "is_accepted": bool(ans.get("is_accepted")),
            "tags": [str(t) for t in question.get("tags") or [] if isinstance(t, str)]
            if isinstance(question.get("tags"), list) else [],
            "author": html.unescape(str(owner.get("display_name") or "unknown")),
            "license": str(ans.get("content_license") or LICENSE),
        })
    return out


def collect_tag(source: ApiSource | DirSource, project: str, tag: str, cfg: dict[str, Any],
                metrics: StageMetrics) -> tuple[list[dict[str, Any]], int]:
    """All pairs of one tag (and how many questions it listed): paginate, fetch missing answers, pick."""
    page_size = max(1, min(API_PAGE_SIZE_MAX, int(cfg["page_size"])))
    max_questions = int(cfg["max_questions_per_tag"])
    min_q, min_a = int(cfg["min_question_score"]), int(cfg["min_answer_score"])
    per_question = int(cfg["max_answers_per_question"])
    site = str(cfg["site"])
    pairs: list[dict[str, Any]] = []
    seen = 0
    page = 1
    bad_pages = 0
    while seen < max_questions and not source.stopped:
        data = source.questions_page(tag, page, page_size)
        problem = "unreadable" if data is None else page_problem(data)
        if problem is not None:
            # counted (bad JSON and API errors by the source; the page's shape here); the next page is tried
            # while there is one, a failed request other than bad JSON ends this tag (no hammering)
            if data is not None:
                log.warning("%s [%s] page %d: %s; skipped", project, tag, page, problem.replace("_", " "))
                metrics.inc(f"malformed.{problem}")
            bad_pages += 1
            page += 1
            ends_tag = data is None and isinstance(source, ApiSource) and source.last_error != "bad_json"
            if ends_tag or bad_pages > MAX_BAD_PAGES or not source.has_page(tag, page):
                break
            continue
        items = valid_items(data, "question", "question_id", metrics, f"{tag} page {page}")[: max_questions - seen]
        bad_pages = 0 if items else bad_pages + 1  # empty pages that claim more are bounded like broken ones
        seen += len(items)
        metrics.inc("questions.seen", len(items))
        wanted = [q for q in items if as_int(q.get("score")) >= min_q]
        metrics.inc("dropped.low_question_score", len(items) - len(wanted))
        missing = [int(q["question_id"]) for q in wanted if "answers" not in q and as_int(q.get("answer_count")) > 0]
        fetched: dict[int, list[dict[str, Any]]] = {}
        if missing:
            for ans in source.answers(tag, page, missing):
                fetched.setdefault(int(ans["question_id"]), []).append(ans)
        for q in wanted:
            answers = q.get("answers") if "answers" in q else fetched.get(int(q["question_id"]), [])
            if not isinstance(answers, list):
                metrics.inc("malformed.answers_not_list")
                answers = []
            answers = [a for a in answers if isinstance(a, dict)]
            if not answers:
                metrics.inc("dropped.no_answers")
                continue
            pairs += make_pairs(project, q, pick_answers(answers, min_a, per_question, metrics), site, metrics)
        if not data.get("has_more") or bad_pages > MAX_BAD_PAGES:
            break
        page += 1
    log.info("%s [%s]: %d questions, %d pairs", project, tag, seen, len(pairs))
    return pairs, seen


def collect(source: ApiSource | DirSource, tags_by_project: dict[str, list[str]], cfg: dict[str, Any],
            metrics: StageMetrics) -> list[dict[str, Any]]:
    """Pairs of every project, each (question, answer) once.

    A question listed under several projects' tags goes to the project with the most specific tag (fewest
    questions listed), then the first name: a `kubernetes-helm` question belongs to Helm, not Kubernetes.
    """
    all_tags = sorted({t for tags in tags_by_project.values() for t in tags})
    metrics.inc("tags.requested", len(all_tags))
    invalid = [t for t in all_tags if not TAG_RE.fullmatch(t)]
    if invalid:
        log.warning("not StackExchange tag names (skipped): %s", ", ".join(repr(t) for t in invalid[:5]))
        metrics.inc("dropped.invalid_tag", len(invalid))
        all_tags = [t for t in all_tags if t not in invalid]
        tags_by_project = {p: [t for t in tags if t not in invalid] for p, tags in tags_by_project.items()}
    known = source.known_tags(all_tags) if all_tags else set()
    for tag in all_tags:
        if tag not in known:
            log.info("tag %r is not a %s tag; skipped", tag, cfg["site"])
            metrics.inc("dropped.unknown_tag")
    fetched: dict[str, tuple[list[dict[str, Any]], int]] = {}
    candidates: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
    for project, tags in progress(tags_by_project.items(), desc="stackoverflow", unit="project"):
        for tag in tags:
            if tag not in known or (source.stopped and tag not in fetched):
                continue
            if tag not in fetched:
                fetched[tag] = collect_tag(source, project, tag, cfg, metrics)
                metrics.inc("tags.fetched")
            pairs, seen = fetched[tag]
            for pair in pairs:
                candidates.setdefault(pair["qa_id"], []).append((seen, project, pair))
    out = []
    for qa_id in sorted(candidates):
        options = sorted(candidates[qa_id], key=lambda c: (c[0], c[1]))
        metrics.inc("dropped.duplicate", len(options) - 1)
        out.append({**options[0][2], "project": options[0][1]})
    return out


# ------------------------------------------------------------------------------------------------- run
def make_source(cfg: dict[str, Any], metrics: StageMetrics, client: HttpClient | None = None,
                sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.monotonic) -> ApiSource | DirSource:
    kind = str(cfg["source"])
    if kind == "dir":
        if not cfg["dir"]:
            raise StageError("stackoverflow.source=dir needs -S stackoverflow.dir=<folder of saved API pages>")
        return DirSource(Path(str(cfg["dir"])), metrics)
    if kind != "api":
        raise StageError(f"stackoverflow.source must be api or dir, not {kind!r}")
    client = client or HttpClient(timeout=float(cfg["timeout"]), max_retries=int(cfg["max_retries"]),
                                  offline_hint=OFFLINE_HINT, sleep=sleep)
    return ApiSource(cfg, client, metrics, sleep=sleep, clock=clock)


def run(projects_path: Path, out_path: Path, cfg: dict[str, Any], metrics: StageMetrics,
        source: ApiSource | DirSource | None = None) -> list[dict[str, Any]]:
    """The whole stage on explicit paths; tests pass a source wired to the fake API."""
    tags_by_project = project_tags(read_projects(projects_path, metrics), dict(cfg["tags"]))
    metrics.inc("in.projects", len(tags_by_project))
    source = source or make_source(cfg, metrics)
    pairs = collect(source, tags_by_project, cfg, metrics)
    if isinstance(source, ApiSource):
        for key, value in sorted(source.client.stats.items()):
            metrics.set(f"http.{key}", value)
    metrics.inc("out.pairs", write_jsonl(out_path, pairs))
    metrics.set("out.projects", len({p["project"] for p in pairs}))
    metrics.set("pairs_per_second", round(len(pairs) / max(metrics.elapsed, 1e-6), 2))
    return pairs


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_stage_params("stackoverflow", StackOverflowParams, args.params).model_dump()
    metrics = StageMetrics("stackoverflow")
    with recorded_failure(metrics):
        pairs = run(PROJECTS_PATH, OUT_PATH, cfg, metrics)
    metrics.write()
    log.info("stackoverflow: %d pairs -> %s", len(pairs), OUT_PATH)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

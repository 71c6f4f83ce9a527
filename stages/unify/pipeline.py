"""The unify stage's plain functions: manifest rows -> documents + chunks, in a process pool, deterministically.

Every file is converted independently (`process_file`, run in worker processes); the parent only sorts, drops
exact duplicate documents and writes. Workers never log: they return their warnings, the parent logs them, so
messages are not lost or interleaved and tests can see them.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from stages.common.cli import StageError
from stages.common.jsonl import sha256_bytes, stable_id, write_jsonl
from stages.common.metrics import StageMetrics
from stages.common.progress import progress
from stages.common.text import html_page_to_markdown
from stages.common.workers import TimeBudgetExceeded, die_with_parent, time_budget
from stages.unify import markup, structured
from stages.unify.chunking import chunk_markdown, chunk_structured, count_words

log = logging.getLogger(__name__)

KIND_BY_EXT = {"md": "markdown", "mdx": "markdown", "markdown": "markdown", "rst": "rst", "adoc": "adoc",
               "asciidoc": "adoc", "pdf": "pdf", "yaml": "yaml", "yml": "yaml", "json": "json", "html": "html",
               "htm": "html", "txt": "markdown"}
OUTPUT_KIND = {"rst": "markdown", "adoc": "markdown"}  # rst/adoc become markdown-ish text
REQUIRED_PARAMS = ("chunk_max_words", "chunk_min_words", "max_file_bytes", "pdf_max_pages", "file_timeout_s")
# Drops that mean a broken input (also counted under errors.<kind>); the others are expected (empty pages, dups).
ERROR_REASONS = frozenset({"binary", "pdf_corrupt", "pdf_encrypted", "yaml_alias_bomb", "malformed_yaml",
                           "malformed_json", "missing_file", "bad_manifest_row", "too_large", "timeout"})
BINARY_SNIFF_BYTES = 8192
MAX_REPLACEMENT_RATIO = 0.10  # more U+FFFD than this after a lossy decode: not text (Latin-1 prose stays < 5%)


@dataclass
class FileResult:
    """What a worker hands back for one manifest row."""

    key: tuple[str, str]
    doc: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    skip: str | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # INFO: expected drops (an index page with front matter only)
    counts: Counter[str] = field(default_factory=Counter)
    nbytes: int = 0


class SkipFile(Exception):  # noqa: N818 - a control-flow signal carrying the drop reason, not an error
    """This input is unusable: `reason` becomes the metrics counter, the message the WARNING."""

    def __init__(self, reason: str, message: str, level: int = logging.WARNING) -> None:
        super().__init__(message)
        self.reason = reason
        self.level = level


def file_kind(row: dict[str, Any]) -> str:
    """The row's kind (contract values), falling back to the file extension; rst/adoc are told apart by extension."""
    ext = PurePosixPath(str(row.get("local_path") or row.get("path") or "")).suffix.lower().lstrip(".")
    by_ext = KIND_BY_EXT.get(ext, "")
    if by_ext in ("rst", "adoc"):
        return by_ext
    return str(row.get("kind") or by_ext or "unknown")


def doc_id_for(row: dict[str, Any]) -> str:
    """stable_id(repo, path) for repository files; stable_id(url) for crawled pages."""
    if row.get("source") != "web" and row.get("repo") and row.get("path"):
        return stable_id(str(row["repo"]), str(row["path"]))
    return stable_id(str(row.get("url") or row.get("local_path")))


def decode_text(data: bytes, where: str, counts: Counter[str], warnings: list[str]) -> str:
    """UTF-8 text or SkipFile. Choice: a few invalid bytes are replaced (U+FFFD), counted and warned about; NUL
    bytes or a high replacement ratio mean a binary file in disguise and it is skipped."""
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        raise SkipFile("binary", f"{where}: NUL bytes, looks binary; skipped")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
        bad = text.count("\ufffd")
        if bad > MAX_REPLACEMENT_RATIO * max(1, len(text)):
            raise SkipFile("binary", f"{where}: not UTF-8 ({bad} undecodable sequences); skipped") from None
        counts["warnings.invalid_utf8_replaced"] += 1
        warnings.append(f"{where}: invalid UTF-8 at byte {exc.start}; {bad} sequence(s) replaced with U+FFFD")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise SkipFile("empty", f"{where}: empty file; skipped")
    return text


def convert_markdown(text: str, row: dict[str, Any], kind: str) -> tuple[str, str]:
    """(title, cleaned text) for markdown/MDX/rst/adoc."""
    meta, body = markup.split_front_matter(text, structured.safe_load_one)
    path = str(row.get("path") or row.get("local_path") or "")
    if kind == "rst":
        cleaned = markup.clean_rst(body)
    elif kind == "adoc":
        cleaned = markup.clean_adoc(body)
    else:
        cleaned = markup.clean_markdown(body, mdx=path.lower().endswith(".mdx"))
    fm_title = meta.get("title") or meta.get("linkTitle") or meta.get("sidebar_label")
    title = str(fm_title).strip() if fm_title else ""
    title = title or markup.first_heading(cleaned) or markup.title_from_path(path)
    return title, cleaned


def convert_pdf(data: bytes, row: dict[str, Any], max_pages: int, counts: Counter[str],
                warnings: list[str], where: str) -> tuple[str, str]:
    """(title, text) page by page with pypdf; encrypted (no empty password) or unreadable PDFs are skipped."""
    import pypdf
    from pypdf.errors import PyPdfError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise SkipFile("pdf_encrypted", f"{where}: encrypted PDF; skipped")
        n_pages = len(reader.pages)
    except SkipFile:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError,
            NotImplementedError) as exc:
        kind = "pdf_encrypted" if "encrypt" in str(exc).lower() or "decrypt" in str(exc).lower() else "pdf_corrupt"
        raise SkipFile(kind, f"{where}: unreadable PDF ({type(exc).__name__}: {exc}); skipped") from None
    if n_pages > max_pages:
        counts["pdf.pages_truncated"] += n_pages - max_pages
        warnings.append(f"{where}: {n_pages} pages, reading the first {max_pages}")
    pages: list[str] = []
    for i in range(min(n_pages, max_pages)):
        try:
            pages.append((reader.pages[i].extract_text() or "").strip())
        except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError,
                NotImplementedError) as exc:
            counts["pdf.page_errors"] += 1
            warnings.append(f"{where}: page {i + 1} unreadable ({type(exc).__name__}); skipped")
    counts["pdf.pages"] += len(pages)
    title = ""
    try:
        title = str((reader.metadata or {}).get("/Title") or "").strip()
    except (PyPdfError, ValueError, KeyError, TypeError):
        title = ""
    text = "\n\n".join(p for p in pages if p)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return title or markup.title_from_path(str(row.get("path") or where)), text


def convert_html(text: str, row: dict[str, Any]) -> tuple[str, str]:
    """Main content via trafilatura, as markdown (headings kept so chunking stays heading-aware)."""
    title, body = html_page_to_markdown(text, row.get("url") or None)
    title = title or markup.first_heading(body)
    return title or markup.title_from_path(str(row.get("path") or row.get("url") or "")), body.strip()


def process_file(row: dict[str, Any], scrape_dir: str, params: dict[str, Any]) -> FileResult:
    """One manifest row -> FileResult. Never raises for bad input: skip reason + warning instead."""
    result = FileResult(key=(doc_id_for(row), str(row.get("local_path"))))
    try:
        with time_budget(float(params["file_timeout_s"])):
            _process(row, Path(scrape_dir), params, result)
    except TimeBudgetExceeded as exc:
        result.doc, result.chunks = None, []
        result.skip = "timeout"
        result.warnings.append(f"{row.get('local_path')}: {exc} (unify.file_timeout_s); skipped")
    except SkipFile as exc:
        result.skip = exc.reason
        (result.warnings if exc.level >= logging.WARNING else result.notes).append(str(exc))
    except Exception as exc:  # noqa: BLE001 - one odd file must not kill a 3,000-file run; it is counted and logged
        result.skip = f"error_{type(exc).__name__}"
        result.warnings.append(f"{row.get('local_path')}: unexpected {type(exc).__name__}: {exc}; skipped")
    return result


def _process(row: dict[str, Any], scrape_dir: Path, params: dict[str, Any], result: FileResult) -> None:
    local = str(row.get("local_path") or "")
    rel = PurePosixPath(local)
    if not local or rel.is_absolute() or ".." in rel.parts:
        raise SkipFile("bad_manifest_row", f"manifest row with unusable local_path {local!r}; skipped")
    path = scrape_dir / rel
    where = str(path)
    if not path.is_file():
        raise SkipFile("missing_file", f"{where}: listed in the manifest but missing; skipped")
    size = path.stat().st_size
    result.nbytes = size
    if size > int(params["max_file_bytes"]):
        raise SkipFile("too_large", f"{where}: {size} bytes, over unify.max_file_bytes={params['max_file_bytes']}")
    if size == 0:
        raise SkipFile("empty", f"{where}: empty file; skipped")
    data = path.read_bytes()
    expected = str(row.get("sha256") or "")
    if expected and sha256_bytes(data) != expected:  # changed after the scrape: still usable, but say so
        result.counts["warnings.sha256_mismatch"] += 1
        result.warnings.append(f"{where}: sha256 differs from the manifest (file changed since the scrape?)")
    kind = file_kind(row)
    max_words, min_words = int(params["chunk_max_words"]), int(params["chunk_min_words"])
    if kind == "pdf":
        if not data.lstrip().startswith(b"%PDF"):
            raise SkipFile("pdf_corrupt", f"{where}: no %PDF header; skipped")
        title, text = convert_pdf(data, row, int(params["pdf_max_pages"]), result.counts, result.warnings,
                                  where)
        pieces = chunk_markdown(text, title, max_words, min_words) if text.strip() else []
    elif kind in ("markdown", "rst", "adoc", "html"):
        raw = decode_text(data, where, result.counts, result.warnings)
        title, text = convert_html(raw, row) if kind == "html" else convert_markdown(raw, row, kind)
        pieces = chunk_markdown(text, title, max_words, min_words) if text.strip() else []
    elif kind in ("yaml", "json"):
        raw = decode_text(data, where, result.counts, result.warnings)
        try:
            sections, _summary = structured.structured_sections(raw, kind)
        except structured.EmptyDocumentError as exc:
            raise SkipFile("empty", f"{where}: {exc}; skipped") from None
        except structured.AliasBombError as exc:
            raise SkipFile("yaml_alias_bomb", f"{where}: {exc}; refused") from None
        except structured.StructuredError as exc:
            raise SkipFile(f"malformed_{kind}", f"{where}: {exc}; skipped") from None
        title = markup.title_from_path(str(row.get("path") or local))
        text = "\n\n".join(f"{desc}\n\n```{kind}\n{body}\n```" for desc, body in sections)
        pieces = chunk_structured(sections, kind, title, max_words)
    else:
        raise SkipFile("unsupported_kind", f"{where}: unsupported kind {kind!r}; skipped")
    if not text.strip() or not pieces:
        raise SkipFile("empty_after_cleanup", f"{where}: no text left after cleanup; skipped", logging.INFO)
    doc_id = result.key[0]
    out_kind = OUTPUT_KIND.get(kind, kind)
    result.doc = {
        "doc_id": doc_id, "project": row.get("project", ""), "source": row.get("source", ""),
        "repo": row.get("repo", ""), "url": row.get("url", ""), "path": row.get("path", ""),
        "commit": row.get("commit", ""), "license": row.get("license", ""), "kind": out_kind,
        "title": title, "text": text,
    }
    for index, (heading_path, chunk_text) in enumerate(pieces):
        result.chunks.append({
            "chunk_id": stable_id(doc_id, str(index), chunk_text), "doc_id": doc_id, "chunk_index": index,
            "project": row.get("project", ""), "kind": out_kind, "title": title, "url": row.get("url", ""),
            "path": row.get("path", ""), "license": row.get("license", ""), "heading_path": heading_path,
            "text": chunk_text, "n_words": count_words(chunk_text),
        })
    result.counts[f"docs_by_kind.{out_kind}"] += 1


def _task_cost(row: dict[str, Any]) -> float:
    """Rough cost for scheduling: PDFs are ~50x slower per byte, so they start first and share the cores."""
    weight = 50.0 if file_kind(row) == "pdf" else 1.0
    return weight * float(row.get("bytes") or 0)


def _work(args: tuple[dict[str, Any], str, dict[str, Any]]) -> FileResult:
    return process_file(*args)


def convert_all(rows: list[dict[str, Any]], scrape_dir: Path, params: dict[str, Any]) -> Iterator[FileResult]:
    """Run process_file over rows with `params['workers']` processes (1 = in this process); any order out."""
    ordered = sorted(rows, key=lambda r: (-_task_cost(r), str(r.get("local_path"))))
    tasks = [(row, str(scrape_dir), params) for row in ordered]
    workers = max(1, int(params["workers"]))
    if workers == 1 or len(tasks) < 2:
        yield from map(_work, tasks)
        return
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=die_with_parent) as pool:
        yield from pool.imap_unordered(_work, tasks, chunksize=1)


def normalised_hash(text: str) -> str:
    """Exact-duplicate key: whitespace collapsed, case folded."""
    return sha256_bytes(" ".join(text.split()).casefold().encode("utf-8"))


def read_manifest(path: Path, metrics: StageMetrics) -> list[dict[str, Any]]:
    """Manifest rows; a line that is not a JSON object is a WARNING + counter, not a crash."""
    import json

    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                log.warning("%s:%d: not a JSON object; skipped", path, n)
                metrics.inc("dropped.bad_manifest_row")
                metrics.inc("errors.bad_manifest_row")
                continue
            rows.append(row)
    return rows


def unify(scrape_dir: Path, out_dir: Path, params: dict[str, Any],
          metrics: StageMetrics | None = None) -> dict[str, int]:
    """data/scrape (manifest.jsonl + files/) -> out_dir/documents.jsonl + chunks.jsonl. Returns the counts."""
    metrics = metrics or StageMetrics("unify")
    missing = [f"unify.{k}" for k in REQUIRED_PARAMS if k not in params]
    if missing:
        raise StageError(f"params.yaml lacks {', '.join(missing)}")
    manifest = Path(scrape_dir) / "manifest.jsonl"
    if not manifest.is_file():
        raise StageError(f"{manifest} not found: run the scrape stage first (dvc repro scrape)")
    rows = read_manifest(manifest, metrics)
    metrics.inc("files_in", len(rows))
    results: list[FileResult] = []
    for res in progress(convert_all(rows, Path(scrape_dir), params), desc="unify", total=len(rows), unit="file"):
        for msg in res.warnings:
            log.warning("%s", msg)
        for msg in res.notes:
            log.info("%s", msg)
        metrics.counts.update(res.counts)
        metrics.inc("bytes_in", res.nbytes)
        if res.skip:
            metrics.inc(f"dropped.{res.skip}")
            if res.skip in ERROR_REASONS or res.skip.startswith("error_"):
                metrics.inc(f"errors.{res.skip}")
        else:
            results.append(res)
    results.sort(key=lambda r: r.key)
    documents, chunks = dedupe(results, metrics)
    n_docs = write_jsonl(Path(out_dir) / "documents.jsonl", documents)
    n_chunks = write_jsonl(Path(out_dir) / "chunks.jsonl", chunks)
    metrics.inc("documents_out", n_docs)
    metrics.inc("chunks_out", n_chunks)
    metrics.inc("words_out", sum(c["n_words"] for c in chunks))
    elapsed = max(metrics.elapsed, 1e-9)
    metrics.set("throughput.mb_per_s", round(metrics.counts["bytes_in"] / 1e6 / elapsed, 3))
    metrics.set("throughput.files_per_s", round(len(rows) / elapsed, 1))
    metrics.set("throughput.chunks_per_s", round(n_chunks / elapsed, 1))
    return {"files_in": len(rows), "documents": n_docs, "chunks": n_chunks, "bytes_in": metrics.counts["bytes_in"]}


def dedupe(results: Iterable[FileResult], metrics: StageMetrics) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Drop documents whose normalised text was already seen (first in doc_id order wins); same doc_id twice too."""
    seen_text: dict[str, str] = {}
    seen_ids: set[str] = set()
    documents: list[dict[str, Any]] = []
    chunks: list[dict[str, Any]] = []
    for res in results:
        assert res.doc is not None
        doc = res.doc
        key = normalised_hash(doc["text"])
        if doc["doc_id"] in seen_ids:
            log.warning("%s: same repo/path as an earlier manifest row; skipped", res.key[1])
            metrics.inc("dropped.duplicate_row")
            continue
        if key in seen_text:
            log.info("%s: same text as document %s; dropped", res.key[1], seen_text[key])
            metrics.inc("dropped.duplicate_document")
            continue
        seen_text[key] = doc["doc_id"]
        seen_ids.add(doc["doc_id"])
        documents.append(doc)
        chunks.extend(res.chunks)
    return documents, chunks

"""unify never crashes on bad input: each bad file is a WARNING naming its path plus a counter; the run goes on.

The bad-input corpus is generated here (tests/data/bad_inputs/ documents it), so no binary blobs live in git.
"""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import pytest

from stages.common.metrics import StageMetrics
from stages.unify import structured
from stages.unify.pipeline import unify
from tests.helpers_scrape_fixture import scrape_from_files

PARAMS = {"chunk_max_words": 300, "chunk_min_words": 30, "max_file_bytes": 50_000, "pdf_max_pages": 20,
          "workers": 1, "file_timeout_s": 60}

BILLION_LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    'b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
    'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n'
    'd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n'
    'e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n'
    'f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n'
    'g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n'
    'h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n'
    'i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n'
)


def pdf_bytes(text: str, password: str | None = None) -> bytes:
    """A one-page PDF with real text, built with pypdf (optionally encrypted with a user password)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(width=612, height=792)
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject(
        {NameObject("/F1"): writer._add_object(font)})})
    stream = DecodedStreamObject()
    stream.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1"))
    page[NameObject("/Contents")] = writer._add_object(stream)
    if password:
        writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="AES-256")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def bad_corpus() -> dict[str, bytes]:
    """Every kind of bad input the issue names, plus good files that must still come through."""
    good_pdf = pdf_bytes("Prometheus scrapes metrics from instrumented jobs over HTTP.")
    return {
        "good.md": b"# Good\n\nThis file is fine and must survive the bad ones around it.\n",
        "good.pdf": good_pdf,
        "corrupt.pdf": b"%PDF-1.7\n" + bytes(range(256)) * 8 + b"\n%%EOF\n",
        "truncated.pdf": good_pdf[: len(good_pdf) // 3],
        "not-a-pdf.pdf": b"<html>an error page saved as pdf</html>",
        "encrypted.pdf": pdf_bytes("Secret text.", password="s3cret"),
        "binary.md": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4,
        "latin1.md": "# Caf\u00e9\n\nWritten in Latin-1: caf\u00e9 cr\u00e8me na\u00efve, mostly ASCII text here."
                     .encode("latin-1"),
        "garbage.md": bytes(range(128, 256)) * 20,
        "empty.md": b"",
        "blank.md": b"  \n\n\t\n",
        "bomb.yaml": BILLION_LAUGHS.encode(),
        "malformed.yaml": b"apiVersion: v1\nkind: Pod\nmetadata: {name: [unclosed\n  - : :\n",
        "malformed.json": b'{"kind": "Pod", "apiVersion": ',
        "huge.md": b"# Huge\n\n" + b"word " * 20_000,
        "front-matter-only.md": b"---\ntitle: Section index\n---\n",
    }


@pytest.fixture
def bad_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> tuple[StageMetrics, list[dict], str]:
    scrape = scrape_from_files(tmp_path / "scrape", bad_corpus())
    metrics = StageMetrics("unify")
    with caplog.at_level(logging.INFO):
        unify(scrape, tmp_path / "unify", PARAMS, metrics)
    docs = [json.loads(x) for x in (tmp_path / "unify" / "documents.jsonl").read_text().splitlines()]
    return metrics, docs, caplog.text


def test_good_files_survive_bad_neighbours(bad_run: tuple[StageMetrics, list[dict], str]) -> None:
    _, docs, _ = bad_run
    paths = sorted(d["path"] for d in docs)
    assert paths == ["good.md", "good.pdf", "latin1.md"]
    pdf = next(d for d in docs if d["path"] == "good.pdf")
    assert "Prometheus scrapes metrics" in pdf["text"] and pdf["kind"] == "pdf"


@pytest.mark.parametrize(("reason", "files"), [
    ("pdf_corrupt", ["corrupt.pdf", "truncated.pdf", "not-a-pdf.pdf"]),
    ("pdf_encrypted", ["encrypted.pdf"]),
    ("binary", ["binary.md", "garbage.md"]),
    ("empty", ["empty.md", "blank.md"]),
    ("yaml_alias_bomb", ["bomb.yaml"]),
    ("malformed_yaml", ["malformed.yaml"]),
    ("malformed_json", ["malformed.json"]),
    ("too_large", ["huge.md"]),
])
def test_each_bad_input_is_counted_and_logged(bad_run: tuple[StageMetrics, list[dict], str], reason: str,
                                              files: list[str]) -> None:
    metrics, _, log_text = bad_run
    assert metrics.counts[f"dropped.{reason}"] == len(files)
    if reason != "empty":  # an empty file is expected, not an error
        assert metrics.counts[f"errors.{reason}"] == len(files)
    for name in files:
        assert any(name in line and "WARNING" in line for line in log_text.splitlines()), name


def test_invalid_utf8_is_replaced_counted_and_warned(bad_run: tuple[StageMetrics, list[dict], str]) -> None:
    metrics, docs, log_text = bad_run
    doc = next(d for d in docs if d["path"] == "latin1.md")
    assert "\ufffd" in doc["text"] and "mostly ASCII text here" in doc["text"]
    assert metrics.counts["warnings.invalid_utf8_replaced"] == 1
    assert any("latin1.md" in ln and "invalid UTF-8" in ln for ln in log_text.splitlines())


def test_front_matter_only_page_is_an_info_not_a_warning(bad_run: tuple[StageMetrics, list[dict], str]) -> None:
    metrics, _, log_text = bad_run
    assert metrics.counts["dropped.empty_after_cleanup"] == 1
    line = next(ln for ln in log_text.splitlines() if "front-matter-only.md" in ln)
    assert line.startswith("INFO")


def test_every_file_accounted_for(bad_run: tuple[StageMetrics, list[dict], str]) -> None:
    metrics, docs, _ = bad_run
    dropped = sum(v for k, v in metrics.counts.items() if k.startswith("dropped."))
    assert metrics.counts["files_in"] == len(bad_corpus()) == len(docs) + dropped


def test_bad_inputs_in_worker_processes_too(tmp_path: Path) -> None:
    scrape = scrape_from_files(tmp_path / "scrape", bad_corpus())
    metrics = StageMetrics("unify")
    unify(scrape, tmp_path / "unify", {**PARAMS, "workers": 2}, metrics)
    assert metrics.counts["documents_out"] == 3 and metrics.counts["dropped.yaml_alias_bomb"] == 1


def test_alias_bomb_refused_fast_but_plain_aliases_allowed() -> None:
    start = time.perf_counter()
    with pytest.raises(structured.AliasBombError):
        structured.safe_load_all(BILLION_LAUGHS)
    assert time.perf_counter() - start < 1.0
    ok = "base: &b {image: nginx, port: 80}\nweb: *b\napi: *b\n"
    assert structured.safe_load_all(ok) == [{"base": {"image": "nginx", "port": 80}, "web": {"image": "nginx",
                                             "port": 80}, "api": {"image": "nginx", "port": 80}}]


def test_unsafe_yaml_tags_are_rejected() -> None:
    with pytest.raises(structured.StructuredError):
        structured.safe_load_all("!!python/object/apply:os.system ['echo pwned']\n")


def test_manifest_rows_with_escaping_paths_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scrape = scrape_from_files(tmp_path / "scrape", {"ok.md": b"# Ok\n\nFine text.\n"})
    with (scrape / "manifest.jsonl").open("a") as fh:
        fh.write(json.dumps({"repo": "x/y", "path": "p.md", "local_path": "../../etc/passwd", "kind": "markdown"})
                 + "\nnot json\n")
    metrics = StageMetrics("unify")
    unify(scrape, tmp_path / "unify", PARAMS, metrics)
    assert metrics.counts["dropped.bad_manifest_row"] == 2 and metrics.counts["documents_out"] == 1
    assert "../../etc/passwd" in caplog.text


def test_sha256_mismatch_is_warned_but_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scrape = scrape_from_files(tmp_path / "scrape", {"ok.md": b"# Ok\n\nFine text.\n"})
    row = json.loads((scrape / "manifest.jsonl").read_text())
    (scrape / "manifest.jsonl").write_text(json.dumps({**row, "sha256": "0" * 64}) + "\n")
    metrics = StageMetrics("unify")
    unify(scrape, tmp_path / "unify", PARAMS, metrics)
    assert metrics.counts["documents_out"] == 1 and metrics.counts["warnings.sha256_mismatch"] == 1
    assert "sha256 differs" in caplog.text

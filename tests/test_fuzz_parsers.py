"""Property tests (hypothesis) over every parser and cleaner that reads outside input.

Random and adversarial markdown, MDX, HTML, YAML, JSON, PDF bytes and StackExchange pages must never raise out
of the stage's entry point, must finish within a generous deadline (the old regex cleaner needed minutes on
some inputs), and must never cost the good files of the same run. Example counts are modest: the whole
module stays well under a minute.
"""

from __future__ import annotations

import json
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages import stackoverflow as S
from stages.common.jsonl import read_jsonl
from stages.common.metrics import StageMetrics
from stages.common.text import clean_markdown, html_fragment_text, html_page_to_markdown, split_fences
from stages.unify import structured
from stages.unify.pipeline import process_file, unify
from tests.helpers_scrape_fixture import scrape_from_files

FAST = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=12, deadline=4000,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Markup-heavy alphabets: random unicode rarely hits a parser's hard cases, these pieces do.
MARKUP_PIECES = ["{{<", ">}}", "{{%", "%}}", "{{< mermaid >}}", "{{< /mermaid >}}", "{{< highlight go >}}",
                 "{{< /highlight >}}", "<!--", "-->", "{/*", "*/}", "```", "~~~", "\n", "\n\n", "    ", "[", "]",
                 "(", ")", "![", "<", ">", "</", "<div>", "</div>", "<Tabs a={x}>", "<br>", "|", "---", "#",
                 "*", "_", "`", ":::note", ":::", "import x from 'y'", "export const a = 1", "&nbsp;", "\\",
                 "- ", "1. ", "> ", "text", " ", "\t", "\r", "\x00", "é", "中文", "<pod-name>", '"']
markup = st.lists(st.sampled_from(MARKUP_PIECES) | st.text(max_size=8), max_size=120).map("".join)
html = st.lists(st.sampled_from(["<", ">", "</", "<p>", "</p>", "<pre>", "<code>", "</code>", "</pre>",
                                  "<script>", "</script>", "<a href='x'>", "</a>", "<!--", "-->", "&amp;",
                                  "&#x0;", "<![CDATA[", "]]>", "<svg", "text", " ", "\n", "<li>", "<table>"])
                | st.text(max_size=6), max_size=100).map("".join)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4),
                           max_leaves=20)


@FAST
@given(markup, st.booleans())
def test_markdown_cleaner_never_raises(text: str, mdx: bool) -> None:
    assert isinstance(clean_markdown(text, mdx=mdx), str)


@FAST
@given(markup)
def test_fence_split_gives_back_the_text(text: str) -> None:
    parts = split_fences(text)
    assert "\n".join(seg for _, seg in parts) == text.replace("\r\n", "\n").replace("\r", "\n")


@FAST
@given(html)
def test_html_fragment_text_never_raises(fragment: str) -> None:
    assert isinstance(html_fragment_text(fragment), str)


@settings(max_examples=25, deadline=4000, suppress_health_check=[HealthCheck.too_slow])
@given(html)
def test_html_page_and_post_converters_never_raise(page: str) -> None:
    title, body = html_page_to_markdown(f"<html><body>{page}</body></html>")
    assert isinstance(title, str) and isinstance(body, str)
    assert isinstance(S.html_to_markdown(page), str)


@FAST
@given(st.one_of(markup, st.builds(json.dumps, json_values)), st.sampled_from(["yaml", "json"]))
def test_structured_parsers_raise_only_their_own_errors(text: str, fmt: str) -> None:
    try:
        sections, _ = structured.structured_sections(text, fmt)
    except (structured.StructuredError, structured.AliasBombError):
        return
    assert all(isinstance(d, str) and isinstance(b, str) for d, b in sections)


PDF_PIECES = [b"%PDF-1.4\n", b"1 0 obj", b"endobj", b"<<", b">>", b"/Type /Page", b"stream\n", b"endstream",
              b"xref", b"trailer", b"%%EOF", b"/Encrypt", b"/Length 99999", b"\x00", b"\xff", b"BT (x) Tj ET"]
pdf_bytes = st.lists(st.sampled_from(PDF_PIECES) | st.binary(max_size=16), max_size=40).map(
    lambda parts: b"%PDF-1.4\n" + b"".join(parts))


@SLOW
@given(files=st.dictionaries(st.sampled_from(["a.md", "b.mdx", "c.yaml", "d.json", "e.pdf", "f.html", "g.rst"]),
                             st.one_of(markup.map(str.encode), st.binary(max_size=200), pdf_bytes), min_size=1))
def test_unify_never_loses_the_good_file_of_the_run(tmp_path_factory: object, files: dict[str, bytes]) -> None:
    """Whatever the other files hold, the run completes and the good file's document is there."""
    tmp = tmp_path_factory.mktemp("fuzz")  # type: ignore[attr-defined]
    good = b"# Good page\n\nPrometheus scrapes metrics from instrumented jobs over HTTP, every few seconds.\n"
    scrape = scrape_from_files(tmp / "scrape", {**files, "good.md": good})
    params = {"chunk_max_words": 50, "chunk_min_words": 5, "max_file_bytes": 100_000, "pdf_max_pages": 5,
              "workers": 1, "file_timeout_s": 5}
    unify(scrape, tmp / "out", params, StageMetrics("unify"))
    # read as JSONL readers do (lines end at "\n"): str.splitlines() would also split a text's U+0085 or U+2028
    docs = list(read_jsonl(tmp / "out" / "documents.jsonl"))
    assert "good.md" in {d["path"] for d in docs}


@SLOW
@given(data=pdf_bytes)
def test_pdf_reader_never_raises_out_of_process_file(tmp_path_factory: object, data: bytes) -> None:
    tmp = tmp_path_factory.mktemp("pdf")  # type: ignore[attr-defined]
    scrape = scrape_from_files(tmp / "scrape", {"x.pdf": data})
    row = next(read_jsonl(scrape / "manifest.jsonl"))
    result = process_file(row, str(scrape), {"chunk_max_words": 50, "chunk_min_words": 5, "max_file_bytes": 10**6,
                                             "pdf_max_pages": 5, "file_timeout_s": 5})
    assert result.skip is None or isinstance(result.skip, str)


questions = st.one_of(json_values, st.fixed_dictionaries(
    {"question_id": st.one_of(st.none(), st.integers(), st.text(max_size=3)), "score": json_values,
     "title": json_values, "body": json_values, "answer_count": json_values,
     "answers": st.one_of(json_values, st.lists(st.fixed_dictionaries(
         {"answer_id": json_values, "question_id": json_values, "score": json_values, "body": json_values,
          "owner": json_values, "is_accepted": json_values}), max_size=3))}))
pages = st.one_of(json_values, st.fixed_dictionaries({"items": st.one_of(json_values, st.lists(questions, max_size=4)),
                                                       "has_more": json_values}))


@SLOW
@given(page_list=st.lists(pages, min_size=1, max_size=4))
def test_stackexchange_replay_never_raises(tmp_path_factory: object, page_list: list[object]) -> None:
    tmp = tmp_path_factory.mktemp("se")  # type: ignore[attr-defined]
    replay = tmp / "replay"
    replay.mkdir()
    for n, page in enumerate(page_list, 1):
        (replay / f"questions_kubernetes_page_{n:03d}.json").write_text(json.dumps(page))
    (replay / f"questions_kubernetes_page_{len(page_list) + 1:03d}.json").write_text(json.dumps(
        {"items": [{"question_id": 1, "score": 5, "title": "Good question", "answers": [
            {"answer_id": 2, "question_id": 1, "score": 3, "body": "A good answer."}]}], "has_more": False}))
    metrics = StageMetrics("stackoverflow")
    source = S.DirSource(replay, metrics)
    cfg = {"page_size": 100, "max_questions_per_tag": 1000, "min_question_score": 1, "min_answer_score": 1,
           "max_answers_per_question": 1, "site": "stackoverflow"}
    pairs, _ = S.collect_tag(source, "Kubernetes", "kubernetes", cfg, metrics)
    assert any(p["question"].startswith("Good question") for p in pairs)  # the good last page is never lost


def test_alphabet_covers_printable() -> None:
    assert set(string.printable) - set("".join(MARKUP_PIECES)) != set(string.printable)

"""Pathological markup: cleaning time stays linear, and a file over its time budget is a counted `timeout`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.common.metrics import StageMetrics
from stages.common.text import clean_markdown
from stages.unify import pipeline
from tests.helpers_scrape_fixture import scrape_from_files

PARAMS = {"chunk_max_words": 300, "chunk_min_words": 30, "max_file_bytes": 5_000_000, "pdf_max_pages": 20,
          "workers": 1, "file_timeout_s": 60}
# The case (a repeated Hugo shortcode) and the units that made the old regex cleaner backtrack.
HOSTILE_UNITS = ['{{< note >}}\nA {{< glossary_tooltip text="Pod" term_id="pod" >}} line.\n', "{{< note ",
                 "{{< mermaid >}} graph ", "{{< highlight go >}}\nx := 1\n", "[a](b(c)[", '<Tabs a="1" b={x} ', "<!-- x ", "*a **b _c "]


@pytest.mark.parametrize("unit", HOSTILE_UNITS)
def test_pathological_markup_is_cleaned_fast(unit: str) -> None:
    """40 KB of each unit: the old cleaner took minutes on several of these (48 s at 20 KB for the first)."""
    text = unit * (40_000 // len(unit))
    start = time.process_time()  # CPU time: a busy shared machine does not make this flaky
    out = clean_markdown(text, mdx=True)
    assert time.process_time() - start < 10  # generous: 0.1-1.5 s of CPU here; the old cleaner took minutes
    assert "{{<" not in out or unit.startswith("{{< note ")  # unclosed shortcodes stay as text


def test_shortcodes_and_links_are_rendered() -> None:
    src = ('Intro {{< glossary_tooltip text="Pods" term_id="pod" >}} and [the docs](https://x.io/a_(b)).\n\n'
           "{{< mermaid >}}\ngraph TD; A-->B\n{{< /mermaid >}}\n\n![logo](logo.png) <b>bold</b> <pod-name>\n\n"
           "{{% heading \"whatsnext\" %}}\n")
    out = clean_markdown(src)
    assert "Intro Pods and the docs." in out
    assert "graph TD" not in out and "logo" not in out and "<b>" not in out
    assert "bold <pod-name>" in out and "What's next" in out


def test_file_over_budget_is_a_counted_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scrape = scrape_from_files(tmp_path / "scrape", {"good.md": b"# Good\n\nA fine page about Pods and Nodes.\n",
                                                      "slow.md": b"# Slow\n\nNever finishes.\n"})
    real = pipeline.convert_markdown

    def spin(text: str, row: dict, kind: str) -> tuple[str, str]:
        while row.get("path") == "slow.md":
            pass
        return real(text, row, kind)

    monkeypatch.setattr(pipeline, "convert_markdown", spin)
    for workers in (1, 2):
        metrics = StageMetrics("unify")
        counts = pipeline.unify(scrape, tmp_path / f"out{workers}", dict(PARAMS, workers=workers, file_timeout_s=1),
                                metrics)
        assert counts["documents"] == 1
        assert metrics.counts["dropped.timeout"] == 1 and metrics.counts["errors.timeout"] == 1
        docs = [json.loads(x) for x in (tmp_path / f"out{workers}" / "documents.jsonl").read_text().splitlines()]
        assert [d["path"] for d in docs] == ["good.md"]


def test_killing_unify_kills_its_workers(tmp_path: Path, repo_root: Path) -> None:
    """SIGTERM and SIGKILL of the stage leave no pool worker behind (they used to linger as orphans)."""
    files = {f"slow{i}.md": b"# Slow\n\n" + b"{{< mermaid >}} x " * 2000 for i in range(40)}
    scrape = scrape_from_files(tmp_path / "scrape", files)
    (tmp_path / "params.yaml").write_text(json.dumps({"unify": dict(PARAMS, workers=2)}))
    hold = tmp_path / "hold.py"  # a worker that sleeps in every file, so the pool is busy when the kill lands
    hold.write_text("import time, runpy, sys\nfrom stages.unify import pipeline\n"
                    "real = pipeline.convert_markdown\n"
                    "def slow(*a):\n    time.sleep(30)\n    return real(*a)\n"
                    "pipeline.convert_markdown = slow\nsys.argv = ['unify'] + sys.argv[1:]\n"
                    "runpy.run_module('stages.unify', run_name='__main__')\n")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen([sys.executable, str(hold), "--params", str(tmp_path / "params.yaml"),
                                 "--scrape-dir", str(scrape), "--out-dir", str(tmp_path / "out"),
                                 "--metrics", str(tmp_path / "m.json")], cwd=repo_root,
                                env=dict(os.environ, PYTHONPATH=str(repo_root)))
        workers: list[int] = []
        deadline = time.time() + 60
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.2)
            workers = children(proc.pid)
        assert len(workers) == 2, "the pool never started"
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline and any(alive(pid) for pid in workers):
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers), f"workers outlived the stage after {sig!r}"


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize(("kind", "unit"), [("rst", "`a <b"), ("rst", ":x:`a <"), ("adoc", "https://x["),
                                            ("adoc", "<<a,"), ("adoc", "image::x[")])
def test_pathological_rst_and_adoc_are_cleaned_fast(kind: str, unit: str) -> None:
    """Unbounded inline patterns made these quadratic on one long line (5 s at 80 KB); bounded now."""
    from stages.unify import markup

    text = unit * (80_000 // len(unit))
    start = time.process_time()
    (markup.clean_rst if kind == "rst" else markup.clean_adoc)(text)
    assert time.process_time() - start < 5


@pytest.mark.parametrize("unit", ["{{", "{%", "a.", "a", "-a", "a@"])
def test_langfilter_prose_is_linear_on_long_tokens(unit: str) -> None:
    """langfilter's prose extraction on one 80 KB token: was quadratic (about 30 s), now well under a second."""
    from stages.langfilter import prose_of

    start = time.process_time()
    prose_of(unit * (80_000 // len(unit)))
    assert time.process_time() - start < 5


@pytest.mark.parametrize("unit", ["[a](b(c)[", "{{< x ", "<a ", "<!--", "[^a", "<http://a", "*a **b _c ", "\n[a"])
def test_qa_gen_merge_and_stackoverflow_cleaners_are_linear(unit: str) -> None:
    """The other stages' text cleaners on 40 KB of one hostile unit (several took 2-15 s before)."""
    from stages import merge, stackoverflow
    from stages.qa_gen import textutil

    text = unit * (40_000 // len(unit))
    for clean in (textutil.clean_inline, textutil.prose_text, merge.normalize_text, stackoverflow.html_to_markdown):
        start = time.process_time()
        clean(text)
        assert time.process_time() - start < 3, clean.__name__

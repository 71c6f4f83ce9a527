"""unify: markdown cleanup, titles, manifests, heading-aware chunking, determinism, the stage entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.common.jsonl import stable_id
from stages.common.metrics import StageMetrics
from stages.unify import markup, structured
from stages.unify.__main__ import main
from stages.unify.chunking import chunk_markdown, chunk_structured, count_words
from stages.unify.pipeline import convert_markdown, unify
from tests.helpers_scrape_fixture import scrape_from_corpus, scrape_from_files

PARAMS = {"chunk_max_words": 60, "chunk_min_words": 10, "max_file_bytes": 1_000_000, "pdf_max_pages": 50,
          "workers": 1, "file_timeout_s": 60}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- titles and cleanup -------------------------------------------------------------------------------------

def test_title_from_yaml_front_matter_wins() -> None:
    title, text = convert_markdown("---\ntitle: Pods\nweight: 10\n---\n# Something else\n\nBody.\n", {"path": "a.md"},
                                   "markdown")
    assert title == "Pods"
    assert "weight" not in text and text.startswith("# Something else")


def test_title_from_toml_front_matter() -> None:
    title, _ = convert_markdown('+++\ntitle = "Jaeger v2"\n+++\nBody text.\n', {"path": "x/_index.md"}, "markdown")
    assert title == "Jaeger v2"


def test_title_falls_back_to_first_heading_then_file_name() -> None:
    assert convert_markdown("Intro.\n\n## Install Helm\n\nRun it.\n", {"path": "a.md"}, "markdown")[0] == "Install Helm"
    assert convert_markdown("Just text.\n", {"path": "docs/getting-started.md"}, "markdown")[0] == "getting started"
    assert convert_markdown("Just text.\n", {"path": "docs/install/_index.md"}, "markdown")[0] == "install"


def test_hugo_shortcodes_dropped_content_kept() -> None:
    src = ('A {{< glossary_tooltip text="Pod" term_id="pod" >}} runs containers.\n\n'
           '{{< note >}}\nKeep this note text.\n{{< /note >}}\n\n'
           '{{% code_sample file="pods/simple-pod.yaml" %}}\n\n'
           '{{< mermaid >}}\ngraph TD; A-->B\n{{< /mermaid >}}\n\n'
           '{{< feature-state for_k8s_version="v1.29" state="stable" >}}\n\n'
           '## {{< heading "prerequisites" >}}\n')
    out = markup.clean_markdown(src)
    assert "A Pod runs containers." in out
    assert "Keep this note text." in out
    assert "{{" not in out and "}}" not in out
    assert "graph TD" not in out and "code_sample" not in out
    assert "Feature state: Kubernetes v1.29 [stable]" in out
    assert "## Before you begin" in out


def test_mdx_imports_jsx_html_comments_links_images() -> None:
    src = ("import Tabs from '@theme/Tabs';\nimport TabItem from '@theme/TabItem';\nexport const x = 1;\n\n"
           "<!-- a comment\nover lines -->\n"
           '<Tabs>\n<TabItem value="linux" label="Linux">\n\nInstall on Linux.\n\n</TabItem>\n</Tabs>\n\n'
           ":::note\nA Docusaurus admonition.\n:::\n\n"
           "See [the docs](https://example.com/docs) and ![logo](img/logo.png) <b>bold</b> <br/> text.\n"
           "Use `kubectl get <pod-name>` for <pod-name> placeholders.\n\n[ref]: https://example.com\n")
    out = markup.clean_markdown(src, mdx=True)
    for gone in ("import ", "export ", "<Tabs", "TabItem", "a comment", ":::", "https://example.com", "logo",
                 "<b>", "<br"):
        assert gone not in out, gone
    for kept in ("Install on Linux.", "A Docusaurus admonition.", "See the docs and", "bold",
                 "`kubectl get <pod-name>`", "for <pod-name> placeholders"):
        assert kept in out, kept


def test_code_blocks_and_tables_kept_verbatim() -> None:
    src = ("Intro.\n\n```yaml\napiVersion: v1\n# {{< not a shortcode in code >}}\n<b>kept</b>\n```\n\n"
           "| Flag | Meaning |\n|---|---|\n| `-n` | namespace |\n")
    out = markup.clean_markdown(src)
    assert "```yaml\napiVersion: v1\n# {{< not a shortcode in code >}}\n<b>kept</b>\n```" in out
    assert "| Flag | Meaning |\n|---|---|\n| `-n` | namespace |" in out


def test_rst_and_adoc_become_markdownish() -> None:
    rst = "Title\n=====\n\nSection\n-------\n\nSee `docs <https://x.io>`_.\n\n.. code-block:: bash\n\n   helm install x\n"
    out = markup.clean_rst(rst)
    assert out.startswith("# Title") and "## Section" in out and "See docs." in out
    assert "```bash\nhelm install x\n```" in out
    adoc = "= Title\n:toc:\n\n== Part\n\nlink:https://x.io[the site]\n\n----\ncode here\n----\n"
    out = markup.clean_adoc(adoc)
    assert "# Title" in out and "## Part" in out and "the site" in out and "```\ncode here\n```" in out
    assert ":toc:" not in out


# --- YAML / JSON --------------------------------------------------------------------------------------------

def test_manifest_description_single_and_multi_document() -> None:
    deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: nginx-deployment\nspec:\n  replicas: 3\n"
    sections, summary = structured.structured_sections(deploy, "yaml")
    assert summary == "Kubernetes Deployment `nginx-deployment` (apps/v1)"
    multi = deploy + "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: nginx\n"
    sections, _ = structured.structured_sections(multi, "yaml")
    assert [d for d, _ in sections] == ["Kubernetes Deployment `nginx-deployment` (apps/v1)",
                                        "Kubernetes Service `nginx` (v1)"]
    chunks = chunk_structured(sections, "yaml", "nginx", 300)
    assert len(chunks) == 2
    assert chunks[1][1].startswith("Kubernetes Service `nginx` (v1)\n\n```yaml\napiVersion: v1\n")
    assert chunks[1][1].endswith("```")


def test_config_yaml_and_json_described_by_keys() -> None:
    _, summary = structured.structured_sections("global:\n  scrape_interval: 15s\nrule_files: []\n", "yaml")
    assert summary == "YAML configuration with top-level keys: global, rule_files"
    _, summary = structured.structured_sections('{"name": "x", "version": "1.0"}', "json")
    assert summary == "JSON configuration with top-level keys: name, version"


def test_large_manifest_split_at_line_boundaries() -> None:
    body = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n" + "".join(
        f"  key{i}: value number {i}\n" for i in range(200))
    sections, _ = structured.structured_sections(body, "yaml")
    chunks = chunk_structured(sections, "yaml", "big", 100)
    assert len(chunks) > 3
    for _, text in chunks:
        assert count_words(text) <= 100
        assert text.startswith("Kubernetes ConfigMap `big` (v1)\n\n```yaml\n") and text.endswith("\n```")
    lines = [ln for _, t in chunks for ln in t.split("\n")[3:-1]]
    assert lines == body.rstrip("\n").split("\n")  # every line once, in order, none cut


# --- chunking -----------------------------------------------------------------------------------------------

def words(n: int, word: str = "word") -> str:
    return " ".join(f"{word}{i}." for i in range(n))


def test_chunks_never_span_top_level_sections_and_small_subsections_merge() -> None:
    text = (f"# Guide\n\nIntro {words(5)}\n\n## Alpha\n\n{words(5, 'a')}\n\n### Alpha one\n\n{words(4, 'b')}\n\n"
            f"## Beta\n\n{words(3, 'c')}\n")
    chunks = chunk_markdown(text, "Guide", max_words=60, min_words=10)
    texts = [t for _, t in chunks]
    assert not any("a0." in t and "c0." in t for t in texts)  # Alpha and Beta never share a chunk
    alpha = [c for c in chunks if "a0." in c[1]]
    assert len(alpha) == 1 and "b0." in alpha[0][1]  # small subsection merged into its top-level section
    assert alpha[0][0] == ["Guide", "Alpha"]
    beta = [c for c in chunks if "c0." in c[1]]
    assert beta[0][0] == ["Guide", "Beta"] and beta[0][1].startswith("## Beta")


def test_heading_path_lists_title_and_ancestors() -> None:
    text = f"## Install\n\n### On Linux\n\n{words(40)}\n\n### On macOS\n\n{words(40, 'm')}\n"
    chunks = chunk_markdown(text, "Helm", max_words=50, min_words=5)
    assert [p for p, _ in chunks] == [["Helm", "Install", "On Linux"], ["Helm", "Install", "On macOS"]]


def test_chunk_size_bound_paragraph_sentence_and_code() -> None:
    long_para = " ".join(f"Sentence {i} has exactly six words." for i in range(100))
    code = "```bash\n" + "\n".join(f"echo line {i}" for i in range(150)) + "\n```"
    text = f"# T\n\n{long_para}\n\n## Code\n\n{code}\n"
    chunks = chunk_markdown(text, "T", max_words=50, min_words=10)
    assert all(count_words(t) <= 50 for _, t in chunks)
    prose = [t for _, t in chunks if "Sentence" in t]
    assert all(t.rstrip().endswith(".") for t in prose)  # cut between sentences, not inside them
    code_parts = [t for _, t in chunks if "echo line" in t]
    assert len(code_parts) > 1
    for part in code_parts:
        body = part[part.index("```bash"):]
        assert body.startswith("```bash\n") and body.endswith("\n```")
    echoed = [ln for p in code_parts for ln in p.split("\n") if ln.startswith("echo")]
    assert echoed == [f"echo line {i}" for i in range(150)]


def test_small_code_block_kept_whole() -> None:
    code = "```yaml\n" + "\n".join(f"k{i}: v" for i in range(20)) + "\n```"
    text = f"# T\n\n{words(30)}\n\n{code}\n"
    chunks = chunk_markdown(text, "T", max_words=45, min_words=5)
    assert any(code in t for _, t in chunks)


def test_cjk_text_is_bounded_too() -> None:
    text = "# 标题\n\n" + "这是一个很长的中文段落。" * 100
    chunks = chunk_markdown(text, "标题", max_words=80, min_words=10)
    assert len(chunks) > 5 and all(count_words(t) <= 80 for _, t in chunks)


# --- the stage over files -----------------------------------------------------------------------------------

def test_unify_outputs_follow_the_contract(tmp_path: Path) -> None:
    scrape = scrape_from_files(tmp_path / "scrape", {
        "docs/a.md": b"---\ntitle: Alpha\n---\n## One\n\nFirst section text here.\n",
        "docs/b.md": b"---\ntitle: Alpha copy\n---\n## One\n\nFirst   section text here.\n",  # same text: dup
        "k8s/deploy.yaml": b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n",
    })
    metrics = StageMetrics("unify")
    counts = unify(scrape, tmp_path / "unify", PARAMS, metrics)
    docs, chunks = read(tmp_path / "unify" / "documents.jsonl"), read(tmp_path / "unify" / "chunks.jsonl")
    assert counts["documents"] == len(docs) == 2 and metrics.counts["dropped.duplicate_document"] == 1
    assert [d["doc_id"] for d in docs] == sorted(d["doc_id"] for d in docs)
    assert set(docs[0]) == {"doc_id", "project", "source", "repo", "url", "path", "commit", "license", "kind",
                            "title", "text"}
    assert set(chunks[0]) == {"chunk_id", "doc_id", "chunk_index", "project", "kind", "title", "url", "path",
                              "license", "heading_path", "text", "n_words"}
    assert [(c["doc_id"], c["chunk_index"]) for c in chunks] == sorted((c["doc_id"], c["chunk_index"]) for c in chunks)
    yaml_chunk = next(c for c in chunks if c["kind"] == "yaml")
    assert yaml_chunk["text"].startswith("Kubernetes Deployment `web` (apps/v1)\n\n```yaml\n")
    md_doc = next(d for d in docs if d["kind"] == "markdown")
    first = min(["docs/a.md", "docs/b.md"], key=lambda p: stable_id("example/docs", p))
    assert md_doc["path"] == first and md_doc["doc_id"] == stable_id("example/docs", first)  # first in order wins
    assert all(c["n_words"] == count_words(c["text"]) for c in chunks)


def test_unify_is_deterministic_and_independent_of_workers(tmp_path: Path, corpus: Path) -> None:
    """A real slice with a PDF, MDX and localized pages: 1 worker and 2 workers give byte-identical files."""
    scrape = scrape_from_corpus(corpus, tmp_path / "scrape", trees=("prometheus__docs", "helm__helm-www"))
    outputs = []
    for workers in (1, 2, 2):
        out = tmp_path / f"unify_{len(outputs)}"
        unify(scrape, out, {**PARAMS, "chunk_max_words": 300, "chunk_min_words": 30, "workers": workers})
        outputs.append(((out / "documents.jsonl").read_bytes(), (out / "chunks.jsonl").read_bytes()))
    assert outputs[0] == outputs[1] == outputs[2]
    docs = [json.loads(x) for x in outputs[0][0].decode().splitlines()]
    assert any(d["kind"] == "pdf" for d in docs) and len(docs) > 150


def test_main_writes_outputs_and_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scrape_from_files(tmp_path / "data" / "scrape", {"a.md": b"# A\n\nSome text about Kubernetes pods.\n"})
    (tmp_path / "params.yaml").write_text("unify:\n  chunk_max_words: 300\n  chunk_min_words: 30\n"
                                          "  max_file_bytes: 1000000\n  pdf_max_pages: 10\n  workers: 1\n  file_timeout_s: 60\n")
    monkeypatch.chdir(tmp_path)
    main([])
    assert len(read(tmp_path / "data" / "unify" / "chunks.jsonl")) == 1
    metrics = json.loads((tmp_path / "metrics" / "unify.json").read_text())
    assert metrics["files_in"] == 1 and metrics["documents_out"] == 1 and "throughput" in metrics


def test_missing_manifest_and_bad_params_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    from stages.common.cli import run_cli

    (tmp_path / "params.yaml").write_text("unify:\n  chunk_max_words: 300\n  chunk_min_words: 30\n"
                                          "  max_file_bytes: 1000000\n  pdf_max_pages: 10\n  workers: 1\n  file_timeout_s: 60\n")
    monkeypatch.chdir(tmp_path)
    assert run_cli(main, []) == 1
    err = capfd.readouterr().err
    assert "run the scrape stage first" in err and "Traceback" not in err
    (tmp_path / "params.yaml").write_text("unify:\n  workers: 1\n")
    scrape_from_files(tmp_path / "data" / "scrape", {"a.md": b"# A\n\nText.\n"})
    assert run_cli(main, []) == 1
    err = capfd.readouterr().err
    assert "unify.chunk_max_words" in err and "Traceback" not in err


def test_html_main_content_with_headings() -> None:
    from stages.unify.pipeline import convert_html

    html = ("<html><head><title>Linkerd: Getting started</title></head><body>"
            '<nav><a href="/">Home</a> <a href="/docs">Docs menu</a></nav><main><article><h1>Getting started</h1>'
            "<p>Linkerd is a service mesh for Kubernetes. It makes running services easier and safer by giving you "
            "runtime debugging, observability, reliability, and security.</p><h2>Step 1: Install the CLI</h2>"
            "<p>If this is your first time running Linkerd, you will need to download the linkerd CLI onto your "
            "local machine.</p></article></main><footer>Copyright 2024 The Linkerd Authors.</footer></body></html>")
    title, text = convert_html(html, {"url": "https://linkerd.io/getting-started/", "path": "/getting-started/"})
    assert title == "Getting started"
    assert "## Step 1: Install the CLI" in text and "service mesh" in text
    assert "Docs menu" not in text and "Copyright" not in text
    chunks = chunk_markdown(text, title, max_words=300, min_words=5)
    assert ["Getting started", "Step 1: Install the CLI"] in [p for p, _ in chunks]

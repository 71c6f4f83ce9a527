"""Corpus-shaped qa_gen inputs built from the shared corpus, standing in for unify/langfilter/scrape output.

Why here: qa_gen must not import other stages, and its upstream is written in parallel. These helpers split
corpus markdown by headings into chunks with a heading_path (the unify contract), keep English files by the
corpus ground truth (what langfilter decides), wrap example manifests as "description + fenced block" chunks,
and read the real landscape into projects.jsonl records.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stages.common.jsonl import stable_id
from stages.common.schema import QaGenParams, validate_params
from tests.pinned_params import pinned

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def _front_matter(text: str) -> tuple[str, str]:
    """(title, body) of a markdown file with optional YAML front matter."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end > 0:
            head, body = text[4:end], text[end + 4 :]
            m = re.search(r"^title:\s*[\"']?(.*?)[\"']?\s*$", head, re.M)
            return (m.group(1) if m else ""), body
    return "", text


def _sections(body: str, title: str) -> Iterator[tuple[list[str], str]]:
    stack: list[tuple[int, str]] = []
    buf: list[str] = []
    in_code = False

    def path() -> list[str]:
        names = [t for _, t in stack]
        return ([title] if title and (not names or names[0] != title) else []) + names

    for line in body.splitlines():
        if FENCE.match(line):
            in_code = not in_code
        m = None if in_code else HEADING.match(line)
        if m:
            yield path(), "\n".join(buf)
            buf = []
            level = len(m.group(1))
            stack = [(lv, t) for lv, t in stack if lv < level] + [(level, m.group(2))]
            continue
        buf.append(line)
    yield path(), "\n".join(buf)


def _paragraph_chunks(text: str, max_words: int) -> Iterator[str]:
    paragraphs, buf, in_code = [], [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_code = not in_code
        if not line.strip() and not in_code:
            if buf:
                paragraphs.append("\n".join(buf))
            buf = []
        else:
            buf.append(line)
    if buf:
        paragraphs.append("\n".join(buf))
    chunk, size = [], 0
    for para in paragraphs:
        n = len(para.split())
        if chunk and size + n > max_words:
            yield "\n\n".join(chunk)
            chunk, size = [], 0
        chunk.append(para)
        size += n
    if chunk:
        yield "\n\n".join(chunk)


def qa_gen_params(**overrides: Any) -> QaGenParams:
    """The pinned `qa_gen:` section with `overrides` merged over it (llm/qag dicts merge key by key), validated
    as the stage validates it: the stage's code reads every value from here, with no defaults of its own."""
    return validate_params("qa_gen", QaGenParams, pinned("qa_gen", **overrides))


def corpus_chunks(
    corpus: Path, max_words: int = 300, projects: set[str] | None = None
) -> list[dict[str, Any]]:
    """Chunks in the data/langfilter/chunks.jsonl shape for the corpus's English markdown and YAML files."""
    chunks: list[dict[str, Any]] = []
    with (corpus / "MANIFEST.csv").open(encoding="utf-8") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["local_path"])
    for row in rows:
        if projects and row["project"] not in projects:
            continue
        if row["kind"] not in ("markdown", "yaml") or (row["kind"] == "markdown" and row["lang"] != "en"):
            continue
        if not row["local_path"].startswith("repos/"):
            continue
        text = (corpus / row["local_path"]).read_text(encoding="utf-8", errors="replace")
        doc_id = stable_id(row["source_repo"], row["source_path"])
        base = {
            "doc_id": doc_id,
            "project": row["project"],
            "kind": row["kind"],
            "path": row["source_path"],
            "url": f"https://github.com/{row['source_repo']}/blob/{row['commit']}/{row['source_path']}",
            "license": row["license"],
            "lang": "en",
            "lang_score": 1.0,
        }
        if row["kind"] == "yaml":
            name = Path(row["source_path"]).name
            title = name
            body = (
                f"Example manifest {row['source_path']} from {row['project']}.\n```yaml\n{text.strip()}\n```"
            )
            pieces = [([], body)]
        else:
            title, body = _front_matter(text)
            sections = list(_sections(body, title))
            if not title:
                title = next((p[0] for p, _ in sections if p), Path(row["source_path"]).stem)
            pieces = [(p, piece) for p, sec in sections for piece in _paragraph_chunks(sec, max_words)]
        for index, (heading_path, piece) in enumerate(pieces):
            if len(piece.split()) < 5:
                continue
            chunks.append(
                {
                    **base,
                    "chunk_id": stable_id(doc_id, str(index)),
                    "title": title,
                    "heading_path": heading_path,
                    "text": piece.strip(),
                    "n_words": len(piece.split()),
                }
            )
    return chunks


def landscape_projects(corpus: Path) -> list[dict[str, Any]]:
    """CNCF projects of the real landscape in the data/scrape/projects.jsonl shape."""
    import yaml

    data = yaml.safe_load((corpus / "landscape" / "landscape.yml").read_text(encoding="utf-8"))
    out = []
    for category in data.get("landscape") or []:
        for sub in category.get("subcategories") or []:
            for entry in sub.get("items") or []:
                item = (entry.get("item") or entry) if isinstance(entry, dict) else {}
                if not isinstance(item, dict) or not item.get("project"):
                    continue
                extra = item.get("extra") or {}
                out.append(
                    {
                        "project": item["name"],
                        "category": category.get("name", ""),
                        "subcategory": sub.get("name", ""),
                        "maturity": item["project"],
                        "repo_url": item.get("repo_url", ""),
                        "homepage_url": item.get("homepage_url", ""),
                        "docs_url": extra.get("documentation_url", ""),
                        "license": "",
                        "description": item.get("description", ""),
                        "stack_overflow_url": item.get("stack_overflow_url", ""),
                        "additional_repos": [
                            r.get("repo_url", "") for r in item.get("additional_repos") or []
                        ],
                    }
                )
    return sorted(out, key=lambda r: r["project"])


def test_corpus_chunks_follow_the_unify_contract(corpus: Path) -> None:
    chunks = corpus_chunks(corpus, projects={"Helm"})
    assert len(chunks) > 100
    keys = {
        "chunk_id",
        "doc_id",
        "project",
        "kind",
        "title",
        "url",
        "path",
        "license",
        "heading_path",
        "text",
        "n_words",
    }
    assert all(keys <= set(c) for c in chunks)
    assert len({c["chunk_id"] for c in chunks}) == len(chunks)
    assert any(c["heading_path"] for c in chunks)


def test_landscape_projects_have_graduated_cncf_projects(corpus: Path) -> None:
    projects = {p["project"]: p for p in landscape_projects(corpus)}
    assert projects["Kubernetes"]["maturity"] == "graduated"
    assert "Prometheus" in projects


@pytest.fixture(scope="session")
def corpus_inputs(corpus: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return corpus_chunks(corpus), landscape_projects(corpus)

"""Lay out a fake data/scrape (manifest.jsonl + files/) to the manifest contract, without the scrape stage.

The shared corpus is linked (symlinks), never copied, into a temp folder; its MANIFEST.csv gives provenance and
the per-file language used as ground truth by the langfilter quality test and the benchmark.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

EXT_KIND = {"md": "markdown", "mdx": "markdown", "pdf": "pdf", "yaml": "yaml", "yml": "yaml", "json": "json",
            "html": "html", "htm": "html", "rst": "rst", "adoc": "adoc"}


def corpus_rows(corpus: Path, prefix: str = "repos/", trees: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """MANIFEST.csv rows under `prefix` (optionally only some <owner>__<repo> trees), in file order."""
    with (corpus / "MANIFEST.csv").open(encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["local_path"].startswith(prefix)]
    if trees:
        rows = [r for r in rows if r["local_path"].split("/")[1] in trees]
    return rows


def scrape_from_corpus(corpus: Path, dest: Path, trees: tuple[str, ...] = ()) -> Path:
    """dest/manifest.jsonl + dest/files/<owner>__<repo>/<path> symlinks for the corpus repos; returns dest."""
    records = []
    for r in corpus_rows(corpus, trees=trees):
        rel = r["local_path"].removeprefix("repos/")
        link = dest / "files" / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink(corpus / r["local_path"], link)
        records.append({
            "project": r["project"], "source": "mirror", "url": f"https://github.com/{r['source_repo']}/blob/"
            f"{r['commit']}/{r['source_path']}", "repo": r["source_repo"], "path": r["source_path"],
            "commit": r["commit"], "license": r["license"], "sha256": r["sha256"], "bytes": int(r["bytes"]),
            "kind": r["kind"], "local_path": f"files/{rel}",
        })
    return write_manifest(dest, records)


def write_manifest(dest: Path, records: list[dict[str, Any]]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / "manifest.jsonl").open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
    return dest


def scrape_from_files(dest: Path, files: dict[str, bytes], repo: str = "example/docs",
                      project: str = "Example") -> Path:
    """A scrape folder from {path: content}; kind from the extension (unknown -> markdown)."""
    records = []
    for path, data in sorted(files.items()):
        target = dest / "files" / repo.replace("/", "__") / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        ext = path.rsplit(".", 1)[-1].lower()
        records.append({
            "project": project, "source": "github", "url": f"https://github.com/{repo}/blob/main/{path}",
            "repo": repo, "path": path, "commit": "0" * 40, "license": "Apache-2.0", "sha256": "",
            "bytes": len(data), "kind": EXT_KIND.get(ext, "markdown"),
            "local_path": f"files/{repo.replace('/', '__')}/{path}",
        })
    return write_manifest(dest, records)

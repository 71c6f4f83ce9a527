"""Where scraped files live: the resumable per-repo cache, and the materialized data/scrape output.

The cache holds one folder per `owner__repo@commit`; its `meta.json` is written last and is the completion
marker, so a folder without it is a repo whose download was interrupted (its finished files are reused).
The output (files/ + manifest.jsonl) is rebuilt from scratch each run, so it never holds stale files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.common.jsonl import atomic_write, sha256_bytes, write_json
from stages.common.progress import progress
from stages.scrape.select import file_kind, is_safe_path

log = logging.getLogger(__name__)

COMPLETE_MARKER = "meta.json"


@dataclass
class RepoSnapshot:
    """One repository at one commit, ready to be copied into the output."""

    project: str
    source: str  # github | mirror | web
    repo: str  # owner/name (host for web)
    commit: str
    license: str
    root: Path  # local folder holding the files under their repo paths
    paths: list[str] = field(default_factory=list)
    url_for: Callable[[str], str] | None = None

    @property
    def slug(self) -> str:
        """Folder under files/: owner__repo for repositories, web/<host> for websites."""
        return f"web/{self.repo.replace(':', '_')}" if self.source == "web" else self.repo.replace("/", "__")

    def url(self, path: str) -> str:
        if self.url_for is not None:
            return self.url_for(path)
        return f"https://github.com/{self.repo}/blob/{self.commit}/{path}"


def git_blob_sha(data: bytes) -> str:
    """The sha GitHub's tree API gives a file: lets a resumed run trust a file it already has."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


def params_fingerprint(params: dict[str, Any]) -> str:
    """The selection params a cached repo was made with; a change invalidates the repo's file list."""
    keys = ("extensions", "exclude_dirs", "max_file_bytes")
    blob = json.dumps({k: params.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_folder(cache_dir: Path, owner: str, repo: str, commit: str) -> Path:
    return cache_dir / "github" / f"{owner}__{repo}@{commit}"


def read_complete(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    """The meta of a finished cached repo made with the same selection params, else None."""
    meta_path = folder / COMPLETE_MARKER
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("unreadable cache marker %s (%s); the repo is fetched again", meta_path, exc)
        return None
    if meta.get("fingerprint") != fingerprint:
        return None
    return meta


def mark_complete(folder: Path, meta: dict[str, Any]) -> None:
    write_json(folder / COMPLETE_MARKER, meta)


def write_cached_file(folder: Path, path: str, data: bytes) -> None:
    """Atomic write of one downloaded file under the repo's cache folder (path checked safe first)."""
    if not is_safe_path(path):
        raise ValueError(f"unsafe path {path!r}")
    with atomic_write(folder / "files" / path, mode="wb", encoding=None) as fh:
        fh.write(data)


def materialize(snapshots: Iterable[RepoSnapshot], out_dir: Path) -> list[dict[str, Any]]:
    """Copy every snapshot's files to out_dir/files/<slug>/<path>; return manifest records sorted by path.

    The new tree is built beside the old one and swapped in at the end, so a reader (or a crash) never sees
    a half-written files/ folder next to an older manifest.
    """
    files_dir = out_dir / "files"
    building = out_dir / ".files.building"
    for leftover in (building, out_dir / ".files.old"):
        if leftover.exists():
            shutil.rmtree(leftover)
    building.mkdir(parents=True)
    records: list[dict[str, Any]] = []
    ordered = sorted(snapshots, key=lambda s: s.slug)
    for snap in progress(ordered, desc="materialize", total=len(ordered), unit="repo"):
        for path in sorted(set(snap.paths)):
            if not is_safe_path(path):  # the sources check this already; the output dir is checked again here
                log.warning("refusing unsafe path %r from %s", path, snap.repo)
                continue
            data = (snap.root / path).read_bytes()
            rel = f"{snap.slug}/{path}"
            target = building / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)  # no fsync per file: an interrupted run rebuilds the whole folder
            records.append({
                "project": snap.project, "source": snap.source, "url": snap.url(path), "repo": snap.repo,
                "path": path, "commit": snap.commit, "license": snap.license, "sha256": sha256_bytes(data),
                "bytes": len(data), "kind": kind_of(snap, path), "local_path": f"files/{rel}",
            })
    if files_dir.exists():
        files_dir.rename(out_dir / ".files.old")
    building.rename(files_dir)
    if (out_dir / ".files.old").exists():
        shutil.rmtree(out_dir / ".files.old")
    records.sort(key=lambda r: r["local_path"])
    return records


def kind_of(snap: RepoSnapshot, path: str) -> str:
    """The manifest kind; a web page saved as x.html is html whatever its URL looked like."""
    return file_kind(path) or ("html" if snap.source == "web" else "markdown")

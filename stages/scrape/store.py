"""Where scraped files live: the resumable per-repo cache, and the materialized data/scrape output.

The cache holds one folder per `owner__repo@commit`; its `meta.json` is written last and is the completion
marker, so a folder without it is a repo whose download was interrupted (its finished files are reused).
The output (files/ + manifest.jsonl) is rebuilt from scratch each run, so it never holds stale files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.common.fs import UnsafePathError, read_regular_file, resolve_under
from stages.common.jsonl import atomic_write, sha256_bytes, write_json
from stages.common.progress import progress
from stages.scrape.select import file_kind, is_commit_id, is_github_owner, is_github_repo_name, is_safe_path

log = logging.getLogger(__name__)

COMPLETE_MARKER = "meta.json"
BUILDING = ".files.building"


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
    blob = json.dumps({k: params[k] for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_folder(cache_dir: Path, owner: str, repo: str, commit: str) -> Path:
    """cache_dir/github/<owner>__<repo>@<commit>: every part validated, the result checked to stay inside."""
    if not (is_github_owner(owner) and is_github_repo_name(repo) and is_commit_id(commit)):
        raise UnsafePathError(f"refusing cache folder for {owner!r}/{repo!r}@{commit!r}: not GitHub names")
    return resolve_under(Path(cache_dir) / "github", f"{owner}__{repo}@{commit}")


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
        raise UnsafePathError(f"unsafe path {path!r}")
    with atomic_write(resolve_under(folder / "files", path), mode="wb", encoding=None) as fh:
        fh.write(data)


def materialize(snapshots: Iterable[RepoSnapshot], out_dir: Path,
                skipped: Counter[str] | None = None) -> list[dict[str, Any]]:
    """Copy every snapshot's files to out_dir/.files.building/<slug>/<path>; return manifest records by path.

    Nothing visible changes here: `publish` swaps the folder in together with the manifest. Only regular files
    are read (never through a symlink, never a FIFO); every target is checked to stay inside the folder.
    """
    skipped = skipped if skipped is not None else Counter()
    building = out_dir / BUILDING
    if building.exists():
        shutil.rmtree(building)
    building.mkdir(parents=True)
    records: list[dict[str, Any]] = []
    ordered = sorted(snapshots, key=lambda s: s.slug)
    for snap in progress(ordered, desc="materialize", total=len(ordered), unit="repo"):
        for path in sorted(set(snap.paths)):
            rel = f"{snap.slug}/{path}"
            if not is_safe_path(path) or not is_safe_path(rel):  # the sources check paths; slugs are checked here
                log.warning("refusing unsafe path %r from %s", rel, snap.repo)
                skipped["unsafe_path"] += 1
                continue
            try:
                data = read_regular_file(resolve_under(snap.root, path))
                target = resolve_under(building, rel)
            except (UnsafePathError, OSError) as exc:
                log.warning("%s: %s; skipped", rel, exc)
                skipped["not_regular_file" if isinstance(exc, UnsafePathError) else "unreadable"] += 1
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)  # no fsync per file: an interrupted run rebuilds the whole folder
            records.append({
                "project": snap.project, "source": snap.source, "url": snap.url(path), "repo": snap.repo,
                "path": path, "commit": snap.commit, "license": snap.license, "sha256": sha256_bytes(data),
                "bytes": len(data), "kind": kind_of(snap, path), "local_path": f"files/{rel}",
            })
    records.sort(key=lambda r: r["local_path"])
    return records


def publish(out_dir: Path, small_files: dict[str, bytes]) -> None:
    """Swap the built files/ in together with the small outputs (manifest, projects, landscape).

    Everything is fully written beside the old outputs first, so a failure before this point leaves the previous
    run's outputs untouched, and a reader never sees a new files/ next to an old manifest (or the reverse).
    """
    staged: list[tuple[Path, Path]] = []
    for name, data in sorted(small_files.items()):
        final = resolve_under(out_dir, name)
        tmp = final.with_name(f".{final.name}.building")
        tmp.write_bytes(data)
        staged.append((tmp, final))
    files_dir, old = out_dir / "files", out_dir / ".files.old"
    if old.exists():
        shutil.rmtree(old)
    if files_dir.exists():
        files_dir.rename(old)
    (out_dir / BUILDING).rename(files_dir)
    for tmp, final in staged:
        os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def kind_of(snap: RepoSnapshot, path: str) -> str:
    """The manifest kind; a web page saved as x.html is html whatever its URL looked like."""
    return file_kind(path) or ("html" if snap.source == "web" else "markdown")

"""Offline source: local `<owner>__<repo>/` trees (clones or copies) read with the GitHub selection rules.

Each tree is tied to a selected project by its owner/repo, so an HPC node or a laptop without internet builds
the same manifest shape as a live scrape. Commit: the checkout's git HEAD, else a hash of the tree's content.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from stages.common.cli import StageError
from stages.common.fs import UnsafePathError, decodable_name, read_regular_file
from stages.scrape.landscape import project_repos
from stages.scrape.select import is_github_owner, is_github_repo_name, skip_reason
from stages.scrape.store import RepoSnapshot

log = logging.getLogger(__name__)

LICENSE_MARKERS = (  # (SPDX id, phrase found in the licence text), most specific first
    ("Apache-2.0", "apache license"),
    ("CC-BY-4.0", "creative commons attribution 4.0"),
    ("CC-BY-4.0", "cc-by-4.0"),
    ("MIT", "permission is hereby granted, free of charge"),
)


def split_tree_name(name: str) -> tuple[str, str] | None:
    """(owner, repo) of an `<owner>__<repo>` tree name that follows GitHub's naming rules, else None."""
    owner, sep, repo = name.partition("__")
    return (owner, repo) if sep and is_github_owner(owner) and is_github_repo_name(repo) else None


def assign_trees(names: list[str], projects: list[dict[str, Any]],
                 repo_projects: dict[str, str]) -> dict[str, str | None]:
    """Tree name -> project name: repo_projects first, then an exact repo, then the repo's owner."""
    by_repo: dict[str, str] = {}
    by_owner: dict[str, list[str]] = {}
    for project in sorted(projects, key=lambda p: p["project"]):
        for owner, repo in project_repos(project):
            by_repo.setdefault(f"{owner}/{repo}".lower(), project["project"])
            by_owner.setdefault(owner.lower(), [])
            if project["project"] not in by_owner[owner.lower()]:
                by_owner[owner.lower()].append(project["project"])
    overrides = {k.lower(): v for k, v in (repo_projects or {}).items()}
    selected = {p["project"] for p in projects}
    out: dict[str, str | None] = {}
    for name in sorted(names):
        key = split_tree_name(name)
        if key is None:
            out[name] = None
            continue
        full = f"{key[0]}/{key[1]}".lower()
        if full in overrides and overrides[full] in selected:
            out[name] = overrides[full]
        elif full in by_repo:
            out[name] = by_repo[full]
        elif key[0].lower() in by_owner:
            candidates = by_owner[key[0].lower()]
            if len(candidates) > 1:
                log.warning("tree %s: owner %s belongs to %s; taking %s", name, key[0], candidates, candidates[0])
            out[name] = candidates[0]
        else:
            out[name] = None
    return out


def scan_tree(root: Path, params: dict[str, Any]) -> tuple[list[str], Counter[str]]:
    """Selected repo paths under root (sorted) and the skipped ones by reason.

    Symlinks are never followed (files or folders), only regular files are taken (a FIFO named *.md would
    block the reader forever), and names that are not valid UTF-8 are skipped and counted.
    """
    paths: list[str] = []
    skipped: Counter[str] = Counter()
    excluded = set(params["exclude_dirs"])
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        kept_dirs = []
        for d in sorted(dirnames):
            if d in excluded or d == ".git":
                if d != ".git":
                    skipped["excluded_dir"] += 1
                continue
            if not decodable_name(d):
                skipped["undecodable_name"] += 1
                continue
            if (Path(dirpath) / d).is_symlink():
                skipped["unsafe_path"] += 1
                continue
            kept_dirs.append(d)
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            if not decodable_name(name):
                skipped["undecodable_name"] += 1
                continue
            full = Path(dirpath) / name
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            try:
                info = full.lstat()
            except OSError:
                skipped["unreadable"] += 1
                continue
            if stat.S_ISLNK(info.st_mode):  # could point anywhere on the machine
                skipped["unsafe_path"] += 1
                continue
            if not stat.S_ISREG(info.st_mode):  # FIFO, socket, device
                skipped["not_regular_file"] += 1
                continue
            reason = skip_reason(rel, info.st_size, params)
            if reason:
                skipped[reason] += 1
            else:
                paths.append(rel)
    return sorted(paths), skipped


def tree_commit(root: Path, paths: list[str]) -> str:
    """git HEAD of a checkout; else a sha256 over the sorted paths and file hashes (stable across copies)."""
    if (root / ".git").exists():
        try:
            out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=30, check=True)
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("%s looks like a git checkout but `git rev-parse HEAD` failed (%s); hashing content",
                        root, exc)
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.encode("utf-8") + b"\x00")
        try:
            data = read_regular_file(root / path)
        except (UnsafePathError, OSError):
            data = b""  # changed since the scan; materialize skips and counts it
        digest.update(hashlib.sha256(data).hexdigest().encode() + b"\n")
    return digest.hexdigest()[:40]


def detect_license(text: str) -> str | None:
    lowered = " ".join(text.lower().split())
    for spdx, marker in LICENSE_MARKERS:
        if marker in lowered:
            return spdx
    return None


def tree_license(root: Path, fallback: str) -> str:
    """SPDX id from a top-level LICENSE/COPYING file, else the landscape's licence, else 'unknown'."""
    candidates = sorted((p for p in root.iterdir() if p.is_file() and not p.is_symlink()
                         and p.name.upper().startswith(("LICENSE", "LICENCE", "COPYING"))),
                        key=lambda p: (len(p.name), p.name))
    for path in candidates:
        spdx = detect_license(path.read_text(encoding="utf-8", errors="replace")[:20000])
        if spdx:
            return spdx
    return fallback or "unknown"


def mirror_snapshots(mirror_dir: str | Path, projects: list[dict[str, Any]], params: dict[str, Any],
                     metrics: Any) -> list[RepoSnapshot]:
    """One snapshot per tree that maps to a selected project; unmatched trees are warned about and counted."""
    if not str(mirror_dir).strip() or not Path(mirror_dir).is_dir():  # "" would scan the working directory
        raise StageError(f"scrape.mirror_dir {str(mirror_dir)!r} is not a folder of <owner>__<repo> trees")
    mirror_dir = Path(mirror_dir)
    names = []
    for entry in sorted(mirror_dir.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.is_symlink():  # a tree that is a link reads files from anywhere on the machine
            log.warning("mirror tree %s is a symlink; skipped", entry)
            metrics.inc("skipped.symlinked_tree")
        elif not decodable_name(entry.name):
            log.warning("mirror tree %r has a name that is not UTF-8; skipped", entry.name)
            metrics.inc("skipped.undecodable_name")
        else:
            names.append(entry.name)  # a name that is no <owner>__<repo> is warned about as unmatched below
    owners = assign_trees(names, projects, params["repo_projects"])
    licenses = {p["project"]: p.get("license", "") for p in projects}
    declared = params["licenses"]
    snapshots = []
    for name in names:
        project = owners[name]
        if project is None:
            log.warning("mirror tree %s matches no selected project (by owner or scrape.repo_projects); skipped",
                        mirror_dir / name)
            metrics.inc("skipped.unmatched_tree")
            continue
        owner, repo = split_tree_name(name) or (name, name)  # assign_trees matched only valid names
        root = mirror_dir / name
        paths, skipped = scan_tree(root, params)
        log.info("mirror %s -> %s: %d files", name, project, len(paths))
        for reason, n in sorted(skipped.items()):
            metrics.inc(f"skipped.{reason}", n)
        snapshots.append(RepoSnapshot(project=project, source="mirror", repo=f"{owner}/{repo}",
                                      commit=tree_commit(root, paths),
                                      license=declared.get(f"{owner}/{repo}") or tree_license(root, licenses[project]),
                                      root=root, paths=paths))
        metrics.inc("repos.ok")
    return snapshots


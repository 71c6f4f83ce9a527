"""Live source: the docs files of each selected project's GitHub repositories, at their HEAD commit.

Per repo: one call for the HEAD commit; when that commit is already complete in the cache, nothing else.
Otherwise the default branch, the recursive tree (walked folder by folder when GitHub truncates it), the
licence, and one raw download per selected file (bounded thread pool). Downloaded files land in the cache
first, so an interrupted run resumes where it stopped; files already there with the right git blob sha
are never downloaded again.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from stages.common.http import HttpClient, HttpError, OfflineError
from stages.common.progress import progress
from stages.scrape.landscape import make_client, project_repos
from stages.scrape.select import (
    file_kind,
    is_commit_id,
    is_github_owner,
    is_github_repo_name,
    is_safe_path,
    matches_any,
    skip_reason,
)
from stages.scrape.store import (
    RepoSnapshot,
    cache_folder,
    git_blob_sha,
    mark_complete,
    params_fingerprint,
    read_complete,
    write_cached_file,
)

log = logging.getLogger(__name__)

DOCS_TREE_DIRS = ("docs", "content", "documentation")
PROSE_KINDS = ("markdown", "rst", "adoc")
MIN_PROSE_FILES = 10


class GitHub:
    """API + raw-file access through one HttpClient, counting calls thread-safely for the metrics."""

    def __init__(self, client: HttpClient, api_url: str, raw_url: str) -> None:
        self.client = client
        self.api_url = api_url.rstrip("/")
        self.raw_url = raw_url.rstrip("/")
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def api(self, path: str, params: dict[str, Any] | None = None) -> Any:
        self._count("api_calls")
        return self.client.get_json(f"{self.api_url}{path}", params=params)

    def raw(self, owner: str, repo: str, sha: str, path: str, max_bytes: int | None) -> bytes:
        self._count("downloads")
        url = f"{self.raw_url}/{owner}/{repo}/{sha}/{quote(path, safe='/')}"
        data = self.client.get(url, max_bytes=max_bytes).content
        self._count("download_bytes", len(data))
        return data


def make_github(params: dict[str, Any], client: HttpClient) -> GitHub:
    token = os.environ.get("GITHUB_TOKEN", "").strip()
    if token:  # goes into the session headers only; never logged, never written
        client._session.headers["Authorization"] = f"Bearer {token}"  # noqa: SLF001
    client._session.headers["Accept"] = "application/vnd.github+json"  # noqa: SLF001
    return GitHub(client, params["github"]["api_url"], params["github"]["raw_url"])


def head_commit(gh: GitHub, owner: str, repo: str) -> str:
    """The sha of the default branch's HEAD: the one call a cached repo costs (40 hex digits, or ValueError)."""
    sha = gh.api(f"/repos/{owner}/{repo}/commits/HEAD")["sha"]
    if not is_commit_id(sha):  # it becomes a cache folder name and a URL path: nothing else is accepted
        raise ValueError(f"{owner}/{repo}: commit id {str(sha)[:80]!r} is not 40 hex digits")
    return sha


def list_tree(gh: GitHub, owner: str, repo: str, sha: str, exclude_dirs: set[str],
              skipped: Counter[str]) -> list[dict[str, Any]]:
    """Every blob of the tree at `sha`; a truncated recursive listing is redone one folder at a time."""
    tree = gh.api(f"/repos/{owner}/{repo}/git/trees/{sha}", params={"recursive": "1"})
    if not tree.get("truncated"):
        return [e for e in tree.get("tree", []) if e.get("type") == "blob"]
    log.info("%s/%s: tree listing truncated; walking folders one by one", owner, repo)
    gh._count("truncated_trees")  # noqa: SLF001
    blobs: list[dict[str, Any]] = []
    pending = [("", sha)]
    while pending:
        prefix, tree_sha = pending.pop()
        for entry in gh.api(f"/repos/{owner}/{repo}/git/trees/{tree_sha}").get("tree", []):
            path = f"{prefix}{entry.get('path', '')}"
            if entry.get("type") == "tree":
                if entry.get("path") in exclude_dirs:
                    skipped["excluded_dir"] += 1
                elif not is_safe_path(path):
                    skipped["unsafe_path"] += 1
                elif not is_commit_id(entry.get("sha")):
                    skipped["invalid_tree_sha"] += 1
                else:
                    pending.append((f"{path}/", str(entry["sha"])))
            elif entry.get("type") == "blob":
                blobs.append({**entry, "path": path})
    return blobs


def repo_license(gh: GitHub, owner: str, repo: str) -> str:
    """GitHub's SPDX id for the repo's licence; 'unknown' when it has none or GitHub cannot tell."""
    try:
        spdx = (gh.api(f"/repos/{owner}/{repo}/license").get("license") or {}).get("spdx_id")
    except HttpError as exc:
        if exc.status == 404:
            return "unknown"
        raise
    return "unknown" if not spdx or spdx == "NOASSERTION" else str(spdx)


def has_docs_tree(paths: list[str]) -> bool:
    """A docs/ or content/ folder, or a repo that is mostly prose (fluent-bit-docs keeps its pages at the top)."""
    if any(part in DOCS_TREE_DIRS for p in paths for part in p.split("/")[:-1]):
        return True
    prose = sum(1 for p in paths if file_kind(p) in PROSE_KINDS)
    return prose >= MIN_PROSE_FILES and prose * 2 >= len(paths)


def discover_docs_repos(gh: GitHub, owner: str, globs: list[str], per_page: int) -> list[str]:
    """Names of the owner's repos that look like docs repos by name (content is checked on the tree later)."""
    names: list[str] = []
    base = f"/orgs/{owner}/repos"
    page = 1
    while True:
        try:
            batch = gh.api(base, params={"per_page": str(per_page), "page": str(page), "type": "public"})
        except HttpError as exc:
            if exc.status == 404 and base.startswith("/orgs/"):
                base, page = f"/users/{owner}/repos", 1  # a user account, not an org
                continue
            raise
        if not isinstance(batch, list) or not batch:
            break
        for item in batch:
            if not isinstance(item, dict):
                gh._count("skipped.invalid_repo_listing")  # noqa: SLF001
                continue
            name = item.get("name")
            if not is_github_repo_name(name):  # joined into API paths and cache folders: refused, counted
                log.warning("%s: repository name %r from the API is not a valid GitHub name; skipped",
                            owner, str(name)[:80])
                gh._count("skipped.invalid_repo_name")  # noqa: SLF001
                continue
            if not item.get("fork") and not item.get("archived") and matches_any(name, globs):
                names.append(name)
        if len(batch) < per_page:  # a short page is the last one
            break
        page += 1
    return sorted(set(names))


def fetch_repo(gh: GitHub, owner: str, repo: str, params: dict[str, Any], cache_dir: Path, *,
               whole: bool, require_docs_tree: bool) -> tuple[dict[str, Any], bool]:
    """Bring one repo at its HEAD into the cache; returns (meta, complete)."""
    sha = head_commit(gh, owner, repo)
    folder = cache_folder(cache_dir, owner, repo, sha)
    fingerprint = params_fingerprint(params) + ("-whole" if whole else "-docs")
    meta = read_complete(folder, fingerprint)
    if meta is not None:
        log.info("%s/%s@%s: complete in cache, %d files", owner, repo, sha[:12], len(meta["paths"]))
        gh._count("cache_hits")  # noqa: SLF001
        return meta, True
    info = gh.api(f"/repos/{owner}/{repo}")
    skipped: Counter[str] = Counter()
    blobs = list_tree(gh, owner, repo, sha, set(params["exclude_dirs"]), skipped)
    meta = {"owner": owner, "repo": repo, "commit": sha, "branch": str(info.get("default_branch", "")),
            "fingerprint": fingerprint, "paths": [], "license": "unknown", "skipped": {}, "docs_repo": True}
    if require_docs_tree and not has_docs_tree([str(b.get("path", "")) for b in blobs]):
        meta["docs_repo"] = False  # named like a docs repo, but holds no docs tree: remembered, not scraped
        mark_complete(folder, meta)
        return meta, True
    wanted = []
    for blob in sorted(blobs, key=lambda b: str(b.get("path", ""))):
        path = str(blob.get("path", ""))
        reason = skip_reason(path, int(blob.get("size") or 0), params, docs_only=not whole)
        if reason:
            skipped[reason] += 1
            if reason == "unsafe_path":
                log.warning("%s/%s: unsafe path %r in tree; skipped", owner, repo, path)
        else:
            wanted.append(blob)
    meta["license"] = repo_license(gh, owner, repo)
    paths, failed = download_files(gh, owner, repo, sha, wanted, folder, params, skipped)
    meta["paths"] = paths
    meta["skipped"] = dict(sorted(skipped.items()))
    if failed:
        log.warning("%s/%s: %d files failed; the repo stays incomplete and is retried next run", owner, repo, failed)
        return meta, False
    mark_complete(folder, meta)
    prune_older(folder)
    return meta, True


def download_files(gh: GitHub, owner: str, repo: str, sha: str, blobs: list[dict[str, Any]], folder: Path,
                   params: dict[str, Any], skipped: Counter[str]) -> tuple[list[str], int]:
    """Download (or reuse from an interrupted run) the wanted blobs; returns (stored paths, failures)."""
    max_bytes = int(params["max_file_bytes"]) or None  # 0: no size limit
    workers = max(1, int(params["github"]["concurrency"]))
    lock = threading.Lock()
    failures: Counter[str] = Counter()

    older = older_folders(folder)

    def one(blob: dict[str, Any]) -> str | None:
        path = str(blob["path"])
        for candidate in [folder, *older]:  # this commit's interrupted run first, then earlier commits
            source = candidate / "files" / path
            if source.is_file() and blob.get("sha") and git_blob_sha(data := source.read_bytes()) == blob["sha"]:
                if candidate != folder:
                    write_cached_file(folder, path, data)
                gh._count("downloads_reused")  # noqa: SLF001
                return path
        try:
            data = gh.raw(owner, repo, sha, path, max_bytes)
        except OfflineError:
            raise
        except HttpError as exc:
            with lock:
                if exc.kind == "too_large":
                    skipped["too_large"] += 1
                    return None
                failures[exc.kind] += 1
            log.warning("%s/%s: %s failed: %s", owner, repo, path, exc)
            return None
        if blob.get("sha") and git_blob_sha(data) != blob["sha"]:
            with lock:
                failures["checksum"] += 1
            log.warning("%s/%s: %s does not match its tree sha; not kept", owner, repo, path)
            return None
        write_cached_file(folder, path, data)
        return path

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, blobs))
    for kind, n in failures.items():
        gh._count(f"errors.download_{kind}", n)  # noqa: SLF001
    return sorted(p for p in results if p), sum(failures.values())


def older_folders(folder: Path) -> list[Path]:
    """Cached folders of the same repo at other commits: unchanged files are copied, not downloaded."""
    owner_repo = folder.name.rsplit("@", 1)[0]
    return sorted(p for p in folder.parent.glob(f"{owner_repo}@*") if p != folder and p.is_dir())


def prune_older(folder: Path) -> None:
    """Once a commit is complete, its repo's older folders only cost disk."""
    for old in older_folders(folder):
        log.debug("removing superseded cache folder %s", old)
        shutil.rmtree(old)


def plan_repos(gh: GitHub | None, projects: list[dict[str, Any]], params: dict[str, Any],
               metrics: Any) -> list[tuple[str, str, str, bool, bool]]:
    """(project, owner, repo, whole, discovered) per repo; a repo belongs to the first project naming it."""
    globs = list(params["docs_repo_names"])
    overrides = {k.lower(): v for k, v in params["repo_projects"].items()}
    claimed: dict[str, str] = {}
    plan: list[tuple[str, str, str, bool, bool]] = []

    def claim(project: str, owner: str, repo: str, whole: bool, discovered: bool) -> None:
        key = f"{owner}/{repo}".lower()
        if key not in claimed:
            claimed[key] = project
            plan.append((project, owner, repo, whole, discovered))

    ordered = sorted(projects, key=lambda p: p["project"])
    for repo_key, project in sorted(overrides.items()):
        if any(p["project"] == project for p in ordered) and "/" in repo_key:
            owner, repo = repo_key.split("/", 1)
            if not (is_github_owner(owner) and is_github_repo_name(repo)):
                log.warning("scrape.repo_projects: %r is not an owner/repo GitHub name; skipped", repo_key)
                metrics.inc("skipped.invalid_repo_name")
                continue
            claim(project, owner, repo, True, False)
    for project in ordered:
        for owner, repo in project_repos(project):
            claim(project["project"], owner, repo, matches_any(repo, globs), False)
    per_page = int(params["github"]["per_page"])
    if params["discover_docs_repos"] and gh is not None:
        for project in ordered:
            for owner in sorted({o for o, _ in project_repos(project)}):
                try:
                    names = discover_docs_repos(gh, owner, globs, per_page)
                except OfflineError:
                    raise
                except HttpError as exc:
                    log.warning("listing the repos of %s (%s) failed: %s", owner, project["project"], exc)
                    metrics.inc(f"errors.discovery_{exc.kind}")
                    continue
                for name in names:
                    claim(project["project"], owner, name, True, True)
    return plan


def scrape_github(projects: list[dict[str, Any]], params: dict[str, Any], cache_dir: Path, metrics: Any,
                  client: HttpClient | None = None) -> list[RepoSnapshot]:
    """Fetch every planned repo into the cache and return the snapshots to materialize."""
    if client is None:
        client = make_client(params)
    gh = make_github(params, client)
    snapshots: list[RepoSnapshot] = []
    try:
        plan = plan_repos(gh, projects, params, metrics)
        log.info("%d repos to check for %d projects", len(plan), len(projects))
        exhausted = False
        for project, owner, repo, whole, discovered in progress(plan, desc="github repos", unit="repo"):
            if exhausted:  # every further call would be refused too; the cache keeps what is done
                metrics.inc("repos.failed")
                metrics.inc("errors.repo_rate_limit_skipped")
                continue
            try:
                meta, complete = fetch_repo(gh, owner, repo, params, cache_dir, whole=whole,
                                            require_docs_tree=discovered)
            except OfflineError:
                raise
            except (HttpError, KeyError, TypeError, AttributeError, ValueError) as exc:
                kind = exc.kind if isinstance(exc, HttpError) else "bad_response"
                log.warning("%s/%s (%s) failed: %s", owner, repo, project, exc)
                metrics.inc("repos.failed")
                metrics.inc(f"errors.repo_{kind}")
                if kind == "rate_limit":
                    exhausted = True
                    log.error("GitHub rate limit exhausted: the remaining repos are skipped; rerun after the reset "
                              "(finished repos come from %s), or set GITHUB_TOKEN for a higher limit", cache_dir)
                continue
            for reason, n in sorted(meta.get("skipped", {}).items()):
                metrics.inc(f"skipped.{reason}", n)
            if not meta.get("docs_repo", True):
                metrics.inc("repos.not_docs")
                continue
            metrics.inc("repos.ok" if complete else "repos.partial")
            snapshots.append(RepoSnapshot(
                project=project, source="github", repo=f"{owner}/{repo}", commit=meta["commit"],
                license=params["licenses"].get(f"{owner}/{repo}") or meta["license"],
                root=cache_folder(cache_dir, owner, repo, meta["commit"]) / "files",
                paths=list(meta["paths"])))
    finally:
        for key, n in sorted(gh.counts.items()):
            metrics.inc(key, n)
        for key, n in sorted(client.stats.items()):
            metrics.inc(f"http.{key}", n)
    return snapshots

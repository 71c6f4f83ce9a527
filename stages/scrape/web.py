"""Docs websites: crawl each selected project's docs site (docs_url, else homepage) with scrapy.

The crawl runs in a subprocess (stages/scrape/web_crawl.py) because scrapy's reactor cannot restart; this
side plans the sites, starts the crawl and turns the saved pages into snapshots for the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from stages.scrape.select import is_safe_path
from stages.scrape.store import RepoSnapshot

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]  # so `-m stages.scrape.web_crawl` resolves from any cwd


def plan_sites(projects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One site per host; the first project (by name) that points at a host crawls it."""
    sites: dict[str, dict[str, Any]] = {}
    for project in sorted(projects, key=lambda p: p["project"]):
        url = project.get("docs_url") or project.get("homepage_url") or ""
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            continue
        host = parsed.netloc.lower()
        sites.setdefault(host, {"project": project["project"], "start_url": url, "host": host,
                                "license": project.get("license") or "unknown"})
    return [sites[h] for h in sorted(sites)]


def run_crawl(sites: list[dict[str, Any]], params: dict[str, Any], cache_dir: Path, log_level: str = "WARNING",
              timeout: float | None = None) -> Path:
    """Crawl the sites in a fresh Python process; returns the pages folder (index.jsonl, stats.json)."""
    web_dir = Path(cache_dir) / "web"
    pages_dir = web_dir / "pages"
    if pages_dir.exists():
        shutil.rmtree(pages_dir)  # the pages of this crawl only; the HTTP cache makes a re-crawl cheap
    pages_dir.mkdir(parents=True)
    job = {"sites": sites, "web": params["web"], "pages_dir": str(pages_dir.resolve()),
           "http_cache_dir": str((web_dir / "httpcache").resolve()), "log_level": log_level}
    job_file = web_dir / "job.json"
    job_file.write_text(json.dumps(job, sort_keys=True, indent=2), encoding="utf-8")
    limit = timeout or float(params["web"]["crawl_timeout"])
    proc = subprocess.run([sys.executable, "-m", "stages.scrape.web_crawl", str(job_file)],
                          capture_output=True, text=True, timeout=limit, check=False, cwd=REPO_ROOT)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"web crawl exited {proc.returncode}: {tail[0]}")
    return pages_dir


def site_snapshots(pages_dir: Path, sites: list[dict[str, Any]]) -> list[RepoSnapshot]:
    """Group the saved pages by host into snapshots; `commit` is a hash of the pages' content."""
    licenses = {s["host"]: s["license"] for s in sites}
    index_path = pages_dir / "index.jsonl"
    rows = [json.loads(line) for line in index_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_host: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        if not is_safe_path(row["path"]):
            log.warning("web page %s maps to unsafe path %r; skipped", row["url"], row["path"])
            continue
        by_host.setdefault(row["host"], {})[row["path"]] = row
    snapshots = []
    for host, pages in sorted(by_host.items()):
        root = pages_dir / host
        digest = hashlib.sha256()
        for path in sorted(pages):
            digest.update(f"{path}\x00{hashlib.sha256((root / path).read_bytes()).hexdigest()}\n".encode())
        urls = {path: row["url"] for path, row in pages.items()}
        project = next(iter(pages.values()))["project"]
        snapshots.append(RepoSnapshot(project=project, source="web", repo=host, commit=digest.hexdigest()[:40],
                                      license=licenses.get(host, "unknown"), root=root, paths=sorted(pages),
                                      url_for=urls.__getitem__))
    return snapshots


def crawl_sites(projects: list[dict[str, Any]], params: dict[str, Any], cache_dir: Path,
                metrics: Any) -> list[RepoSnapshot]:
    """The stage's entry: crawl, count, and return snapshots; a failed crawl is logged and counted."""
    sites = plan_sites(projects)
    metrics.inc("web.sites", len(sites))
    if not sites:
        return []
    log.info("crawling %d docs sites", len(sites))
    try:
        pages_dir = run_crawl(sites, params, cache_dir)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        log.warning("web crawl failed: %s", exc)
        metrics.inc("errors.web_crawl")
        return []
    stats = json.loads((pages_dir / "stats.json").read_text(encoding="utf-8"))
    for host in sorted(stats):
        for key, n in sorted(stats[host].items()):
            if not key.startswith("close_reason"):
                metrics.inc(f"web.{key}", int(n))
    snapshots = site_snapshots(pages_dir, sites)
    metrics.inc("web.pages", sum(len(s.paths) for s in snapshots))
    return snapshots

"""Which projects to scrape: the CNCF landscape.yml, read from a URL or a local file, filtered by params.

The real file mixes null marker keys (`category:`, `subcategory:`, `item:`) with the real fields; only the
`name`/`items`/`subcategories` keys matter here. A project can appear in several categories: the first one wins.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from stages.common.cli import StageError
from stages.common.http import HttpClient, HttpError
from stages.scrape.select import is_github_owner, is_github_repo_name

log = logging.getLogger(__name__)

PROJECT_FIELDS = ("project", "category", "subcategory", "maturity", "repo_url", "homepage_url", "docs_url",
                  "license", "description", "stack_overflow_url", "additional_repos")


def is_url(location: str) -> bool:
    return urlparse(location).scheme in ("http", "https")


def load_landscape_bytes(location: str, client: HttpClient | None = None) -> bytes:
    """The landscape file's bytes, from an http(s) URL (through HttpClient) or a local path."""
    if not location:
        raise StageError("scrape.landscape_url is empty: set it to a URL or a local landscape.yml")
    if is_url(location):
        client = client or HttpClient(offline_hint=OFFLINE_HINT)
        try:
            return client.get(location).content
        except HttpError as exc:
            raise StageError(f"cannot fetch the landscape from {location}: {exc}; {OFFLINE_HINT}") from None
    path = Path(location)
    if not path.is_file():
        raise StageError(f"landscape file not found: {path}")
    return path.read_bytes()


OFFLINE_HINT = ("offline? run from local files instead: -S scrape.source=mirror -S scrape.mirror_dir=<dir of "
                "owner__repo trees> -S scrape.landscape_url=<local landscape.yml>")


def make_client(params: dict[str, Any], **overrides: Any) -> HttpClient:
    """The HttpClient every network part of this stage uses (tests pass tiny backoffs through params)."""
    gh = params["github"]
    kwargs: dict[str, Any] = {"timeout": float(gh["timeout"]), "max_retries": int(gh["max_retries"]),
                              "offline_hint": OFFLINE_HINT}
    for key in ("backoff_base", "backoff_max", "max_rate_limit_wait"):
        kwargs[key] = float(gh[key])
    kwargs.update(overrides)
    return HttpClient(**kwargs)


def parse_items(data: bytes) -> list[dict[str, Any]]:
    """Every landscape item as a flat project record, in file order, first occurrence of each name only."""
    try:
        doc = yaml.safe_load(data) or {}
    except yaml.YAMLError as exc:
        raise StageError(f"landscape file is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("landscape"), list):
        raise StageError("landscape file has no top-level 'landscape' list")
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for category in doc["landscape"]:
        if not isinstance(category, dict):
            continue
        for sub in category.get("subcategories") or []:
            if not isinstance(sub, dict):
                continue
            for item in sub.get("items") or []:
                if not isinstance(item, dict) or not item.get("name") or item["name"] in seen:
                    continue
                seen.add(item["name"])
                records.append(project_record(item, str(category.get("name", "")), str(sub.get("name", ""))))
    return records


def project_record(item: dict[str, Any], category: str, subcategory: str) -> dict[str, Any]:
    extra = item.get("extra") if isinstance(item.get("extra"), dict) else {}
    additional = [str(r["repo_url"]) for r in item.get("additional_repos") or []
                  if isinstance(r, dict) and r.get("repo_url")]
    return {
        "project": str(item["name"]),
        "category": category,
        "subcategory": subcategory,
        "maturity": str(item.get("project") or "n/a"),
        "repo_url": str(item.get("repo_url") or ""),
        "homepage_url": str(item.get("homepage_url") or ""),
        "docs_url": str(extra.get("documentation_url") or ""),
        "license": str(item.get("license") or ""),
        "description": " ".join(str(item.get("description") or "").split()),
        "stack_overflow_url": str(extra.get("stack_overflow_url") or ""),
        "additional_repos": additional,
    }


def synthetic_record(name: str, repo: str) -> dict[str, Any]:
    """A project the landscape does not list (a CNCF TAG, say), named by scrape.repo_projects."""
    record = {key: "" for key in PROJECT_FIELDS}
    record.update(project=name, maturity="n/a", repo_url=f"https://github.com/{repo}", additional_repos=[])
    return record


def select_projects(records: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    """Filter by maturity and category, cap at max_projects, then add allow-listed and repo_projects names.

    The cap applies to the maturity/category selection (sorted by name); names the user asked for explicitly
    (allow, repo_projects) are always added and deny always wins.
    """
    maturity = {str(m).lower() for m in params["maturity"]}
    categories = set(params["categories"])
    deny = set(params["deny"])
    by_name = {r["project"]: r for r in records}
    chosen = sorted(
        (r for r in records
         if (not maturity or r["maturity"].lower() in maturity)
         and (not categories or r["category"] in categories)),
        key=lambda r: r["project"])
    chosen = [r for r in chosen if r["project"] not in deny]
    cap = int(params["max_projects"])
    if cap > 0:
        chosen = chosen[:cap]
    selected = {r["project"]: r for r in chosen}
    for name in params["allow"]:
        if name in by_name:
            selected.setdefault(name, by_name[name])
        else:
            log.warning("scrape.allow names %r, which is not in the landscape; ignored", name)
    for repo, name in sorted(params["repo_projects"].items()):
        if name not in selected:
            selected[name] = by_name.get(name) or synthetic_record(name, repo)
    return [selected[name] for name in sorted(selected) if name not in deny]


def github_repo(url: str) -> tuple[str, str] | None:
    """(owner, repo) of a github.com URL, or None for anything else (GitLab, a homepage, an org page)."""
    parsed = urlparse(url.strip())
    if parsed.netloc.lower() not in ("github.com", "www.github.com"):
        return None
    parts = [p for p in parsed.path.split("/") if p]
    if len(parts) < 2:
        return None
    repo = parts[1][:-4] if parts[1].endswith(".git") else parts[1]
    if not (is_github_owner(parts[0]) and is_github_repo_name(repo)):
        return None  # a URL that names no valid repository never becomes an API path or a folder name
    return parts[0], repo


def project_repos(project: dict[str, Any]) -> list[tuple[str, str]]:
    """The GitHub repositories a project names: repo_url first, then additional_repos, without duplicates."""
    out: list[tuple[str, str]] = []
    for url in [project.get("repo_url", ""), *project.get("additional_repos", [])]:
        key = github_repo(url or "")
        if key and key not in out:
            out.append(key)
    return out

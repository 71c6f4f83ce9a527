"""File selection shared by the GitHub and mirror sources, so both keep exactly the same files.

A path is judged on its own (extension, excluded folders, safety) before any byte is fetched: the tree
listing of a repository and a local walk give the same answer for the same path.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Iterable
from typing import Any

KIND_BY_EXT = {
    "md": "markdown", "mdx": "markdown", "markdown": "markdown",
    "rst": "rst", "adoc": "adoc", "asciidoc": "adoc",
    "pdf": "pdf", "yaml": "yaml", "yml": "yaml", "json": "json",
    "html": "html", "htm": "html",
}
# Folders that hold a code repository's prose; a docs repository is taken whole.
DOCS_DIRS = ("docs", "doc", "documentation", "content", "website", "site", "guide", "guides")
README_STEMS = ("readme", "contributing", "governance", "security", "roadmap", "architecture")


# GitHub's own rules: an owner is 1-39 letters, digits or hyphens, not starting with a hyphen; a repository
# name is 1-100 letters, digits, `.`, `_` or `-` (but not `.` or `..`); a commit id is 40 hex digits.
OWNER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}")
REPO_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
COMMIT_RE = re.compile(r"[0-9a-f]{40}")


def is_github_owner(name: object) -> bool:
    return isinstance(name, str) and OWNER_RE.fullmatch(name) is not None


def is_github_repo_name(name: object) -> bool:
    return isinstance(name, str) and REPO_NAME_RE.fullmatch(name) is not None and name not in (".", "..")


def is_commit_id(sha: object) -> bool:
    return isinstance(sha, str) and COMMIT_RE.fullmatch(sha) is not None


def file_kind(path: str) -> str | None:
    """The manifest kind for a path, or None when its extension is not one we read."""
    name = path.rsplit("/", 1)[-1]
    if "." not in name:
        return None
    return KIND_BY_EXT.get(name.rsplit(".", 1)[-1].lower())


def is_safe_path(path: str) -> bool:
    """A relative POSIX path that stays inside its root: no absolute paths, `..`, drive letters or NULs."""
    if not path or "\x00" in path or "\\" in path or path.startswith("/") or ":" in path.split("/", 1)[0]:
        return False
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return False
    return posixpath.normpath(path) == path


def skip_reason(path: str, size: int | None, params: dict[str, Any], docs_only: bool = False) -> str | None:
    """Why a path is not taken (unsafe_path, extension, excluded_dir, not_docs, too_large), or None to take it."""
    if not is_safe_path(path):
        return "unsafe_path"
    extensions = {e.lower().lstrip(".") for e in params["extensions"]}
    name = path.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext not in extensions or file_kind(path) is None:
        return "extension"
    excluded = set(params["exclude_dirs"])
    if any(part in excluded for part in path.split("/")[:-1]):
        return "excluded_dir"
    if docs_only and not is_docs_path(path):
        return "not_docs"
    max_bytes = int(params["max_file_bytes"])
    if size is not None and max_bytes and size > max_bytes:
        return "too_large"
    return None


def is_docs_path(path: str) -> bool:
    """In a code repository keep the docs trees and the top-level prose files (README, CONTRIBUTING, ...)."""
    parts = path.lower().split("/")
    if any(part in DOCS_DIRS for part in parts[:-1]):
        return True
    stem = parts[-1].rsplit(".", 1)[0]
    return (len(parts) == 1 and stem.startswith(README_STEMS)) or stem == "readme"


def matches_any(name: str, globs: Iterable[str]) -> bool:
    """Case-insensitive glob match of a repository name against the docs-repo patterns."""
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, g.lower()) for g in globs)

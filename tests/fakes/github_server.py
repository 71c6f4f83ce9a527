"""A local stand-in for api.github.com + raw.githubusercontent.com, with faults the tests can inject.

Serves repos from a dict (or a folder of <owner>__<repo> trees) on 127.0.0.1 only. Implements the calls the
scrape stage makes: repo info, commits/{ref}, branches/{b}, git/trees (recursive, or truncated), license,
org/user repo listings (paginated) and raw files. Faults are consumed in order by the first request whose
path matches: 429 + Retry-After, 403 rate limit with X-RateLimit-Reset, 500, slow, truncated body.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse


def blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    default_branch: str = "main"
    license: str | None = "Apache-2.0"
    fork: bool = False
    archived: bool = False
    truncated: bool = False  # the recursive tree answers `truncated: true` with half the entries
    extra_entries: list[dict[str, Any]] = field(default_factory=list)  # announced in the tree, never served
    head_sha: str | None = None  # hostile: what commits/HEAD answers instead of the real sha

    @property
    def sha(self) -> str:
        digest = hashlib.sha1(usedforsecurity=False)
        for path in sorted(self.files):
            digest.update(f"{path}\x00{blob_sha(self.files[path])}\n".encode())
        digest.update(json.dumps(self.extra_entries, sort_keys=True).encode())
        return digest.hexdigest()

    def trees(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Folder path -> {name: entry}; folder entries carry the sha of their own listing."""
        folders: dict[str, dict[str, dict[str, Any]]] = {"": {}}
        for path, data in self.files.items():
            parts = path.split("/")
            for i in range(1, len(parts)):
                folders.setdefault("/".join(parts[:i]), {})
            parent = "/".join(parts[:-1])
            folders[parent][parts[-1]] = {"path": parts[-1], "type": "blob", "size": len(data),
                                          "sha": blob_sha(data), "mode": "100644"}
        for folder in sorted(folders, key=lambda f: -f.count("/")):
            if folder:
                parent, _, name = folder.rpartition("/")
                listing = json.dumps(sorted(folders[folder]), sort_keys=True)
                sha = hashlib.sha1(f"{folder}:{listing}".encode(), usedforsecurity=False).hexdigest()
                folders[parent][name] = {"path": name, "type": "tree", "sha": sha, "mode": "040000"}
        return folders


class FakeGitHub:
    """`with FakeGitHub(repos) as gh:` then point params at gh.api_url / gh.raw_url."""

    def __init__(self, repos: dict[str, FakeRepo], users: set[str] | None = None) -> None:
        self.repos = repos
        self.users = users or set()  # owners that are user accounts: /orgs/{owner}/repos answers 404
        self.listing_extra: dict[str, list[Any]] = {}  # hostile: items appended to an owner's repo listing
        self.faults: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self.auth_headers: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @classmethod
    def from_dir(cls, root: Path, names: list[str] | None = None, **kwargs: Any) -> FakeGitHub:
        repos = {}
        for tree in sorted(Path(root).iterdir()):
            if not tree.is_dir() or (names is not None and tree.name not in names):
                continue
            files = {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree.rglob("*") if p.is_file()}
            repos[tree.name.replace("__", "/", 1)] = FakeRepo(files)
        return cls(repos, **kwargs)

    def add_fault(self, match: str, kind: str, times: int = 1, **options: Any) -> None:
        """kind: 429 | 403 | 500 | slow | truncate; options: retry_after, delay."""
        self.faults.append({"match": re.compile(match), "kind": kind, "times": times, **options})

    def take_fault(self, path: str) -> dict[str, Any] | None:
        with self._lock:
            for fault in self.faults:
                if fault["times"] > 0 and fault["match"].search(path):
                    fault["times"] -= 1
                    return fault
        return None

    def count(self, pattern: str) -> int:
        return sum(1 for r in self.requests if re.search(pattern, r))

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    @property
    def raw_url(self) -> str:
        return f"{self.base_url}/raw"

    def __enter__(self) -> FakeGitHub:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    # --- answers: (status, headers, body) ---
    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/raw/"):
            return self.answer_raw(path[len("/raw/"):])
        if not path.startswith("/api/"):
            return _json(404, {"message": "Not Found"})
        parts = [unquote(p) for p in path[len("/api/"):].split("/")]
        if parts[0] in ("orgs", "users") and len(parts) == 3 and parts[2] == "repos":
            return self.answer_listing(parts[0], parts[1], query)
        if parts[0] != "repos" or len(parts) < 3:
            return _json(404, {"message": "Not Found"})
        repo = self.repos.get(f"{parts[1]}/{parts[2]}")
        if repo is None:
            return _json(404, {"message": "Not Found"})
        rest = parts[3:]
        if not rest:
            return _json(200, {"name": parts[2], "full_name": f"{parts[1]}/{parts[2]}", "fork": repo.fork,
                               "default_branch": repo.default_branch, "archived": repo.archived})
        if rest[0] == "commits" and len(rest) == 2 and rest[1] in ("HEAD", repo.default_branch, repo.sha):
            return _json(200, {"sha": repo.head_sha if repo.head_sha is not None else repo.sha,
                               "commit": {"message": "head"}})
        if rest[0] == "branches" and len(rest) == 2 and rest[1] == repo.default_branch:
            return _json(200, {"name": rest[1], "commit": {"sha": repo.sha}})
        if rest[0] == "license":
            if repo.license is None:
                return _json(404, {"message": "Not Found"})
            return _json(200, {"license": {"spdx_id": repo.license, "key": repo.license.lower()}})
        if rest[:2] == ["git", "trees"] and len(rest) == 3:
            return self.answer_tree(repo, rest[2], query.get("recursive", ["0"])[0] not in ("0", ""))
        return _json(404, {"message": "Not Found"})

    def answer_listing(self, kind: str, owner: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        if (kind == "orgs") == (owner in self.users):
            return _json(404, {"message": "Not Found"})
        per_page = min(100, int(query.get("per_page", ["30"])[0]))  # GitHub's cap
        page = int(query.get("page", ["1"])[0])
        names = sorted(k.split("/", 1)[1] for k in self.repos if k.split("/", 1)[0] == owner)
        chunk = names[(page - 1) * per_page: page * per_page]
        items: list[Any] = [{"name": n, "full_name": f"{owner}/{n}", "fork": self.repos[f"{owner}/{n}"].fork,
                             "archived": self.repos[f"{owner}/{n}"].archived} for n in chunk]
        if page == 1:
            items += self.listing_extra.get(owner, [])
        return _json(200, items)

    def answer_tree(self, repo: FakeRepo, sha: str, recursive: bool) -> tuple[int, dict[str, str], bytes]:
        folders = repo.trees()
        by_sha = {repo.sha: ""}
        for folder, entries in folders.items():
            for name, entry in entries.items():
                if entry["type"] == "tree":
                    by_sha[entry["sha"]] = f"{folder}/{name}".lstrip("/")
        if sha not in by_sha:
            return _json(404, {"message": "Not Found"})
        folder = by_sha[sha]
        if not recursive:
            entries = [dict(e) for _, e in sorted(folders[folder].items())]
            if folder == "":
                entries += [dict(e) for e in repo.extra_entries]
            return _json(200, {"sha": sha, "tree": entries, "truncated": False})
        flat = []
        for name_folder in sorted(folders):
            for name, entry in sorted(folders[name_folder].items()):
                flat.append({**entry, "path": f"{name_folder}/{name}".lstrip("/")})
        flat += [dict(e) for e in repo.extra_entries]
        if repo.truncated:
            flat = flat[: len(flat) // 2]
        return _json(200, {"sha": sha, "tree": flat, "truncated": repo.truncated})

    def answer_raw(self, rest: str) -> tuple[int, dict[str, str], bytes]:
        parts = rest.split("/", 3)
        if len(parts) < 4:
            return 404, {}, b"404: Not Found"
        owner, name, sha, path = parts[0], parts[1], parts[2], unquote(parts[3])
        repo = self.repos.get(f"{owner}/{name}")
        if repo is None or sha != repo.sha:
            return 404, {}, b"404: Not Found"
        for extra in repo.extra_entries:  # announced (e.g. 200 MB) but never actually sent
            if extra["path"] == path:
                return 200, {"Content-Length": str(extra.get("size", 0)), "X-Never-Sent": "1"}, b""
        if path not in repo.files:
            return 404, {}, b"404: Not Found"
        return 200, {"Content-Type": "application/octet-stream"}, repo.files[path]


class _QuietServer(ThreadingHTTPServer):
    """Clients that give up on a slow answer reset the connection: expected here, not worth a traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _json(status: int, obj: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeGitHub
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall each

    def log_message(self, *args: Any) -> None:  # the test output stays readable
        return

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        fake = self.server_fake
        parsed = urlparse(self.path)
        with fake._lock:  # noqa: SLF001
            fake.requests.append(parsed.path)
            if self.headers.get("Authorization"):
                fake.auth_headers.append(self.headers["Authorization"])
        fault = fake.take_fault(parsed.path)
        if fault is not None and self.send_fault(fault):
            return
        status, headers, body = fake.answer(parsed.path, parse_qs(parsed.query))
        if headers.get("X-Never-Sent"):
            self.send_response(status)
            self.send_header("Content-Length", headers["Content-Length"])
            self.end_headers()
            self.close_connection = True
            return
        if fault is not None and fault["kind"] == "truncate":
            self.send_response(status)
            self.send_header("Content-Length", str(len(body) + 100))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_fault(self, fault: dict[str, Any]) -> bool:
        """Send the fault's response; False for faults that only alter the normal answer (truncate, slow)."""
        kind = fault["kind"]
        if kind == "slow":
            time.sleep(float(fault.get("delay", 2.0)))
            return False
        if kind == "truncate":
            return False
        body = b'{"message": "fault"}'
        self.send_response({"429": 429, "403": 403, "500": 500}[kind])
        if kind == "429":
            self.send_header("Retry-After", str(fault.get("retry_after", 0)))
        if kind == "403":
            body = b'{"message": "API rate limit exceeded"}'
            self.send_header("X-RateLimit-Remaining", "0")
            self.send_header("X-RateLimit-Reset", str(int(time.time()) + int(fault.get("reset_in", 0))))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return True

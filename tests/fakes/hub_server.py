"""A local stand-in for the Hugging Face Hub API: the calls `HfApi.create_repo` and `HfApi.create_commit` make
(huggingface_hub 2.4, legacy LFS transfer), recording every repo, file and commit it receives.

Routes: POST /api/repos/create, POST /api/validate-yaml, POST /api/{type}s/{repo}/preupload/{rev},
POST /{datasets/}{repo}.git/info/lfs/objects/batch, PUT /lfs-upload/{oid}, POST /api/{type}s/{repo}/commit/{rev}
(NDJSON: header, file (base64), lfsFile (oid), deletedFile). Requests without `Authorization: Bearer <token>`
get 401. The Xet transfer is hf_xet's own protocol and is not served: tests set HF_HUB_DISABLE_XET.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".parquet", ".pt")
REPO_API = re.compile(r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit)/"
                      r"(?P<rev>[^/]+)$")
LFS_BATCH = re.compile(r"^/(?P<prefix>datasets/|spaces/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$")


@dataclass
class FakeHubRepo:
    repo_type: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FakeHub:
    token: str
    repos: dict[tuple[str, str], FakeHubRepo] = field(default_factory=dict)  # (type, repo_id) -> repo
    blobs: dict[str, bytes] = field(default_factory=dict)  # LFS oid -> content
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet test output
            pass

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {hub.token}":
                return True
            self._send(401, {"error": "Invalid username or password."})
            return False

        def do_POST(self) -> None:  # noqa: N802
            path = unquote(urlparse(self.path).path)
            body = self._body()
            with hub.lock:
                hub.requests.append(("POST", path))
            if not self._authorised():
                return
            if path == "/api/repos/create":
                return self._create(json.loads(body))
            if path == "/api/validate-yaml":
                return self._send(200, {"errors": [], "warnings": []})
            if match := LFS_BATCH.match(path):
                return self._lfs_batch(json.loads(body))
            if match := REPO_API.match(path):
                key = (match["type"][:-1], match["repo"])
                if key not in hub.repos:
                    return self._send(404, {"error": "Repository not found"})
                if match["op"] == "preupload":
                    return self._preupload(json.loads(body))
                return self._commit(hub.repos[key], key, body)
            self._send(404, {"error": f"no route {path}"})

        def do_PUT(self) -> None:  # noqa: N802
            path = unquote(urlparse(self.path).path)
            body = self._body()
            with hub.lock:
                hub.requests.append(("PUT", path))
            oid = path.removeprefix("/lfs-upload/")
            if not path.startswith("/lfs-upload/") or hashlib.sha256(body).hexdigest() != oid:
                return self._send(400, {"error": "content does not match its oid"})
            with hub.lock:
                hub.blobs[oid] = body
            self._send(200, {})

        def _create(self, payload: dict[str, Any]) -> None:
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            with hub.lock:
                if (repo_type, repo_id) in hub.repos:
                    return self._send(409, {"error": "You already created this repo", "url": repo_id})
                hub.repos[(repo_type, repo_id)] = FakeHubRepo(repo_type, payload.get("visibility") == "private")
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            self._send(200, {"url": f"{hub.base_url}/{prefix}{repo_id}", "name": repo_id})

        def _preupload(self, payload: dict[str, Any]) -> None:
            files = [{"path": f["path"], "shouldIgnore": False, "oid": None,
                      "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10_000_000
                      else "regular"} for f in payload["files"]]
            self._send(200, {"files": files, "commitOid": "0" * 40})

        def _lfs_batch(self, payload: dict[str, Any]) -> None:
            objects = []
            for obj in payload["objects"]:
                if obj["oid"] in hub.blobs:
                    objects.append({"oid": obj["oid"], "size": obj["size"]})  # already there: no actions
                else:
                    objects.append({"oid": obj["oid"], "size": obj["size"], "authenticated": True,
                                    "actions": {"upload": {"href": f"{hub.base_url}/lfs-upload/{obj['oid']}"}}})
            self._send(200, {"transfer": "basic", "objects": objects})

        def _commit(self, repo: FakeHubRepo, key: tuple[str, str], body: bytes) -> None:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = next(item["value"] for item in lines if item["key"] == "header")
            changes: dict[str, bytes | None] = {}
            for item in lines:
                value = item["value"]
                if item["key"] == "file":
                    changes[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "lfsFile":
                    if value["oid"] not in hub.blobs:
                        return self._send(400, {"error": f"LFS object {value['oid']} was never uploaded"})
                    changes[value["path"]] = hub.blobs[value["oid"]]
                elif item["key"] == "deletedFile":
                    changes[value["path"]] = None
            with hub.lock:
                for path, data in changes.items():
                    if data is None:
                        repo.files.pop(path, None)
                    else:
                        repo.files[path] = data
                oid = hashlib.sha1(json.dumps([key, len(repo.commits), sorted(changes)]).encode(),
                                   usedforsecurity=False).hexdigest()
                repo.commits.append({"summary": header["summary"], "oid": oid, "paths": sorted(changes)})
            prefix = "" if key[0] == "model" else f"{key[0]}s/"
            self._send(200, {"commitUrl": f"{hub.base_url}/{prefix}{key[1]}/commit/{oid}", "commitOid": oid,
                             "pullRequestUrl": None})

    return Handler


def start_fake_hub(token: str) -> tuple[FakeHub, ThreadingHTTPServer]:
    """Serve a fresh FakeHub on 127.0.0.1 (a free port); call `server.shutdown()` when done."""
    hub = FakeHub(token=token)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return hub, server

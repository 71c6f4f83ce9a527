"""Deterministic JSON/JSONL I/O with atomic writes (temp file in the same folder, then rename)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        kwargs = {"encoding": encoding, "newline": "\n"} if "b" not in mode else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are shared data, readable like any written file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dumps(record: Any) -> str:
    """One canonical JSON line: sorted keys, UTF-8 kept, no trailing spaces."""
    return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records atomically, one per line; returns how many were written."""
    n = 0
    with atomic_write(path) as fh:
        for record in records:
            fh.write(dumps(record))
            fh.write("\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSONL file; blank lines are skipped."""
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def iter_jsonl_lenient(path: str | Path, on_bad: Callable[[str], None] | None = None) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file another stage or a user wrote: a broken line never stops the run.

    A line that is not JSON, or not a JSON object, is a WARNING naming path:line, is reported to `on_bad` as
    'bad_json' or 'not_object' (the caller's metrics counter), and is skipped.
    """
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                log.warning("%s:%d: malformed JSON (%s); skipped", path, lineno, exc)
                kind = "bad_json"
            else:
                if isinstance(record, dict):
                    yield record
                    continue
                log.warning("%s:%d: not a JSON object; skipped", path, lineno)
                kind = "not_object"
            if on_bad is not None:
                on_bad(kind)


def write_json(path: str | Path, obj: Any) -> None:
    """Write pretty, key-sorted JSON atomically (metrics, configs)."""
    with atomic_write(path) as fh:
        json.dump(obj, fh, ensure_ascii=False, sort_keys=True, indent=2)
        fh.write("\n")


def read_json(path: str | Path) -> Any:
    with Path(path).open(encoding="utf-8") as fh:
        return json.load(fh)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def stable_id(*parts: str, length: int = 16) -> str:
    """A short id that depends only on its parts, so reruns give the same ids."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:length]

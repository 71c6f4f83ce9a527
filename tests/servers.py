"""Real servers for tests, from Debian packages, started on 127.0.0.1 and stopped afterwards.

`.ci/run` installs the packages; a test that needs a server and cannot start it FAILS (never skips): a silently
skipped PostgreSQL or SLURM test would let the multi-worker and HPC paths rot unnoticed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def as_service_user(user: str) -> list[str]:
    """Root must drop to the service account (initdb refuses root); anyone else runs it as themselves."""
    return ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster (initdb, trust auth, 127.0.0.1, a free port); yields its URL."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.fail("PostgreSQL is not installed (apt-get install -y postgresql; .ci/run does this)")
    bin_dir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="cncf-llm-pg-"))
    data, log = root / "data", root / "server.log"
    prefix = as_service_user("postgres")
    if prefix:
        shutil.chown(root, "postgres")
    port = free_port()
    try:
        subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, text=True)
        started = subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "30", "-o",
             f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
            capture_output=True, text=True)
        if started.returncode != 0:
            detail = log.read_text() if log.exists() else started.stderr
            pytest.fail(f"PostgreSQL did not start: {detail[-2000:]}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"PostgreSQL could not be set up: {exc.stderr[-2000:]}")
    finally:
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):  # noqa: ANN001, ANN201
    """Poll until predicate() is truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")

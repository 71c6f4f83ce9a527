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


SLURM_CONF = """ClusterName=cncfllmtest
SlurmctldHost=localhost
SlurmUser={user}
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName=localhost CPUs={cpus} RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _munge_works() -> bool:
    cred = subprocess.run(["munge", "-n"], capture_output=True)
    return cred.returncode == 0 and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True).returncode == 0


@contextlib.contextmanager
def slurm_cluster(cpus: int = 2) -> Iterator[dict[str, str]]:
    """A single-node SLURM (munge, slurmctld, slurmd as root) in a temp dir; yields the env for sbatch & co."""
    for tool in ("munged", "slurmctld", "slurmd", "sbatch"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"SLURM is not installed ({tool} missing): apt-get install -y slurm-wlm munge (.ci/run)")
    if os.geteuid() != 0:
        pytest.fail("the SLURM test starts slurmd, which needs root (CI runs it as root or via sudo)")
    root = Path(tempfile.mkdtemp(prefix="cncf-llm-slurm-"))
    started_munge = False
    daemons: list[Path] = []
    try:
        if not _munge_works():
            run_dir = Path("/run/munge")
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.chown(run_dir, "munge", "munge")
            if not Path("/etc/munge/munge.key").exists():
                subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/mungekey", "--create"], check=True)
            subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True, capture_output=True)
            started_munge = True
            wait_for(_munge_works, 20, "munged to answer")
        for sub in ("state", "spool"):
            (root / sub).mkdir()
        conf = root / "slurm.conf"
        conf.write_text(SLURM_CONF.format(user="root", ctld_port=free_port(), d_port=free_port(), root=root,
                                          cpus=cpus))
        env = {**os.environ, "SLURM_CONF": str(conf)}
        for daemon, args in (("slurmctld", ["-c"]), ("slurmd", ["-N", "localhost"])):
            result = subprocess.run([shutil.which(daemon) or f"/usr/sbin/{daemon}", *args], env=env,
                                    capture_output=True, text=True)
            if result.returncode != 0:
                log = root / f"{daemon}.log"
                pytest.fail(f"{daemon} did not start: {result.stderr[-1000:]} {log.read_text()[-2000:] if log.exists() else ''}")
            daemons.append(root / f"{daemon}.pid")

        def node_idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout
            return out.strip() == "idle"

        wait_for(node_idle, 60, "the SLURM node to become idle")
        yield env
    finally:
        for pid_file in reversed(daemons):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text().strip()), 15)
        time.sleep(0.5)
        if started_munge:
            pid_file = Path("/run/munge/munged.pid")
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text().strip()), 15)
        shutil.rmtree(root, ignore_errors=True)

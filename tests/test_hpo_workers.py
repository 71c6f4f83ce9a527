"""Two HPO workers on one study in a real PostgreSQL server; one is killed mid-trial and its trial is retried.

The objective is a trivial DVC stage (a known function of a param, ~1 s): what is tested is the sweep machinery —
shared storage, clones, heartbeats, retries, experiments pushed home — not training.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.hpo_toy import GIT_ID, toy_repo
from tests.servers import postgres_server, wait_for

N_TRIALS = 4


def kill_tree(pid: int) -> None:
    """What a node failure does to a worker: it and its `dvc exp run` vanish at once, no clean-up."""
    proc = psutil.Process(pid)
    for p in [*proc.children(recursive=True), proc]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)


def test_two_workers_one_killed_on_postgres(tmp_path: Path, repo_root: Path) -> None:
    import optuna

    bin_dir = str(Path(sys.executable).parent)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")}, **GIT_ID,
           "HOME": str(tmp_path / "home"), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo_root)}
    with postgres_server() as url:
        hpo = {"n_trials": N_TRIALS, "target": "train", "metric": "m.json:loss", "direction": "minimize",
               "seed": 0, "storage": url, "study_name": "pg", "n_startup_trials": 2, "heartbeat_interval": 1,
               "grace_period": 4, "poll_seconds": 0.3, "max_wait_seconds": 120, "prune_on": "",
               "space": {"train.x": {"type": "float", "low": 0.0, "high": 4.0}}}
        repo = toy_repo(tmp_path, env, hpo)
        logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]  # noqa: SIM115
        workers = [subprocess.Popen([sys.executable, "-m", "stages.hpo", "worker", "--clone",
                                     str(tmp_path / f"w{i}" / "repo"), "--worker-index", str(i)], cwd=repo, env=env, stdout=logs[i],
                                    stderr=subprocess.STDOUT) for i in range(2)]
        victim, survivor = workers
        tag = f":{victim.pid}"
        study = wait_for(lambda: _load(url), 60, "the study to exist")

        def victim_mid_trial():
            trials = study.get_trials(deepcopy=False)
            mine = [t for t in trials if str(t.user_attrs.get("worker", "")).endswith(tag)]
            done = [t for t in mine if t.state == optuna.trial.TrialState.COMPLETE]
            running = [t for t in mine if t.state == optuna.trial.TrialState.RUNNING]
            return running[0] if done and running else None

        killed = wait_for(victim_mid_trial, 90, "worker 0 to finish a trial and start another", interval=0.2)
        kill_tree(victim.pid)
        victim.wait()
        try:
            assert survivor.wait(timeout=150) == 0, (tmp_path / "worker1.log").read_text()[-3000:]
        finally:
            for w in workers:
                if w.poll() is None:
                    kill_tree(w.pid)
            for fh in logs:
                fh.close()

        trials = _load(url).get_trials(deepcopy=False)
        states = optuna.trial.TrialState
        by_state = {s: [t for t in trials if t.state == s] for s in states}
        log_tail = (tmp_path / "worker1.log").read_text()[-3000:]
        assert not by_state[states.RUNNING] and not by_state[states.WAITING], log_tail
        assert [t.number for t in by_state[states.FAIL]] == [killed.number], log_tail  # only the killed trial
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
        assert len(retries) == 1 and retries[0].state == states.COMPLETE, log_tail
        assert retries[0].params == killed.params and retries[0].user_attrs["worker"] != killed.user_attrs["worker"]
        complete = by_state[states.COMPLETE]
        assert N_TRIALS <= len(complete) <= N_TRIALS + 1  # two workers may each finish the last trial once
        assert len({t.number for t in trials}) == len(trials)
        workers_seen = {t.user_attrs["worker"] for t in complete}
        assert len(workers_seen) == 2  # both workers completed trials

        # Every completed trial is a DVC experiment, pushed home from its worker's clone, recorded once.
        listed = subprocess.run(["dvc", "exp", "list", "--all-commits", "--name-only"], cwd=repo, env=env,
                                check=True, capture_output=True, text=True).stdout.split()
        names = [f"pg-{t.number}" for t in complete]
        assert sorted(set(listed) & set(names)) == sorted(names), (listed, names)
        assert f"pg-{killed.number}" not in listed


def _load(url: str):  # noqa: ANN202
    import optuna

    try:
        return optuna.load_study(study_name="pg", storage=url.replace("postgresql://", "postgresql+psycopg2://"))
    except KeyError:
        return None


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

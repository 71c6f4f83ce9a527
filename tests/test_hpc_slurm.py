"""hpc/ on a real single-node SLURM: an array job runs a 2-trial sweep of LoRA on the tiny model (one Optuna worker
per task, one shared study), and a single job runs one `dvc exp run`; every run shows up in `dvc exp show`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.hpo_toy import GIT_ID, tiny_train_repo
from tests.servers import slurm_cluster


def sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def job_logs(repo: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(repo.glob("slurm-*.out")))


def test_array_job_sweeps_on_the_tiny_model(tmp_path: Path, repo_root: Path, tiny_model_dir: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)
    with slurm_cluster(cpus=2) as slurm_env:
        env = {**{k: v for k, v in slurm_env.items() if not k.startswith("GIT_")}, **GIT_ID,
               "HOME": str(tmp_path / "home"), "PATH": f"{bin_dir}{os.pathsep}{slurm_env['PATH']}",
               "PYTHONPATH": str(repo_root), "OMP_NUM_THREADS": "1"}
        storage = f"journal:{tmp_path / 'study.log'}"
        hpo = {"n_trials": 2, "target": "train", "metric": "metrics/train.json:eval_loss", "direction": "minimize",
               "seed": 0, "storage": storage, "study_name": "slurm", "n_startup_trials": 2,
               "heartbeat_interval": 2, "grace_period": 30, "poll_seconds": 1, "max_wait_seconds": 300,
               "prune_on": "metrics/train_live/plots/metrics/train/loss.tsv",
               "space": {"train.learning_rate": {"type": "float", "low": 0.0005, "high": 0.05, "log": True}}}
        repo = tiny_train_repo(tmp_path, env, hpo, tiny_model_dir, repo_root / "hpc")

        out = subprocess.run(["sbatch", "--wait", "--array=0-1", "--cpus-per-task=1", "--mem=2G",
                              "hpc/hpo_array.sbatch"], cwd=repo, env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr + job_logs(repo)
        logs = job_logs(repo)
        assert logs.count("--- slurm-cncf-llm-hpo-") == 2, logs  # one log per array task

        shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo, env))
        experiments = [exp for rev in shown for exp in (rev.get("experiments") or [])]
        names = sorted(exp.get("name") for exp in experiments)
        assert names == ["slurm-0", "slurm-1"], (names, logs)
        for exp in experiments:
            data = exp["revs"][0]["data"]
            loss = data["metrics"]["metrics/train.json"]["data"]["eval_loss"]
            assert 0 < loss < 20, loss
        rates = {exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"]["learning_rate"]
                 for exp in experiments}
        assert len(rates) == 2  # two different trials, not one run twice

        # The report job: best params and plots from the shared study.
        sh(["sbatch", "--wait", "hpc/hpo_report.sbatch"], repo, env)
        best = json.loads((repo / "metrics" / "hpo.json").read_text())
        assert best["n_complete"] == 2 and best["workers"] == 2 and best["storage"] == "journal"
        assert (repo / "metrics" / "hpo_history.png").stat().st_size > 1000

        # One experiment for one param set, pushed home.
        sh(["sbatch", "--wait", "--cpus-per-task=1", "--mem=2G", "hpc/exp_run.sbatch",
            "-S", "train.learning_rate=0.01"], repo, env)
        listed = sh(["dvc", "exp", "list", "--name-only"], repo, env).split()
        assert any(name.startswith("exp-") for name in listed), listed

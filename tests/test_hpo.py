"""The Optuna study drives real DVC experiments: a toy DVC project whose metric is a known function of params."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common.cli import StageError
from stages.hpo import read_metric, run_study
from tests.pinned_params import hpo_params


def test_study_finds_the_minimum_with_an_injected_runner(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    seen: list[dict] = []

    def runner(overrides, target):
        seen.append(overrides)
        x = overrides["train.learning_rate"]
        (metrics / "train.json").write_text(json.dumps({"eval_loss": (x - 0.3) ** 2}))

    params = hpo_params(n_trials=25, n_startup_trials=8, target="train", metric="metrics/train.json:eval_loss",
                        direction="minimize", seed=1, storage="", prune_on="",
                        space={"train.learning_rate": {"type": "float", "low": 0.0, "high": 1.0}})
    result = run_study(params, runner=runner, root=tmp_path)
    assert result["n_complete"] == 25
    assert abs(result["best_params"]["train.learning_rate"] - 0.3) < 0.1
    assert len(seen) == 25


def test_failed_trials_are_recorded_not_fatal(tmp_path):
    calls = {"n": 0}

    def runner(overrides, target):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("dvc exp run failed: boom")
        (tmp_path / "m.json").write_text(json.dumps({"a": {"b": overrides["k"]}}))

    params = hpo_params(n_trials=3, n_startup_trials=2, metric="m.json:a.b", storage="", seed=0, prune_on="",
                        space={"k": {"type": "categorical", "choices": [1, 2, 3]}})
    result = run_study(params, runner=runner, root=tmp_path)
    assert result["n_complete"] == 3 and result["n_failed"] == 1  # a failed trial is recorded and replaced


def test_read_metric_errors_are_clear(tmp_path):
    (tmp_path / "m.json").write_text('{"a": 1}')
    assert read_metric("m.json:a", tmp_path) == 1.0
    with pytest.raises(StageError, match="key 'b'"):
        read_metric("m.json:b", tmp_path)
    with pytest.raises(StageError, match="not written"):
        read_metric("missing.json:a", tmp_path)


def test_trials_are_dvc_experiments(tmp_path, monkeypatch):
    """End to end through `dvc exp run -S`: every trial shows up in `dvc exp show`, resumable storage."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path / "home"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text("train:\n  x: 0.0\n")
    (repo / "objective.py").write_text(
        "import json, yaml\n"
        "x = yaml.safe_load(open('params.yaml'))['train']['x']\n"
        "json.dump({'loss': (x - 2) ** 2}, open('m.json', 'w'))\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: python objective.py\n    deps: [objective.py]\n    params: [train.x]\n"
        "    metrics:\n      - m.json:\n          cache: false\n")

    def sh(*cmd):
        return subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, text=True).stdout

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "init")
    monkeypatch.chdir(repo)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("HOME", env["HOME"])
    params = hpo_params(n_trials=3, n_startup_trials=2, target="train", metric="m.json:loss", seed=0, prune_on="",
                        storage=f"sqlite:///{tmp_path}/study.db", study_name="t",
                        space={"train.x": {"type": "categorical", "choices": [1.0, 2.0, 4.0]}})
    first = run_study(params)
    second = run_study(params.model_copy(update={"n_trials": 4}))  # resumes: only one more trial runs
    assert first["n_complete"] == 3 and second["n_complete"] == 4
    assert first["best_params"] == {"train.x": 2.0} and first["best_value"] == 0.0
    experiments = sh("dvc", "exp", "list", "--name-only").split()
    assert len(experiments) >= 3  # every trial is a DVC experiment (TPE may repeat a choice: DVC dedups those)


def test_a_hopeless_trial_is_pruned_from_its_live_curve(tmp_path, monkeypatch):
    """The worker follows the curve the stage writes while it runs and stops the DVC run the pruner gives up on."""
    import optuna

    from stages.hpo import open_study, run_worker

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path / "home"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text("train:\n  x: 0.0\n")
    (repo / "objective.py").write_text(  # a dvclive-style TSV, one point every 0.3 s, like train's loss curve
        "import json, time, yaml\n"
        "x = yaml.safe_load(open('params.yaml'))['train']['x']\n"
        "with open('curve.tsv', 'w') as fh:\n"
        "    fh.write('step\\tloss\\n')\n"
        "    for step in range(10):\n"
        "        fh.write(f'{step}\\t{(x - 2) ** 2 + 1 / (step + 1)}\\n'); fh.flush(); time.sleep(0.3)\n"
        "json.dump({'loss': (x - 2) ** 2}, open('m.json', 'w'))\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: python objective.py\n    deps: [objective.py]\n    params: [train.x]\n"
        "    metrics:\n      - m.json:\n          cache: false\n")
    (repo / ".gitignore").write_text("curve.tsv\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "i"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    monkeypatch.chdir(repo)
    for key in ("PATH", "HOME", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(key, env[key])
    params = hpo_params(n_trials=4, target="train", metric="m.json:loss", seed=0, study_name="p",
                        storage=f"sqlite:///{tmp_path}/p.db", n_startup_trials=2, prune_warmup_steps=0,
                        prune_on="curve.tsv", poll_seconds=0.2,
                        space={"train.x": {"type": "float", "low": 0.0, "high": 10.0}})
    study = open_study(params)
    for x in (2.0, 2.5, 9.0, 2.1):  # the third is hopeless from its first point on
        study.enqueue_trial({"train.x": x})
    run_worker(params)
    trials = open_study(params).get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.PRUNED,
                                                               optuna.trial.TrialState.COMPLETE], states
    pruned = trials[2]
    assert pruned.params == {"train.x": 9.0}
    assert 1 <= len(pruned.intermediate_values) < 10  # stopped before the stage wrote its whole curve
    assert len(trials[0].intermediate_values) > len(pruned.intermediate_values)  # a finished one ran on
    assert trials[3].value == pytest.approx(0.01)  # the workspace was usable again after the stopped run

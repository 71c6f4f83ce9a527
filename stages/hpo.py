"""Hyper-parameter search: an Optuna study whose every trial is a DVC experiment.

Each trial samples params from `hpo.space`, runs `dvc exp run -S key=value ... <target>`, and reads the objective
from a metrics file. Because every trial is a real experiment, `dvc exp show` compares them all, and the
best one can be applied with `dvc exp apply`. The study lives in `hpo.storage`, so a killed search resumes.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stages.common.cli import StageError, run_cli, setup_logging, stage_parser
from stages.common.jsonl import read_json
from stages.common.params import load_params

log = logging.getLogger(__name__)

TrialRunner = Callable[[dict[str, Any], str], None]


def sample(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one value per param from its declared distribution (sorted keys: same study, same draws)."""
    values: dict[str, Any] = {}
    for key in sorted(space):
        spec = space[key]
        kind = spec.get("type")
        if kind == "float":
            values[key] = trial.suggest_float(key, spec["low"], spec["high"], log=bool(spec.get("log", False)))
        elif kind == "int":
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], log=bool(spec.get("log", False)))
        elif kind == "categorical":
            values[key] = trial.suggest_categorical(key, list(spec["choices"]))
        else:
            raise StageError(f"hpo.space.{key}: type must be float, int or categorical, not {kind!r}")
    return values


def read_metric(spec: str, root: Path = Path(".")) -> float:
    """`metrics/train.json:eval_loss` -> the float at that dotted key."""
    file_part, _, key = spec.partition(":")
    path = root / file_part
    if not path.is_file():
        raise StageError(f"hpo.metric: {path} was not written by the trial")
    node: Any = read_json(path)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise StageError(f"hpo.metric: key '{key}' not found in {path}")
        node = node[part]
    return float(node)


def dvc_exp_run(overrides: dict[str, Any], target: str, name: str | None = None) -> None:
    """Run one trial as a DVC experiment in the workspace (its results stay comparable in `dvc exp show`)."""
    cmd = ["dvc", "exp", "run", target]
    if name:
        cmd += ["--name", name]
    for key, value in sorted(overrides.items()):
        cmd += ["-S", f"{key}={value}"]
    log.info("trial: %s", " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env_with_git_identity())
    if result.returncode != 0:
        lines = (result.stderr + result.stdout).strip().splitlines()
        errors = [line for line in lines if line.startswith("ERROR")] or lines[-1:] or ["no output"]
        raise RuntimeError(f"dvc exp run failed: {errors[0]}")


def _env_with_git_identity() -> dict[str, str]:
    """`dvc exp run` commits to hidden refs; after the first trial that needs a git identity. Lend one if unset."""
    env = dict(os.environ)
    for key in ("name", "email"):
        probe = subprocess.run(["git", "config", f"user.{key}"], capture_output=True, text=True)
        if probe.returncode != 0 or not probe.stdout.strip():
            value = "cncf-llm hpo" if key == "name" else "hpo@cncf-llm.invalid"
            for role in ("AUTHOR", "COMMITTER"):
                env.setdefault(f"GIT_{role}_{key.upper()}", value)
    return env


def run_study(params: dict[str, Any], runner: TrialRunner = dvc_exp_run, root: Path = Path(".")) -> dict[str, Any]:
    """Optimise `params['metric']` over `params['space']`; failed trials are recorded as failed, not fatal."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = params.get("storage") or None
    if storage and storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=params.get("study_name", "cncf-llm"), storage=storage, load_if_exists=True,
        direction=params.get("direction", "minimize"),
        sampler=optuna.samplers.TPESampler(seed=int(params.get("seed", 42))),
    )
    done = len([t for t in study.trials if t.state.is_finished()])
    todo = max(0, int(params["n_trials"]) - done)
    log.info("study %s: %d trials done, %d to run", study.study_name, done, todo)

    def objective(trial: Any) -> float:
        overrides = sample(trial, params["space"])
        runner(overrides, params.get("target", "train"))
        return read_metric(params["metric"], root)

    study.optimize(objective, n_trials=todo, catch=(RuntimeError, StageError))
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not finished:
        raise StageError("no hpo trial completed; see the log for each trial's error")
    best = study.best_trial
    return {"best_value": best.value, "best_params": best.params, "n_complete": len(finished),
            "n_failed": len(study.trials) - len(finished)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--trials", type=int, help="override hpo.n_trials")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    params = load_params("hpo", args.params)
    if args.trials is not None:
        params["n_trials"] = args.trials
    result = run_study(params)
    log.info("best %s = %.4f with %s (%d complete, %d failed); compare all with `dvc exp show`",
             params["metric"], result["best_value"], result["best_params"], result["n_complete"], result["n_failed"])


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

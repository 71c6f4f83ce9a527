"""Hyper-parameter search: an Optuna study whose every trial is a DVC experiment, run by one or many workers.

    python -m stages.hpo                          # one worker in this workspace, hpo.storage (SQLite)
    python -m stages.hpo --workers 3 --storage journal:.cache/hpo/study.log     # 3 workers on this machine
    python -m stages.hpo worker --storage postgresql://optuna@db-host/optuna   # one more worker, any machine
    python -m stages.hpo report                   # metrics/hpo.json + history and importance plots

Each trial samples `hpo.space`, runs `dvc exp run -S key=value ... <target>` and reads `hpo.metric`. DVC locks one
workspace, so parallel workers each run in their own clone of this repository (under `hpo.workdir`) that shares the
DVC cache and pushes every finished experiment back (`dvc exp push origin`: git refs to this repository, outputs to
the default DVC remote), so `dvc exp show` here lists all of them.

Storage: `sqlite:///file` (one worker, or a few on one machine), `journal:<file>` (several processes on one
machine, lock-free appends), `postgresql://user@host:port/db` (several machines; the password comes from
PGPASSWORD or ~/.pgpass, never from params). On SQLite/PostgreSQL each worker sends heartbeats: a trial whose
worker was killed goes stale after `hpo.grace_period` seconds, is marked FAILED and retried with the same params
by the next worker that looks. Pruning: the worker follows the dvclive curve the train stage writes
(`hpo.prune_on`) and stops a trial the median pruner judges hopeless.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stages.common.cli import StageError, run_cli, setup_logging, stage_parser
from stages.common.jsonl import read_json, write_json
from stages.common.params import load_params
from stages.common.schema import HpoFloat, HpoInt, HpoParams, HpoSpace, validate_params

log = logging.getLogger(__name__)

TrialRunner = Callable[[dict[str, Any], str], None]
OUT_JSON = Path("metrics/hpo.json")
PLOTS = {"history": Path("metrics/hpo_history.png"), "importance": Path("metrics/hpo_importance.png")}


class TrialPrunedByCurve(Exception):
    """The train curve says this trial is hopeless; its DVC run was stopped."""


# ------------------------------------------------------------------------------------------------ sampling
def sample(trial: Any, space: dict[str, HpoSpace]) -> dict[str, Any]:
    """Draw one value per param from its declared distribution (sorted keys: same study, same draws)."""
    values: dict[str, Any] = {}
    for key in sorted(space):
        spec = space[key]
        if isinstance(spec, HpoFloat):
            values[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
        elif isinstance(spec, HpoInt):
            values[key] = trial.suggest_int(key, spec.low, spec.high, step=spec.step, log=spec.log)
        else:
            values[key] = trial.suggest_categorical(key, list(spec.choices))
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


def read_curve(path: Path) -> list[tuple[int, float]]:
    """A dvclive TSV (`step<TAB>value`) as (step, value) pairs; a half-written last line is skipped."""
    points: list[tuple[int, float]] = []
    if not path.is_file():
        return points
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
        parts = line.split("\t")
        with contextlib.suppress(ValueError, IndexError):
            points.append((int(parts[0]), float(parts[-1])))
    return points


# ------------------------------------------------------------------------------------------------ storage
def storage_kind(url: str) -> str:
    if not url:
        return "memory"
    for prefix, kind in (("sqlite:", "sqlite"), ("journal:", "journal"), ("postgresql", "postgresql")):
        if url.startswith(prefix):
            return kind
    raise StageError(f"hpo.storage must be sqlite:///<file>, journal:<file> or postgresql://..., not {redact(url)!r}")


def redact(url: str) -> str:
    """A storage URL without its password, for logs and metrics."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return url


def make_storage(params: HpoParams) -> Any:
    """Optuna storage for `hpo.storage`; RDB storages get heartbeats and retry a killed worker's trial."""
    import optuna

    url = params.storage
    kind = storage_kind(url)
    if kind == "memory":
        return None
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix("journal:").removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if kind == "sqlite":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if "password=" in url or (kind == "postgresql" and ":" in url.split("://", 1)[1].split("@", 1)[0]
                              and "@" in url):
        raise StageError("hpo.storage must not hold a password: set PGPASSWORD (or ~/.pgpass) instead")
    if url.startswith("postgresql://"):  # SQLAlchemy 2.1 defaults to psycopg 3; requirements pin psycopg2-binary
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.8
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=params.max_retry)
    return optuna.storages.RDBStorage(
        url, engine_kwargs={"pool_pre_ping": True} if kind == "postgresql" else None,
        heartbeat_interval=params.heartbeat_interval,
        grace_period=params.grace_period,
        heartbeat_stale_trial_callback=retry)


def open_study(params: HpoParams, worker_index: int = 0) -> Any:
    """The shared study; each worker seeds its sampler with `hpo.seed + worker_index` (equal seeds would make
    parallel workers draw the same start-up trials)."""
    import optuna

    startup = params.n_startup_trials
    return optuna.create_study(
        study_name=params.study_name, storage=make_storage(params), load_if_exists=True,
        direction=params.direction,
        sampler=optuna.samplers.TPESampler(seed=params.seed + worker_index, n_startup_trials=startup,
                                           constant_liar=True),  # parallel workers do not all draw one point
        pruner=optuna.pruners.MedianPruner(n_startup_trials=startup,
                                           n_warmup_steps=params.prune_warmup_steps))


# ------------------------------------------------------------------------------------------------ one trial
def git_env() -> dict[str, str]:
    """`dvc exp run` commits to hidden refs; after the first trial that needs a git identity. Lend one if unset."""
    env = dict(os.environ)
    for key in ("name", "email"):
        probe = subprocess.run(["git", "config", f"user.{key}"], capture_output=True, text=True)
        if probe.returncode != 0 or not probe.stdout.strip():
            value = "cncf-llm hpo" if key == "name" else "hpo@cncf-llm.invalid"
            for role in ("AUTHOR", "COMMITTER"):
                env.setdefault(f"GIT_{role}_{key.upper()}", value)
    return env


def _first_error(output: str) -> str:
    lines = output.strip().splitlines()
    return ([line for line in lines if line.startswith("ERROR")] or lines[-1:] or ["no output"])[0]


def dvc_exp_run(overrides: dict[str, Any], target: str, name: str | None = None, cwd: Path = Path("."),
                watch: Callable[[], None] | None = None, poll_s: float = 2.0) -> None:
    """Run one trial as a DVC experiment in `cwd`; `watch()` is called while it runs and may raise to stop it."""
    cmd = ["dvc", "exp", "run", target]
    if name:
        cmd += ["--name", name]
    for key, value in sorted(overrides.items()):
        cmd += ["-S", f"{key}={value}"]
    log.info("trial: %s", " ".join(cmd))
    with subprocess.Popen(cmd, cwd=cwd, env=git_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        try:
            while proc.poll() is None:
                if watch is not None:
                    watch()
                time.sleep(poll_s)
        except BaseException:
            stop_process_group(proc)
            raise
        output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"dvc exp run failed: {_first_error(output)}")


def stop_process_group(proc: subprocess.Popen[str], grace_s: float = 20.0) -> None:
    """SIGINT first (DVC releases its lock and restores the workspace), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def has_origin(cwd: Path) -> bool:
    return subprocess.run(["git", "remote", "get-url", "origin"], cwd=cwd, capture_output=True).returncode == 0


def push_experiment(name: str, cwd: Path) -> None:
    """Send a finished experiment home: git refs to `origin`, outputs to the default DVC remote if one is set."""
    has_remote = subprocess.run(["dvc", "remote", "default"], cwd=cwd, capture_output=True, text=True)
    cmd = ["dvc", "exp", "push", "origin", name]
    if has_remote.returncode != 0 or not has_remote.stdout.strip():
        cmd.append("--no-cache")
    env = {**git_env(), "GIT_TERMINAL_PROMPT": "0"}  # never wait for a password on a prompt
    try:
        result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        log.warning("dvc exp push %s timed out (the experiment stays in %s)", name, cwd)
        return
    if result.returncode != 0:
        log.warning("dvc exp push %s failed (the experiment stays in %s): %s", name, cwd,
                    _first_error(result.stdout + result.stderr))


# ------------------------------------------------------------------------------------------------ workers
def prepare_clone(root: Path, clone: Path) -> Path:
    """A clone of `root` at its HEAD that shares root's DVC cache and remote; reused when it exists.

    The clone sits at `<workdir>/worker-<id>/repo` with a `shared` link beside it, so params that read
    `../shared/corpus` resolve exactly as in root and no stage reruns because of a path."""
    root = root.resolve()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()
    if not (clone / ".git").exists():
        clone.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", "--no-checkout", str(root), str(clone)], check=True)
    subprocess.run(["git", "fetch", "-q", "origin"], cwd=clone, check=True)
    subprocess.run(["git", "checkout", "-q", "--force", "--detach", head], cwd=clone, check=True)
    shared = root.parent / "shared"
    link = clone.parent / "shared"
    if shared.is_dir() and not link.exists():
        link.symlink_to(shared, target_is_directory=True)
    def dvc(*args: str, cwd: Path) -> str:
        return subprocess.run(["dvc", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()

    cache = subprocess.run(["dvc", "cache", "dir"], cwd=root, capture_output=True, text=True).stdout.strip()
    dvc("cache", "dir", "--local", cache or str(root / ".dvc" / "cache"), cwd=clone)  # one cache for all workers
    dvc("config", "--local", "cache.type", "reflink,hardlink,copy", cwd=clone)
    remote = subprocess.run(["dvc", "remote", "default"], cwd=root, capture_output=True, text=True).stdout.strip()
    if remote:  # a relative remote URL would resolve from the clone: pin root's resolved one
        listed = dvc("remote", "list", cwd=root)
        url = next((line.split()[1] for line in listed.splitlines() if line.split()[:1] == [remote]), "")
        if url:
            dvc("remote", "modify", "--local", remote, "url", url, cwd=clone)
    return clone


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_worker(params: HpoParams, runner: Callable[..., None] | None = None, root: Path = Path("."),
               clone: Path | None = None, worker_index: int = 0) -> Any:
    """Take trials from the shared study until it has `n_trials` finished ones; returns the study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workdir = prepare_clone(root, clone) if clone is not None else root
    study = open_study(params, worker_index)
    n_trials = params.n_trials
    target = params.target
    prune_on = params.prune_on
    me = worker_id()
    ran = 0

    def objective(trial: Any) -> float:
        nonlocal ran
        ran += 1
        trial.set_user_attr("worker", me)
        overrides = sample(trial, params.space)
        frozen = next(t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                      if t.number == trial.number)
        retried = frozen.system_attrs.get("failed_trial")
        name = f"{study.study_name}-{trial.number}"
        log.info("trial %d%s on %s: %s", trial.number, f" (retry of {retried})" if retried is not None else "",
                 me, overrides)
        curve_path = workdir / prune_on if prune_on else None
        if curve_path is not None and curve_path.exists():
            curve_path.unlink()  # the previous trial's curve must not be reported for this one

        reported: set[int] = set()

        def watch() -> None:
            if curve_path is None:
                return
            for step, value in read_curve(curve_path):
                if step not in reported:
                    reported.add(step)
                    trial.report(value, step)
            if reported and trial.should_prune():
                raise TrialPrunedByCurve(f"trial {trial.number} pruned by {prune_on}")

        try:
            if runner is not None:
                runner(overrides, target)
            else:
                dvc_exp_run(overrides, target, name=name, cwd=workdir, watch=watch,
                            poll_s=params.poll_seconds)
        except TrialPrunedByCurve as exc:
            log.info("%s", exc)
            raise optuna.TrialPruned(str(exc)) from None
        value = read_metric(params.metric, workdir)
        if runner is None and has_origin(workdir):  # a clone always has one; a workspace when it was cloned
            push_experiment(name, workdir)
        return value

    states = optuna.trial.TrialState
    finished = (states.COMPLETE, states.PRUNED)
    # Running trials count as taken: two workers never both start the last one. A dead worker's running trial
    # goes stale (heartbeats), comes back as WAITING and is run again.
    taken = (*finished, states.RUNNING)
    stop_at = optuna.study.MaxTrialsCallback(n_trials, states=taken)
    deadline = time.monotonic() + params.max_wait_seconds
    max_failed = params.max_failed_trials or n_trials  # a broken setup fails fast, not forever
    while True:
        trials = study.get_trials(deepcopy=False)
        waiting = sum(t.state == states.WAITING for t in trials)  # retries of dead workers' trials, enqueued ones
        todo = max(n_trials - sum(t.state in taken for t in trials), waiting)
        mine_failed = sum(t.state == states.FAIL and t.user_attrs.get("worker") == me for t in trials)
        if mine_failed >= max_failed:
            log.warning("worker %s: %d trials failed here; stopping (hpo.max_failed_trials)", me, mine_failed)
            break
        if todo > 0:
            study.optimize(objective, n_trials=min(todo, max_failed - mine_failed), callbacks=[stop_at],
                           catch=(RuntimeError, StageError))
            continue
        # The study is full, but another worker's trial may still run, or its worker may have died: wait for it,
        # or for it to go stale and be re-queued (heartbeats), and run the retry here.
        if not any(t.state == states.RUNNING for t in trials) or time.monotonic() > deadline:
            break
        time.sleep(params.heartbeat_interval)
        with contextlib.suppress(NotImplementedError, AttributeError):
            optuna.storages.fail_stale_trials(study)
    log.info("worker %s ran %d trials", me, ran)
    return study


def run_study(params: HpoParams, runner: TrialRunner | None = None, root: Path = Path(".")) -> dict[str, Any]:
    """One worker in this workspace (or the injected runner), then the summary; failed trials are recorded."""
    return summarize(run_worker(params, runner=runner, root=root))


def spawn_workers(params: HpoParams, n_workers: int, root: Path, params_path: str) -> None:
    """N worker processes on this machine, each in its own clone, all on one study."""
    kind = storage_kind(params.storage)
    if kind == "memory":
        raise StageError("several workers need a shared hpo.storage (journal:<file> or postgresql://...)")
    workdir = Path(params.workdir)
    procs = []
    for i in range(n_workers):
        cmd = [sys.executable, "-m", "stages.hpo", "worker", "--params", params_path,
               "--clone", str(workdir / f"worker-{i}" / "repo"), "--storage", params.storage,
               "--trials", str(params.n_trials), "--worker-index", str(i)]
        procs.append(subprocess.Popen(cmd, cwd=root))
        time.sleep(1.0)  # staggered: the first worker creates the study tables
    codes = [p.wait() for p in procs]
    if any(codes):
        log.warning("worker exit codes: %s", codes)


# ------------------------------------------------------------------------------------------------ report
def summarize(study: Any) -> dict[str, Any]:
    import optuna

    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == states.COMPLETE]
    if not complete:
        raise StageError("no hpo trial completed; see the log for each trial's error")
    best = study.best_trial
    return {"best_value": best.value, "best_params": dict(sorted(best.params.items())),
            "best_trial": best.number, "n_complete": len(complete),
            "n_pruned": len([t for t in trials if t.state == states.PRUNED]),
            "n_failed": len([t for t in trials if t.state == states.FAIL]),
            "n_retried": len([t for t in trials if t.system_attrs.get("failed_trial") is not None]),
            "workers": sorted({str(t.user_attrs.get("worker", "")) for t in trials} - {""})}


def write_report(study: Any, params: HpoParams, out_json: Path = OUT_JSON,
                 plots: dict[str, Path] = PLOTS) -> dict[str, Any]:
    """metrics/hpo.json + PNG plots (matplotlib Agg: they render offline, unlike DVC's vega HTML)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    summary = summarize(study)
    summary.update({"metric": params.metric, "direction": params.direction,
                    "study_name": study.study_name, "storage": storage_kind(params.storage)})
    summary["workers"] = len(summary["workers"])
    write_json(out_json, summary)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    ax = plot_optimization_history(study)
    ax.figure.savefig(plots["history"], dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(ax.figure)
    if summary["n_complete"] >= 2 and len(params.space) >= 2:
        ax = plot_param_importances(study)
        ax.figure.savefig(plots["importance"], dpi=100, bbox_inches="tight", metadata={"Software": None})
        plt.close(ax.figure)
    log.info("best %s = %.4f with %s (%d complete, %d pruned, %d failed, %d retried); wrote %s",
             params.metric, summary["best_value"], summary["best_params"], summary["n_complete"],
             summary["n_pruned"], summary["n_failed"], summary["n_retried"], out_json)
    return summary


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("mode", nargs="?", default="study", choices=["study", "worker", "report"],
                        help="study: run workers then report (default); worker: join the study; report: write it")
    parser.add_argument("--trials", type=int, help="override hpo.n_trials (finished trials the study aims at)")
    parser.add_argument("--workers", type=int, default=1, help="parallel workers on this machine, each in a clone")
    parser.add_argument("--storage", help="override hpo.storage (sqlite:///f, journal:f, postgresql://...)")
    parser.add_argument("--study-name", help="override hpo.study_name")
    parser.add_argument("--worker-index", type=int, default=int(os.environ.get("SLURM_ARRAY_TASK_ID", "0") or 0),
                        help="worker: offsets the sampler seed (default: $SLURM_ARRAY_TASK_ID or 0)")
    parser.add_argument("--clone", type=Path, help="worker: run in this clone of the repository (created if absent)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    raw = load_params("hpo", args.params)
    for key, value in (("n_trials", args.trials), ("storage", args.storage), ("study_name", args.study_name)):
        if value is not None:
            raw[key] = value
    # the flags are validated with the file: a bad value is refused in one line before anything runs
    params = validate_params("hpo", HpoParams, raw)
    if args.workers < 1:
        raise StageError("--workers must be >= 1")
    if args.mode == "worker":
        run_worker(params, clone=args.clone, worker_index=args.worker_index)
        return
    if args.mode == "study":
        if args.workers == 1:
            write_report(run_worker(params), params)
            return
        spawn_workers(params, args.workers, Path("."), args.params)
    write_report(open_study(params), params)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))


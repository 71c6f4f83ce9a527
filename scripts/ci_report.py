"""CI reproduces metrics: run the whole DAG on the CI profile and report how this change moved them.

    python scripts/ci_report.py [--report report.md] [--update-baseline]
    python scripts/ci_report.py --check-only --workspace DIR     # only the contract checks on a finished run

The profile (`configs/ci/profile.yaml`) is a slice of ../shared/corpus and the tiny test model. The run happens in a
scratch copy of the repository (what `git ls-files` holds, as a fresh clone would) whose HEAD is the pinned baseline
(`configs/ci/baseline/`: the profile's params.yaml and metrics/), so `dvc params diff` and `dvc metrics diff` against
HEAD tell what this change moved. Every stage in dvc.yaml runs and every `metrics/**/*.json` is compared: new stages
and metrics flow through without editing this script.

Fails (exit 1) when a data contract breaks: a contracted file missing or empty, a record without a provenance field,
a NaN or infinite metric, a metric outside its declared tolerance, or a stage that fails.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fnmatch
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("ci_report")

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILE = REPO_ROOT / "configs" / "ci" / "profile.yaml"
BASELINE = REPO_ROOT / "configs" / "ci" / "baseline"
GIT_ID = {"GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@cncf-llm.invalid", "GIT_COMMITTER_NAME": "ci",
          "GIT_COMMITTER_EMAIL": "ci@cncf-llm.invalid"}


# ------------------------------------------------------------------------------------------------ checks
def check_contracts(workspace: Path, contracts: list[dict[str, Any]]) -> list[str]:
    """Each contracted JSONL exists, is non-empty and every record carries its fields (non-null)."""
    failures: list[str] = []
    for contract in contracts:
        path = workspace / contract["path"]
        if not path.is_file():
            failures.append(f"`{contract['path']}` is missing")
            continue
        fields = list(contract.get("fields", []))
        n = 0
        missing: dict[str, int] = {}
        with path.open(encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    failures.append(f"`{contract['path']}` line {line_no} is not JSON")
                    break
                n += 1
                for field in fields:
                    if record.get(field) in (None, ""):
                        missing[field] = missing.get(field, 0) + 1
        if n == 0 and not contract.get("allow_empty", False):
            failures.append(f"`{contract['path']}` is empty")
        for field, count in sorted(missing.items()):
            failures.append(f"`{contract['path']}`: {count} of {n} records lack `{field}`")
    return failures


def flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys of nested dicts (lists by index), leaves only."""
    if isinstance(node, dict):
        for key in sorted(node):
            yield from flatten(node[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from flatten(item, f"{prefix}.{i}" if prefix else str(i))
    else:
        yield prefix, node


def read_metrics(root: Path) -> dict[str, Any]:
    """`<file>:<dotted.key>` -> value for every metrics/**/*.json under root (JSON NaN/Infinity kept as floats)."""
    values: dict[str, Any] = {}
    for path in sorted((root / "metrics").rglob("*.json")) if (root / "metrics").is_dir() else []:
        rel = path.relative_to(root).as_posix()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            values[f"{rel}:"] = f"unreadable: {exc}"
            continue
        for key, value in flatten(data):
            values[f"{rel}:{key}"] = value
    return values


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def rule_for(key: str, tolerances: list[dict[str, Any]]) -> dict[str, Any]:
    for rule in tolerances:
        if fnmatch.fnmatchcase(key, rule["match"]):
            return rule
    return {"match": "(default: exact)", "rel": 0.0, "abs": 0.0}


def check_metrics(current: dict[str, Any], baseline: dict[str, Any],
                  tolerances: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(failures, notes): non-finite metrics and moves outside tolerance fail; new/removed metrics are notes."""
    failures: list[str] = []
    notes: list[str] = []
    for key, value in sorted(current.items()):
        if isinstance(value, str) and value.startswith("unreadable:"):
            failures.append(f"`{key}` {value}")
        elif isinstance(value, float) and not math.isfinite(value):
            failures.append(f"`{key}` is {value}")
    for key in sorted(set(current) | set(baseline)):
        new, old = current.get(key), baseline.get(key)
        rule = rule_for(key, tolerances)
        if rule.get("ignore") or not (is_number(new) or is_number(old)):
            continue
        if key not in baseline:
            notes.append(f"new metric `{key}` = {new}")
            continue
        if key not in current:
            failures.append(f"metric `{key}` disappeared (baseline {old})")
            continue
        if not (is_number(new) and is_number(old)) or not (math.isfinite(new) and math.isfinite(old)):
            continue  # a non-finite value is reported above
        allowed = max(float(rule.get("abs", 0.0)), float(rule.get("rel", 0.0)) * abs(old))
        if abs(new - old) > allowed + 1e-12:
            failures.append(f"`{key}` moved {old} -> {new} (allowed ±{allowed:.4g}, rule `{rule['match']}`)")
    return failures, notes


# ------------------------------------------------------------------------------------------------ the run
def sh(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    log.info("$ %s", " ".join(cmd))
    result = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-6000:]}")
    return result


def deep_merge(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in updates.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def copy_tracked(src: Path, dst: Path) -> None:
    """What a fresh clone holds: tracked and untracked-not-ignored files (so a PR's uncommitted work counts)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=src,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (src / rel).is_file() and not (src / rel).is_symlink():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)


def prepare_corpus(dst: Path, corpus: Path, repos: list[str]) -> None:
    """../ci-corpus: the profile's slice of the shared corpus and the tiny model, in the scratch folder.

    The doc trees are copied (a few MB; links inside them stay links): scrape refuses a mirror tree that is itself
    a symlink, as it would refuse one in a user's mirror. The other corpus files are linked."""
    (dst / "repos").mkdir(parents=True)
    for name in repos:
        if not (corpus / "repos" / name).is_dir():
            raise RuntimeError(f"corpus repo {name} not found under {corpus}/repos (configs/ci/profile.yaml)")
        shutil.copytree(corpus / "repos" / name, dst / "repos" / name, symlinks=True)
    for name in ("landscape", "stackexchange", "MANIFEST.csv"):
        (dst / name).symlink_to(corpus / name)
    sys.path.insert(0, str(REPO_ROOT))
    from tests.fakes.tiny_model import build_tiny_model, corpus_text

    build_tiny_model(dst / "tiny-model", corpus_text(corpus / "repos" / "prometheus__docs"))


def git_commit(project: Path, env: dict[str, str], message: str) -> None:
    sh(["git", "add", "-A"], project, env)
    sh(["git", "commit", "-qm", message, "--allow-empty"], project, env)


def run_profile(work: Path, corpus: Path, profile: dict[str, Any], env: dict[str, str],
                timeout: float) -> tuple[Path, str]:
    """Scratch project at HEAD = baseline, workspace = this change with the profile applied; `dvc repro` it."""
    project = work / "project"
    project.mkdir(parents=True)
    copy_tracked(REPO_ROOT, project)
    prepare_corpus(work / "ci-corpus", corpus, list(profile["corpus_repos"]))
    params = deep_merge(yaml.safe_load((project / "params.yaml").read_text()), profile.get("params", {}))
    sh(["git", "init", "-q"], project, env)
    # HEAD: the pinned baseline (its params and metrics) with this change's code and dvc.yaml.
    metrics_dir = project / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    baseline_params = BASELINE / "params.yaml"
    (project / "params.yaml").write_text(baseline_params.read_text() if baseline_params.is_file()
                                         else yaml.safe_dump(params, sort_keys=False))
    if (BASELINE / "metrics").is_dir():
        shutil.copytree(BASELINE / "metrics", metrics_dir)
    git_commit(project, env, "ci baseline")
    # Workspace: this change.
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(metrics_dir, ignore_errors=True)
    returncode, output = run_streamed(["dvc", "repro"], project, env, timeout)
    if returncode != 0:
        return project, "dvc repro failed:\n\n```\n" + output[-3000:] + "\n```"
    return project, ""


def run_streamed(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run `cmd` with its output echoed line by line to the log (so a CI log shows which stage is running), in its
    own process group, killed whole after `timeout` seconds; returns (exit code, the output's last lines)."""
    log.info("$ %s  (timeout %.0f s)", " ".join(cmd), timeout)
    tail: collections.deque[str] = collections.deque(maxlen=200)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            sys.stderr.write(f"  | {line}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        busy = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,rss,etime,args", "--sort=-pcpu"], capture_output=True,
                              text=True, check=False).stdout.splitlines()[:15]
        log.error("%s still running after %.0f s; busiest processes:\n%s", " ".join(cmd), timeout, "\n".join(busy))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        tail.append(f"ci_report: `{' '.join(cmd)}` killed after {timeout:.0f} s (--repro-timeout)\n")
        returncode = -signal.SIGKILL
    reader.join(timeout=10)
    output = "".join(tail)
    if returncode != 0:
        log.error("%s failed (%d):\n%s", " ".join(cmd), returncode, output[-6000:])
    return returncode, output


def markdown_report(project: Path, env: dict[str, str], failures: list[str], notes: list[str]) -> str:
    params_diff = sh(["dvc", "params", "diff", "HEAD", "--md"], project, env, check=False).stdout.strip()
    metrics_diff = sh(["dvc", "metrics", "diff", "HEAD", "--md", "--precision", "4"], project, env,
                      check=False).stdout.strip()
    lines = ["## CI profile: metrics reproduced", "",
             f"**{'FAIL' if failures else 'PASS'}**: {len(failures)} contract failure(s).", ""]
    lines += [f"- ❌ {f}" for f in failures] + ([""] if failures else [])
    lines += ["### Params vs baseline (`dvc params diff`)", "", params_diff or "No param changed.", "",
              "### Metrics vs baseline (`dvc metrics diff`)", "", metrics_diff or "No metric changed.", ""]
    if notes:
        lines += ["### Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def update_baseline(project: Path) -> None:
    """Pin this run's params and metrics as the profile's baseline (commit the result)."""
    shutil.rmtree(BASELINE, ignore_errors=True)
    (BASELINE / "metrics").mkdir(parents=True)
    shutil.copy(project / "params.yaml", BASELINE / "params.yaml")
    for path in sorted((project / "metrics").rglob("*.json")):
        target = BASELINE / path.relative_to(project)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    log.info("baseline updated in %s", BASELINE)


def check_workspace(workspace: Path, profile: dict[str, Any], baseline_root: Path) -> tuple[list[str], list[str]]:
    failures = check_contracts(workspace, profile.get("contracts", []))
    metric_failures, notes = check_metrics(read_metrics(workspace), read_metrics(baseline_root),
                                           profile.get("tolerances", []))
    return failures + metric_failures, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", type=Path, default=PROFILE)
    parser.add_argument("--corpus", type=Path,
                        default=Path(os.environ.get("CNCF_CORPUS", REPO_ROOT.parent / "shared" / "corpus")))
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temp dir, removed afterwards)")
    parser.add_argument("--report", type=Path, help="also write the markdown report here")
    parser.add_argument("--update-baseline", action="store_true", help="pin this run as configs/ci/baseline/")
    parser.add_argument("--repro-timeout", type=float, default=1500,
                        help="seconds `dvc repro` may take before it is killed and CI fails (default 1500: the "
                             "profile takes ~4 min on 2 idle cores)")
    parser.add_argument("--check-only", action="store_true", help="only check --workspace (a finished run)")
    parser.add_argument("--workspace", type=Path, help="with --check-only: the project folder to check")
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="with --check-only: baseline root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    profile = yaml.safe_load(args.profile.read_text())

    if args.check_only:
        if not args.workspace:
            parser.error("--check-only needs --workspace")
        failures, notes = check_workspace(args.workspace, profile, args.baseline)
        report = "\n".join([f"**{'FAIL' if failures else 'PASS'}**", *[f"- ❌ {f}" for f in failures],
                            *[f"- {n}" for n in notes]])
    else:
        if not (args.corpus / "repos").is_dir():
            print(f"ci_report: corpus not found at {args.corpus} (set CNCF_CORPUS)", file=sys.stderr)
            return 2
        bin_dir = str(Path(sys.executable).parent)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")}, **GIT_ID,
               "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
        work = args.work or Path(tempfile.mkdtemp(prefix="cncf-llm-ci-"))
        log.info("machine: %s CPUs (%d usable), load %s, %.1f GB free under %s", os.cpu_count(),
                 len(os.sched_getaffinity(0)), " ".join(f"{x:.1f}" for x in os.getloadavg()),
                 shutil.disk_usage(work).free / 1e9, work)
        try:
            project, repro_error = run_profile(work, args.corpus.resolve(), profile, env, args.repro_timeout)
            failures, notes = check_workspace(project, profile, args.baseline)
            if repro_error:
                failures.insert(0, repro_error)
            report = markdown_report(project, env, failures, notes)
            if args.update_baseline:  # moves are the point of a new baseline; broken contracts are not
                blocking, _ = check_workspace(project, profile, project)
                if repro_error or blocking:
                    log.error("not updating the baseline: %s", repro_error or blocking[0])
                else:
                    update_baseline(project)
        finally:
            if not args.work:
                shutil.rmtree(work, ignore_errors=True)
    print(report)
    if args.report:
        args.report.write_text(report + "\n", encoding="utf-8")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

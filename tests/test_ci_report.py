"""The CI report's contract checks fail when a contract is broken on purpose, and pass on a healthy run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from scripts.ci_report import check_contracts, check_metrics, read_metrics

PROFILE = {
    "contracts": [{"path": "data/merge/train.jsonl", "fields": ["messages", "url", "license"]},
                  {"path": "data/merge/test.jsonl", "fields": ["messages", "url", "license"]}],
    "tolerances": [{"match": "*seconds*", "ignore": True},
                   {"match": "metrics/train.json:*", "rel": 0.05, "abs": 0.001}],
}
RECORD = {"messages": [{"role": "user", "content": "q"}], "url": "https://x", "license": "MIT"}


def healthy_run(root: Path, eval_loss: float = 2.0) -> Path:
    for split in ("train", "test"):
        path = root / "data" / "merge" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(RECORD) + "\n" + json.dumps(RECORD) + "\n")
    (root / "metrics").mkdir(parents=True, exist_ok=True)
    (root / "metrics" / "train.json").write_text(json.dumps({"eval_loss": eval_loss, "wall_seconds": 3.0}))
    (root / "metrics" / "merge.json").write_text(json.dumps({"out": {"train": 2, "test": 2}}))
    return root


def checks(workspace: Path, baseline: Path) -> list[str]:
    failures = check_contracts(workspace, PROFILE["contracts"])
    metric_failures, _ = check_metrics(read_metrics(workspace), read_metrics(baseline), PROFILE["tolerances"])
    return failures + metric_failures


def test_a_healthy_run_passes_within_tolerance(tmp_path: Path) -> None:
    baseline = healthy_run(tmp_path / "baseline")
    run = healthy_run(tmp_path / "run", eval_loss=2.05)  # +2.5 %: inside the declared 5 %
    (run / "metrics" / "train.json").write_text(json.dumps({"eval_loss": 2.05, "wall_seconds": 99.0}))
    assert checks(run, baseline) == []


def test_each_broken_contract_fails(tmp_path: Path) -> None:
    baseline = healthy_run(tmp_path / "baseline")

    empty = healthy_run(tmp_path / "empty")
    (empty / "data/merge/test.jsonl").write_text("")
    assert checks(empty, baseline) == ["`data/merge/test.jsonl` is empty"]

    no_provenance = healthy_run(tmp_path / "prov")
    (no_provenance / "data/merge/train.jsonl").write_text(
        json.dumps(RECORD) + "\n" + json.dumps({**RECORD, "license": ""}) + "\n")
    assert checks(no_provenance, baseline) == ["`data/merge/train.jsonl`: 1 of 2 records lack `license`"]

    nan = healthy_run(tmp_path / "nan")
    (nan / "metrics/train.json").write_text('{"eval_loss": NaN, "wall_seconds": 1.0}')
    assert checks(nan, baseline) == ["`metrics/train.json:eval_loss` is nan"]

    drift = healthy_run(tmp_path / "drift", eval_loss=2.5)
    assert len(failures := checks(drift, baseline)) == 1 and "eval_loss` moved 2.0 -> 2.5" in failures[0]

    counts = healthy_run(tmp_path / "counts")  # data metrics must match exactly (deterministic stages)
    (counts / "metrics/merge.json").write_text(json.dumps({"out": {"train": 2, "test": 1}}))
    assert checks(counts, baseline) == [
        "`metrics/merge.json:out.test` moved 2 -> 1 (allowed ±0, rule `(default: exact)`)"]

    missing = healthy_run(tmp_path / "missing")
    (missing / "data/merge/train.jsonl").unlink()
    (missing / "metrics/merge.json").unlink()
    assert checks(missing, baseline) == ["`data/merge/train.jsonl` is missing",
                                         "metric `metrics/merge.json:out.test` disappeared (baseline 2)",
                                         "metric `metrics/merge.json:out.train` disappeared (baseline 2)"]


def test_new_metrics_flow_through_as_notes(tmp_path: Path) -> None:
    baseline = healthy_run(tmp_path / "baseline")
    run = healthy_run(tmp_path / "run")
    (run / "metrics" / "index.json").write_text(json.dumps({"chunks": 10, "recall_at_5": 0.8}))
    failures, notes = check_metrics(read_metrics(run), read_metrics(baseline), PROFILE["tolerances"])
    assert failures == [] and notes == ["new metric `metrics/index.json:chunks` = 10",
                                        "new metric `metrics/index.json:recall_at_5` = 0.8"]


def test_the_cli_exits_nonzero_on_a_broken_contract(tmp_path: Path, repo_root: Path) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(PROFILE))
    baseline = healthy_run(tmp_path / "baseline")
    run = healthy_run(tmp_path / "run")
    cmd = [sys.executable, "scripts/ci_report.py", "--profile", str(profile), "--check-only",
           "--workspace", str(run), "--baseline", str(baseline)]
    ok = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (run / "data/merge/test.jsonl").write_text("")
    broken = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True)
    assert broken.returncode == 1 and "`data/merge/test.jsonl` is empty" in broken.stdout

"""End to end: the real `dvc` CLI over a copy of this repository, offline, on the shared corpus.

These are the runs a user makes: `dvc exp run -S scrape.source=mirror ...`, a second `dvc repro` that does nothing,
a param change that reruns only what depends on it, and the whole DAG down to eval with a tiny model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.common.jsonl import read_jsonl

pytestmark = pytest.mark.slow

GIT_ID = {"GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@test", "GIT_COMMITTER_NAME": "e2e",
          "GIT_COMMITTER_EMAIL": "e2e@test"}


def copy_project(src: Path, dst: Path, env: dict[str, str]) -> Path:
    """What a fresh clone holds: tracked and untracked-not-ignored files, committed in a new git repo."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=src,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (src / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "fresh clone"]):
        subprocess.run(["git", *args], cwd=dst, check=True, env={**env, **GIT_ID}, capture_output=True)
    return dst


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-4000:]}"
    return output


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")  # no global git identity, no user config: a fresh machine
    bin_dir = str(Path(sys.executable).parent)
    # A user's shell: no git identity, and Python writes __pycache__ beside the stage modules (DVC must ignore it).
    base = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and k != "PYTHONDONTWRITEBYTECODE"}
    return {**base, "HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{base['PATH']}", "GITHUB_TOKEN": "fake-e2e-github-token-7f3a9c51"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo_root, corpus, env) -> Path:
    dst = copy_project(repo_root, tmp_path_factory.mktemp("project"), env)
    shared = dst.parent / "shared"  # params.yaml reads ../shared/corpus, as on a fresh clone beside ../shared
    if not shared.exists():
        shared.mkdir()
        (shared / "corpus").symlink_to(corpus, target_is_directory=True)
    return dst


def test_data_stages_reproduce_incrementally(project, corpus, env):
    c = corpus
    out = run(["dvc", "exp", "run", "-S", "scrape.source=mirror", "-S", f"scrape.mirror_dir={c}/repos",
               "-S", f"scrape.landscape_url={c}/landscape/landscape.yml", "langfilter"], project, env)
    assert ran_stages(out) == {"scrape", "unify", "langfilter"}
    kept = list(read_jsonl(project / "data/langfilter/chunks.jsonl"))
    assert len(kept) > 5000
    assert {r["lang"] for r in kept} == {"en"}
    projects = {r["project"] for r in kept}
    assert {"Kubernetes", "Prometheus", "Helm", "etcd", "CNCF TAG Security"} <= projects
    for stage in ("scrape", "unify", "langfilter"):
        assert json.loads((project / f"metrics/{stage}.json").read_text())

    again = run(["dvc", "repro", "langfilter"], project, env)
    assert ran_stages(again) == set(), again

    params = project / "params.yaml"
    text = params.read_text()
    assert "  min_confidence: 0.5 " in text
    params.write_text(text.replace("  min_confidence: 0.5 ", "  min_confidence: 0.6 ", 1))
    changed = run(["dvc", "repro", "langfilter"], project, env)
    assert ran_stages(changed) == {"langfilter"}

    # The token lent to the environment reaches no output, metric, param or lock file.
    token = env["GITHUB_TOKEN"]
    for path in [*project.glob("data/**/*.jsonl"), *project.glob("metrics/*.json"),
                 project / "params.yaml", project / "dvc.lock"]:
        if path.is_file():
            assert token not in path.read_text(encoding="utf-8", errors="replace"), path


def set_params(project: Path, updates: dict[str, dict]) -> None:
    """Edit params.yaml the way a user would (section by section)."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in updates.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_whole_dag_offline_with_a_tiny_model(project, corpus, env, tiny_model_dir, tmp_path_factory):
    """scrape -> ... -> eval with the fake StackExchange API and a tiny model; asserts the dataset's invariants."""
    from tests.fakes.stackexchange_server import FakeStackExchange

    c = corpus
    set_params(project, {
        "scrape": {"source": "mirror", "mirror_dir": f"{c}/repos", "landscape_url": f"{c}/landscape/landscape.yml"},
        "train": {"base_model": str(tiny_model_dir), "max_steps": 10, "learning_rate": 0.05, "max_train_examples": 64,
                  "max_eval_examples": 8, "batch_size": 2, "max_length": 128, "save_steps": 2, "logging_steps": 1},
        "eval": {"max_examples": 6, "max_new_tokens": 12, "batch_size": 6, "bootstrap_samples": 50},
    })
    run(["dvc", "repro", "qa_gen"], project, env)
    pairs = list(read_jsonl(project / "data/qa_gen/qa.jsonl"))
    assert len(pairs) > 1000
    planted = next(p for p in pairs if len(p["answer"].split()) > 30)
    planted_set = tmp_path_factory.mktemp("evalsets") / "planted.jsonl"
    planted_set.write_text(json.dumps({"question": planted["question"], "answer": planted["answer"]}) + "\n")
    params = yaml.safe_load((project / "params.yaml").read_text())
    sets = [*params["eval"]["sets"], {"name": "planted", "path": str(planted_set), "format": "qa"}]

    with FakeStackExchange(c / "stackexchange", max_pages=2) as api:
        set_params(project, {"stackoverflow": {"source": "api", "api_url": api.url, "max_questions_per_tag": 200},
                             "eval": {"sets": sets}})
        out = run(["dvc", "repro"], project, env)
    assert {"stackoverflow", "merge", "base_model", "train", "eval"} <= ran_stages(out)

    # The dataset: invariants on every record, no document in two splits, the planted question gone.
    splits = {name: list(read_jsonl(project / f"data/merge/{name}.jsonl")) for name in ("train", "validation", "test")}
    records = [r for rows in splits.values() for r in rows]
    assert len(records) > 1000
    assert {r["source"] for r in records} == {"docs", "stackoverflow"}
    for r in records:
        assert r["url"] and r["license"] and r["project"] and r["qa_id"]
        assert [m["role"] for m in r["messages"]][-2:] == ["user", "assistant"]
        assert all(m["content"].strip() for m in r["messages"])
    assert len({r["qa_id"] for r in records}) == len(records)
    pair_keys = [(r["messages"][-2]["content"], r["messages"][-1]["content"]) for r in records]
    assert len(set(pair_keys)) == len(pair_keys)
    docs_by_split = {name: {r["doc_id"] for r in rows} for name, rows in splits.items()}
    assert not docs_by_split["train"] & docs_by_split["test"]
    assert not docs_by_split["train"] & docs_by_split["validation"]
    assert not docs_by_split["validation"] & docs_by_split["test"]
    assert planted["question"] not in {q for q, _ in pair_keys}
    merge_metrics = json.loads((project / "metrics/merge.json").read_text())
    assert merge_metrics["dropped"]["contaminated"]["planted"] >= 1
    assert (project / "data/merge/README.md").read_text().count("CC BY-SA 4.0") >= 1

    # The model: the adapter loads, training losses are finite, tuned answers differ from the base's.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(project / "models/base")
    tuned = PeftModel.from_pretrained(base, project / "models/adapter")
    assert any("lora" in name for name, _ in tuned.named_parameters())
    train_metrics = json.loads((project / "metrics/train.json").read_text())
    assert math.isfinite(train_metrics["train_loss"])

    predictions = list(read_jsonl(project / "data/eval/predictions.jsonl"))
    assert predictions and all(p["ppl_base"] != p["ppl_tuned"] for p in predictions)
    assert any(p["base"] != p["tuned"] for p in predictions), [(p["base"], p["tuned"]) for p in predictions]
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    report = (project / "metrics/report.md").read_text()
    for name in ("merge-test", "cncf-qa", "cncf-mcq", "planted"):
        assert name in evaluation["sets"], name
        assert name in report, name
    rouge = evaluation["sets"]["merge-test"]["metrics"]["rouge_l"]
    assert all(math.isfinite(rouge[k]) for k in ("base", "tuned"))

    assert ran_stages(run(["dvc", "repro"], project, env)) == set()

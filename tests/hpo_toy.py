"""A toy DVC project for sweep tests: the machinery (storage, clones, heartbeats, pushes, SLURM) is under test,
not training, so the `train` stage is a known function of one param: m.json:loss = (x - 2)^2, after a short sleep."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.pinned_params import REPO_PARAMS, params_file

GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def toy_repo(root: Path, env: dict[str, str], hpo: dict, sleep_s: float = 1.5, with_hpc: Path | None = None) -> Path:
    """git + DVC project at root/repo; `with_hpc` copies that hpc/ folder in (sbatch scripts run from the repo)."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    (repo / "params.yaml").write_text(yaml.safe_dump({"train": {"x": 0.0}, "hpo": {**REPO_PARAMS["hpo"], **hpo}}))
    (repo / "objective.py").write_text(
        "import json, time, yaml\n"
        "x = yaml.safe_load(open('params.yaml'))['train']['x']\n"
        f"time.sleep({sleep_s})\n"
        "json.dump({'loss': (x - 2) ** 2}, open('m.json', 'w'))\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: python objective.py\n    deps: [objective.py]\n    params: [train.x]\n"
        "    metrics:\n      - m.json:\n          cache: false\n")
    (repo / ".gitignore").write_text(".cache/\nslurm-*.out\n")
    if with_hpc is not None:
        shutil.copytree(with_hpc, repo / "hpc")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    return repo


TINY_TRAIN = {"base_model": "inputs/base", "quantization": "none", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
              "target_modules": "all-linear", "max_length": 128, "packing": True, "packing_layout": "rows",
              "learning_rate": 0.002, "lr_scheduler": "cosine", "warmup_ratio": 0.1, "epochs": 1, "max_steps": 4,
              "batch_size": 4, "grad_accum": 1, "max_train_examples": 0, "max_eval_examples": 8,
              "eval_before_train": False, "seed": 42, "save_steps": 2, "logging_steps": 1, "merge": False,
              "gradient_checkpointing": False}


def tiny_train_repo(root: Path, env: dict[str, str], hpo: dict, tiny_model_dir: Path,
                    with_hpc: Path | None = None) -> Path:
    """A project whose `train` stage is the real stages.train (LoRA on the tiny model, a few chat records)."""
    import json
    import random

    repo = root / "repo"
    (repo / "inputs").mkdir(parents=True)
    shutil.copytree(tiny_model_dir, repo / "inputs" / "base")
    rng = random.Random(0)
    words = ["Prometheus", "scrapes", "metrics", "from", "instrumented", "jobs", "and", "stores", "them", "as", "time", "series"]
    for split, n in (("train", 32), ("validation", 8)):
        rows = [{"messages": [{"role": "user", "content": f"Question {split} {i}: what does Prometheus do?"},
                              {"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(12))}],
                 "qa_id": f"{split}{i}", "project": "Prometheus", "source": "docs"} for i in range(n)]
        (repo / "inputs" / "merge").mkdir(parents=True, exist_ok=True)
        (repo / "inputs" / "merge" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (repo / "params.yaml").write_text(yaml.safe_dump({**params_file(train=dict(TINY_TRAIN, context="none", autocast="none")),
                                                                   "hpo": {**REPO_PARAMS["hpo"], **hpo}}))
    (repo / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: python -m stages.train --data-dir inputs/merge --base-dir inputs/base\n"
        "    deps: [inputs]\n    params: [train]\n    outs: [models/adapter]\n"
        "    metrics:\n      - metrics/train.json:\n          cache: false\n")
    (repo / ".gitignore").write_text(".cache/\nslurm-*.out\n/models/\n/metrics/train_live/\n")
    if with_hpc is not None:
        shutil.copytree(with_hpc, repo / "hpc")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    return repo

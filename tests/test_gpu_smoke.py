"""scripts/gpu_smoke.sh --dry-run: the GPU smoke path (base model, LLM Q&A from 50 chunks through grounding, LoRA
train steps, index, eval of every arm, metrics JSON) run end to end on CPU with a tiny model, as CI runs it."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_dry_run_writes_every_figure(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu_smoke.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "scripts/gpu_smoke.sh", "--dry-run", "--work-dir", str(tmp_path / "work"),
                             "--out", str(out)], cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert report["model"]["dtype"] == "float32" and report["model"]["n_parameters"] > 0
    generation = report["qa_generation"]
    assert generation["chunks"] == 50 and generation["new_tokens"] > 0 and generation["tokens_per_second"] > 0
    # a random tiny model writes no JSON: every chunk's output is counted as unparseable, none passes as a pair
    assert generation["unparseable"] + generation["candidates"] >= 1 and generation["grounded_pairs"] == 0
    train = report["train"]
    assert train["steps"] == 2 and train["tokens_per_second"] > 0 and train["mfu"] is None  # no GPU: no MFU
    assert math.isfinite(train["eval_loss"]) and math.isfinite(train["eval_loss_before"])
    assert report["eval"]["n"] == 6
    arms = report["eval"]["arms"]
    assert {"base_closed", "tuned_closed", "base_rag", "tuned_rag"} <= set(arms)
    assert all(math.isfinite(row["rouge_l"]) for row in arms.values())
    assert math.isfinite(arms["base_closed"]["perplexity"]) and math.isfinite(arms["tuned_closed"]["perplexity"])
    assert arms["base_closed"]["perplexity"] != arms["tuned_closed"]["perplexity"]  # two models, not one twice
    assert set(report["seconds"]) == {"base_model", "qa_generation", "train", "index", "eval", "total"}
    assert "ROUGE-L base_closed" in result.stdout

"""Typed params of the model stages (index, inference, train, eval, hpo, export, publish, competitors): a bad value
is refused with one line naming the param, and the pinned params.yaml and the CI profile validate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.common import schema
from stages.common.params import ParamsError
from tests.pinned_params import REPO_PARAMS, broken, deep_merge

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = {"index": schema.IndexParams, "inference": schema.InferenceParams, "train": schema.TrainParams,
          "eval": schema.EvalParams, "hpo": schema.HpoParams, "export": schema.ExportParams,
          "publish": schema.PublishParams, "competitors": schema.CompetitorsParams}

# (section, dotted key, bad value or DELETE/RENAME marker, text the error line must contain)
CASES = [
    ("index", "batch_size", 0, "index.batch_size: 0 — must be an integer ≥ 1"),
    ("index", "dense_backend", "faiss", "index.dense_backend: 'faiss' — must be 'exact' or 'usearch'"),
    ("index", "rrf_k", ("RENAME", "rrfk"), "index.rrfk: unknown param — did you mean rrf_k?"),
    ("inference", "k", -1, "inference.k: -1 — must be an integer ≥ 0"),
    ("inference", "retrieval_mode", "sparse", "inference.retrieval_mode: 'sparse' — must be 'bm25', 'dense' or"),
    ("inference", "autocast", "fp16", "inference.autocast: 'fp16' — must be 'none' or 'bf16'"),
    ("train", "quantization", "2bit", "train.quantization: '2bit' — must be 'none', '4bit' or '8bit'"),
    ("train", "base_dtype", "fp8", "train.base_dtype: 'fp8' — must be"),
    ("train", "context", "retrieval", "train.context: 'retrieval' — must be 'none' or 'rag'"),
    ("train", "raft.no_gold_target", "skip", "train.raft.no_gold_target: 'skip' — must be 'answer' or 'abstain'"),
    ("train", "raft.p_gold", 1.5, "train.raft.p_gold: 1.5 — must be a number ≤ 1.0"),
    ("train", "lora_r", "sixteen", "train.lora_r: 'sixteen' — must be an integer"),
    ("train", "max_steps", 0, "train.max_steps: 0 — must be > 0"),
    ("train", "autocast", "bf32", "train.autocast: 'bf32' — must be 'none' or 'bf16'"),
    ("train", "launch.num_processes", 0, "train.launch.num_processes: 0 — must be an integer ≥ 1"),
    ("train", "eval_batch_size", 0, "train.eval_batch_size: 0 — must be an integer ≥ 1"),
    ("train", "max_grad_norm", -1.0, "train.max_grad_norm: -1.0 — must be a number ≥ 0"),
    ("train", "weight_decay", "none", "train.weight_decay: 'none' — must be a number"),
    ("train", "learning_rate", ("DELETE",), "train.learning_rate: missing — required"),
    ("eval", "arms", ["tuned_rag", "tuned_open"], "eval.arms.1: 'tuned_open' — must be"),
    ("eval", "quantization", ("ADD", "4bit"), "eval.quantization: unknown param"),  # it is train.quantization
    ("index", "autocast", "fp16", "index.autocast: 'fp16' — must be 'none' or 'bf16'"),
    ("eval", "max_examples", -1, "eval.max_examples: -1 — must be an integer ≥ 0"),
    ("eval", "max_new_tokns", ("ADD", 4), "eval.max_new_tokns: unknown param — did you mean max_new_tokens?"),
    ("hpo", "n_trials", 0, "hpo.n_trials: 0 — must be an integer ≥ 1"),
    ("hpo", "direction", "down", "hpo.direction: 'down' — must be 'minimize' or 'maximize'"),
    ("hpo", "space", {"train.lora_r": {"type": "choice", "choices": [8]}}, "hpo.space.train.lora_r"),
    ("export", "file_types", ["q4_k"], "export.file_types.0: 'q4_k' — must be 'f16' or 'q8_0'"),
    ("export", "min_top1_agreement", {"f16": 2.0, "q8_0": 0.9}, "export.min_top1_agreement.f16: 2.0 — must be"),
    ("export", "runtime", {"temprature": 0.0}, "export.runtime.temprature: unknown param"),
    ("publish", "private", "maybe", "publish.private: 'maybe' — must be true or false"),
    ("publish", "model_repo", "../../etc", "publish.model_repo: '../../etc' —"),
    ("competitors", "batch_size", 100, "competitors.batch_size: 100 — must be an integer ≤ 64"),
    ("competitors", "models", [{"name": "../x", "model": "m"}], "competitors.models.0.name: '../x' —"),
]


@pytest.mark.parametrize("section", sorted(MODELS))
def test_pinned_params_validate(section: str) -> None:
    schema.validate_params(section, MODELS[section], REPO_PARAMS[section])


def test_ci_profile_and_gpu_profiles_validate() -> None:
    """configs/ci/profile.yaml (merged over params.yaml as scripts/ci_report.py does) and configs/profiles/*."""
    ci = yaml.safe_load((REPO_ROOT / "configs/ci/profile.yaml").read_text(encoding="utf-8"))
    profiles = [ci["params"]] + [yaml.safe_load(p.read_text(encoding="utf-8"))
                                 for p in sorted((REPO_ROOT / "configs/profiles").glob("*.yaml"))]
    for profile in profiles:
        merged = deep_merge(REPO_PARAMS, profile)
        for section, model in MODELS.items():
            schema.validate_params(section, model, merged[section])


@pytest.mark.parametrize(("section", "key", "value", "expected"), CASES)
def test_bad_param_is_one_line(section: str, key: str, value: object, expected: str) -> None:
    with pytest.raises(ParamsError) as err:
        schema.validate_params(section, MODELS[section], broken(section, key, value)[section])
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize(("module", "section", "key", "value", "expected"), [
    ("stages.base_model", "train", "base_dtype", "fp8", "train.base_dtype: 'fp8' — must be"),
    ("stages.export", "export", "file_types", ["q4_k"], "export.file_types.0: 'q4_k'"),
    ("stages.index", "index", "batch_size", 0, "index.batch_size: 0 — must be an integer ≥ 1"),
    ("stages.hpo", "hpo", "n_trials", 0, "hpo.n_trials: 0 — must be an integer ≥ 1"),
])
def test_stage_refuses_bad_params_before_touching_outputs(module: str, section: str, key: str, value: object,
                                                          expected: str, tmp_path: Path) -> None:
    """Through the real entry point: exit 1, one line, nothing written."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(broken(section, key, value)), encoding="utf-8")
    before = sorted(tmp_path.rglob("*"))
    done = subprocess.run([sys.executable, "-m", module, "--params", "params.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert sorted(tmp_path.rglob("*")) == before

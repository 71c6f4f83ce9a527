"""publish against a local stand-in of the Hub API: what arrives is exactly the plan, cards match the files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from stages.common.cli import run_cli
from stages.publish import main
from tests.pinned_params import params_file

TOKEN = "hf_test_token_value_not_real"
CARD = """---
license: other
configs:
- config_name: default
  data_files:
  - split: train
    path: train.jsonl
  - split: validation
    path: validation.jsonl
  - split: test
    path: test.jsonl
pretty_name: CNCF landscape Q&A
---

# CNCF landscape Q&A
"""
EVAL = {"sets": {
    "merge-test": {"n": 100, "metrics": {
        "rouge_l": {"base_closed": 0.11, "tuned_closed": 0.19, "base_rag": 0.21, "tuned_rag": 0.24,
                    "retrieval_only": 0.31},
        "perplexity": {"base": 14.8, "tuned": 10.2, "delta": -4.6}},
        "contamination": {"n": 100, "n_contaminated": 0, "share": 0.0, "ngram": 13}},
    "cncf-qa": {"n": 32, "format": "qa", "arms": {  # the four-arm layout stages.eval writes
        "base_closed": {"rouge_l": {"mean": 0.075, "ci95": [0.06, 0.09]}, "perplexity": None},
        "tuned_closed": {"rouge_l": {"mean": 0.081, "ci95": [0.07, 0.09]}},
        "tuned_rag": {"rouge_l": {"mean": 0.07, "ci95": [0.06, 0.08]}, "citation_precision": 0.5},
        "retrieval_only": {"rouge_l": {"mean": 0.12, "ci95": [0.1, 0.14]}}}},
}}


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run's outputs in a temp working dir: data/merge (test split empty), models/*, metrics/*."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data" / "merge"
    data.mkdir(parents=True)
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
              "license": "CC-BY-4.0"}
    (data / "train.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({**record, "license": "MIT"}) + "\n")
    (data / "validation.jsonl").write_text(json.dumps(record) + "\n")
    (data / "test.jsonl").write_text("")  # empty split: must not appear in the card's configs
    (data / "README.md").write_text(CARD)
    files = {
        "models/adapter/adapter_config.json": b'{"r": 16}',
        "models/adapter/adapter_model.safetensors": bytes(range(256)) * 40,
        "models/adapter/training_args.json": b'{"lora_r": 16, "learning_rate": 0.001}',
        "models/merged/config.json": b"{}",
        "models/merged/model.safetensors": b"\x01" * 5000,
        "models/gguf/cncf-llm-q8_0.gguf": b"GGUF" + b"\x02" * 3000,
        "models/gguf/Modelfile": b"FROM ./cncf-llm-q8_0.gguf\n",
        "models/base/base_model.json": json.dumps({"name": "smollm2-135m-instruct"}).encode(),
        "metrics/eval.json": json.dumps(EVAL).encode(),
        "metrics/export.json": json.dumps({"gguf": {"q8_0": {"file": "cncf-llm-q8_0.gguf", "top1_agreement": 1.0,
                                                              "max_abs_diff": 0.01, "positions": 60}}}).encode(),
    }
    for name, data_bytes in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data_bytes)
    params = params_file(train={"base_model": "smollm2-135m-instruct"},
                         publish={"dataset_repo": "me/cncf-qa", "model_repo": "me/cncf-llm", "private": True,
                                  "base_model_id": ""})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


@pytest.fixture()
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    from huggingface_hub import constants

    from tests.fakes.hub_server import start_fake_hub

    fake, server = start_fake_hub(TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", fake.base_url)
    # The stand-in speaks the LFS transfer; hf_xet's protocol is its own (and what the real Hub prefers).
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    yield fake
    server.shutdown()


def test_publish_uploads_exactly_the_plan(project: Path, hub, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                          capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert run_cli(main, []) == 0
    dataset = hub.repos[("dataset", "me/cncf-qa")]
    model = hub.repos[("model", "me/cncf-llm")]
    assert dataset.private and model.private
    assert sorted(dataset.files) == ["README.md", "data/train.jsonl", "data/validation.jsonl"]
    assert dataset.files["data/train.jsonl"] == (project / "data/merge/train.jsonl").read_bytes()
    card = yaml.safe_load(dataset.files["README.md"].decode().split("---")[1])
    uploaded = {f["path"] for c in card["configs"] for f in c["data_files"]}
    assert uploaded == {"data/train.jsonl", "data/validation.jsonl"} and card["pretty_name"] == "CNCF landscape Q&A"

    assert sorted(model.files) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                   "gguf/Modelfile", "gguf/cncf-llm-q8_0.gguf", "merged/config.json",
                                   "merged/model.safetensors", "training_args.json"]
    for name in ("adapter_model.safetensors", "gguf/cncf-llm-q8_0.gguf", "merged/model.safetensors"):
        local = project / {"": "models/adapter/", "gguf": "models/", "merged": "models/"}[name.split("/")[0]
                                                                                      if "/" in name else ""] / name
        assert model.files[name] == local.read_bytes()
        assert model.files[name] in hub.blobs.values()  # went through the LFS upload, not inline
    model_card = model.files["README.md"].decode()
    header = yaml.safe_load(model_card.split("---")[1])
    assert header["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and header["license"] == "apache-2.0"
    assert header["datasets"] == ["me/cncf-qa"]
    row = next(line for line in model_card.splitlines() if line.startswith("| merge-test | rouge_l"))
    assert row == "| merge-test | rouge_l | 100 | 0.11 | 0.19 | 0.21 | 0.24 | 0.31 |"
    assert "| merge-test | perplexity | 100 | 14.8 | 10.2 | – | – | – |" in model_card  # older base/tuned layout
    assert "| cncf-qa | rouge_l | 32 | 0.075 | 0.081 | – | 0.07 | 0.12 |" in model_card  # tuned_rag loses: shown
    assert "| cncf-qa | citation_precision | 32 | – | – | – | 0.5 | – |" in model_card
    assert "| CC-BY-4.0 | 2 |" in model_card and "| MIT | 1 |" in model_card
    assert "learning_rate: 0.001" in model_card and "| merge-test | 100 | 0 | 0 | 13 |" in model_card
    out = capfd.readouterr()
    assert TOKEN not in out.out + out.err


def test_dry_run_uploads_nothing(project: Path, hub, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert run_cli(main, ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dataset me/cncf-qa: 3 files" in out and "model me/cncf-llm: 8 files" in out
    assert "gguf/cncf-llm-q8_0.gguf" in out and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in out
    assert hub.requests == []


def test_errors_are_one_line_without_the_token(project: Path, hub, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                               capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert run_cli(main, []) == 1
    assert "HF_TOKEN is not set" in capfd.readouterr().err and hub.requests == []
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_value_xyz")
    assert run_cli(main, ["--only", "dataset"]) == 1
    err = capfd.readouterr().err
    assert "upload of dataset me/cncf-qa failed" in err and "hf_wrong_token_value_xyz" not in err
    assert len([line for line in err.splitlines() if "ERROR" in line]) == 1
    assert hub.repos == {}


def test_bad_repo_and_missing_outputs_are_refused(project: Path, capfd: pytest.CaptureFixture[str]) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["publish"]["model_repo"] = "../../etc"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert run_cli(main, ["--dry-run"]) == 1 and "publish.model_repo" in capfd.readouterr().err
    params["publish"]["model_repo"] = "me/cncf-llm"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    for p in (project / "models" / "gguf").iterdir():
        p.unlink()
    assert run_cli(main, ["--dry-run", "--only", "model"]) == 1 and "dvc repro export" in capfd.readouterr().err

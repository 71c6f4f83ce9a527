"""export stage on the tiny model: merge a (random, non-zero) LoRA adapter, write GGUF f16/q8_0, load them back
with transformers and compare logits; a GGUF with the wrong q/k layout must fail the check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stages.common.cli import StageError
from stages.common.metrics import StageMetrics
from stages.common.params import ParamsError
from stages.export.__main__ import run_export, validate
from tests.pinned_params import params_file

PROMPTS = ["What is a Kubernetes Pod?", "How does Prometheus scrape metrics?", "What is etcd used for?"]
CFG_PARAMS: dict[str, Any] = {
    "name": "tiny-llm", "file_types": ["f16", "q8_0"], "check_prompts": PROMPTS, "system_prompt": "",
    "min_top1_agreement": {"f16": 0.99, "q8_0": 0.9}, "runtime": {"temperature": 0.0, "repeat_penalty": 1.2},
}


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random A and B (init_lora_weights=False): merging it changes every projection."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(out))
    return out


def cfg() -> dict[str, Any]:
    return validate(CFG_PARAMS, "You are an expert on the CNCF landscape.")


def test_export_round_trip(tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    stats = StageMetrics("export")
    result = run_export(cfg(), tiny_model_dir, adapter_dir, tmp_path / "models", stats)
    for ft in ("f16", "q8_0"):
        check = result["gguf"][ft]
        assert check["passed"], check
        assert check["tokenizer_agreement"] == 1.0 and check["chat_template_kept"]
        assert check["positions"] > 30
    assert result["gguf"]["f16"]["top1_agreement"] == 1.0
    assert result["gguf"]["f16"]["max_abs_diff"] < 1e-2
    assert result["gguf"]["q8_0"]["max_abs_diff"] < 0.1
    gguf_dir = tmp_path / "models" / "gguf"
    assert sorted(p.name for p in gguf_dir.iterdir()) == ["Modelfile", "localai.yaml", "tiny-llm-f16.gguf",
                                                         "tiny-llm-q8_0.gguf"]
    modelfile = (gguf_dir / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./tiny-llm-q8_0.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "{{ .Content }}<|im_end|>" in modelfile
    assert "You are an expert on the CNCF landscape." in modelfile
    import yaml

    localai = yaml.safe_load((gguf_dir / "localai.yaml").read_text())
    assert localai["parameters"]["model"] == "tiny-llm-q8_0.gguf" and "<|im_end|>" in localai["stopwords"]
    # runtime.num_ctx unset: LocalAI gets the model's own context length (and Ollama its own default)
    assert localai["context_size"] == AutoConfig.from_pretrained(str(tiny_model_dir)).max_position_embeddings
    assert "num_ctx" not in modelfile and "num_ctx" not in localai["parameters"]

    # The merged model is the adapter folded in: it differs from the base, in the base's dtype, loads without peft.
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "models" / "merged"))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert merged.dtype == base.dtype
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged.state_dict()[q], base.state_dict()[q])
    assert (tmp_path / "models" / "merged" / "model.safetensors").is_file()

    # Deterministic: the same inputs give byte-identical GGUF files.
    again = run_export(cfg(), tiny_model_dir, adapter_dir, tmp_path / "models2", StageMetrics("export"))
    assert again["gguf"]["f16"]["sha256"] == result["gguf"]["f16"]["sha256"]


def test_wrong_qk_layout_fails_the_check(tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip llama.cpp's q/k permutation: transformers un-permutes on load, the logits diverge, the stage fails
    and keeps the previous outputs."""
    import stages.export.gguf_file as gguf_file

    models = tmp_path / "models"
    (models / "gguf").mkdir(parents=True)
    (models / "gguf" / "previous.txt").write_text("old")
    monkeypatch.setattr(gguf_file, "permute_for_llama_cpp", lambda weights, n_head: weights)
    stats = StageMetrics("export")
    with pytest.raises(StageError, match="round-trip check failed"):
        run_export(cfg(), tiny_model_dir, adapter_dir, models, stats)
    assert (models / "gguf" / "previous.txt").read_text() == "old"
    assert not (models / "merged").exists()
    assert stats.as_dict()["gguf"]["f16"]["top1_agreement"] < 0.99
    assert not any(p.name.startswith(".export.") for p in models.iterdir())


def test_runtime_num_ctx_is_the_localai_context_size() -> None:
    runtime = {**CFG_PARAMS["runtime"], "num_ctx": 512}
    assert validate({**CFG_PARAMS, "runtime": runtime}, "system")["context_size"] == 512
    assert cfg()["context_size"] is None  # unset: run_export uses the model's context length


@pytest.mark.parametrize("change, message", [
    ({"name": "../evil"}, "export.name"),
    ({"file_types": ["q4_k"]}, "export.file_types"),
    ({"check_prompts": []}, "export.check_prompts"),
    ({"min_top1_agreement": {"f16": 2, "q8_0": 0.9}}, "min_top1_agreement.f16"),
    ({"runtime": {"rm -rf": 1}}, "export.runtime"),
])
def test_bad_params_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamsError, match=message) as err:
        validate({**CFG_PARAMS, **change}, "system")
    assert "\n" not in str(err.value)


def test_cli_writes_metrics_on_failure(tmp_path: Path) -> None:
    """No adapter: one error line, exit 1, metrics/export.json still written."""
    from stages.common.cli import run_cli
    from stages.export.__main__ import main

    params = tmp_path / "params.yaml"
    import yaml

    params.write_text(yaml.safe_dump(params_file(export=CFG_PARAMS, merge={"system_prompt": "s"})))
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    metrics = tmp_path / "export.json"
    code = run_cli(main, ["--params", str(params), "--base", str(tmp_path / "base"), "--adapter",
                          str(tmp_path / "none"), "--models-dir", str(tmp_path / "models"), "--metrics", str(metrics)])
    assert code == 1
    assert "wall_seconds" in json.loads(metrics.read_text())

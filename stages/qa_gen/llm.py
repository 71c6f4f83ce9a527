"""LLM Q&A: a causal LM reads each chunk and writes `pairs_per_chunk` grounded pairs as JSON.

Why the care around it: generation is the slow, expensive part of the pipeline (seconds per chunk on CPU, a GPU
budget on a cluster), so it is batched (length-sorted, left-padded), resumable (every finished batch is appended
to a fsynced cache keyed by chunk, model and prompt, so a killed run only does the rest), and model output is
never trusted: JSON is repaired when it can be and dropped and counted when it cannot, and the stage's shared
grounding filter still judges every answer against the chunk.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from stages.common.cli import StageError
from stages.common.metrics import StageMetrics
from stages.common.modeling import length_sorted_batches
from stages.common.progress import progress
from stages.common.schema import QaGenLlmParams
from stages.qa_gen.textutil import display_name, prose_text

log = logging.getLogger(__name__)

PROMPT_VERSION = "v1"
SYSTEM_PROMPT = (
    "You write question-answer pairs for a training dataset about cloud-native software. "
    "Use only facts stated in the passage. Every question must make sense on its own: name the project or "
    "component it is about, and never refer to 'the passage', 'the text', 'this page', 'above' or 'below'. "
    "Each answer is one to four sentences taken from the passage. "
    'Reply with only a JSON array of {n} objects with the keys "question" and "answer".'
)
MAX_PASSAGE_CHARS = 3000


# ---------------------------------------------------------------- prompts


def build_messages(chunk: dict[str, Any], pairs_per_chunk: int) -> list[dict[str, str]]:
    """Chat messages for one chunk; the project and heading path make the questions self-contained."""
    project = display_name(chunk.get("project") or "")
    where = " > ".join(h for h in [chunk.get("title") or "", *(chunk.get("heading_path") or [])] if h)
    passage = (
        prose_text(chunk.get("text") or "")[:MAX_PASSAGE_CHARS]
        or (chunk.get("text") or "")[:MAX_PASSAGE_CHARS]
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT.format(n=pairs_per_chunk)},
        {
            "role": "user",
            "content": f"Project: {project}\nSection: {where}\n\nPassage:\n{passage}\n\n"
            f"Write {pairs_per_chunk} question-answer pairs as a JSON array.",
        },
    ]


def prompt_hash(messages: list[dict[str, str]], max_new_tokens: int) -> str:
    """Changes whenever what the model is asked changes (instructions, chunk text, length budget), so a cached
    output is never reused for a different prompt."""
    text = "\x1f".join(
        [PROMPT_VERSION, json.dumps(messages, sort_keys=True, ensure_ascii=False), str(max_new_tokens)]
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def pairs_json_schema(pairs_per_chunk: int) -> dict[str, Any]:
    """The JSON schema vLLM's structured outputs hold the model to: an array of {question, answer} objects."""
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": max(1, pairs_per_chunk),
        "items": {
            "type": "object",
            "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
            "required": ["question", "answer"],
            "additionalProperties": False,
        },
    }


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The tokenizer's own chat template (a system turn folded into the first user turn where the template has no
    system role); a model without one gets a plain transcript (and a warning, once)."""
    if getattr(tokenizer, "chat_template", None):
        from stages.common.chat_templates import messages_for

        return tokenizer.apply_chat_template(messages_for(tokenizer, messages), tokenize=False,
                                             add_generation_prompt=True)
    if not getattr(render_prompt, "_warned", False):
        log.warning("tokenizer has no chat template: using a plain-text prompt")
        render_prompt._warned = True  # type: ignore[attr-defined]
    return "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages) + "\n\nASSISTANT:"


# ---------------------------------------------------------------- output parsing and repair

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_SMART_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})


def _balanced(text: str, start: int) -> str | None:
    """The bracketed value starting at `start`, skipping brackets inside strings; None if it never closes."""
    stack: list[str] = []
    in_string = False
    escape = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append("]" if ch == "[" else "}")
        elif ch in "]}":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return text[start : i + 1]
    return None


def _close_truncated(text: str, start: int) -> str | None:
    """An array cut off by max_new_tokens: keep its complete objects and close it."""
    if text[start] != "[":
        return None
    end = text.rfind("}")
    if end <= start:
        return None
    return text[start : end + 1] + "]"


def _loads(candidate: str) -> Any:
    candidate = _TRAILING_COMMA.sub(r"\1", candidate.translate(_SMART_QUOTES))
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        pass
    try:  # single quotes, True/None: Python-literal shaped output is common from small models
        return ast.literal_eval(candidate)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _extract_json(raw: str) -> Any:
    fenced = _FENCE.search(raw)
    texts = [fenced.group(1), raw] if fenced else [raw]
    for text in texts:
        starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
        for start in sorted(starts):
            for candidate in (_balanced(text, start), _close_truncated(text, start)):
                if candidate:
                    value = _loads(candidate)
                    if value is not None:
                        return value
    return None


def _field(item: dict[str, Any], *names: str) -> str:
    lowered = {str(k).lower(): v for k, v in item.items()}
    for name in names:
        value = lowered.get(name)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())
    return ""


def parse_pairs(raw: str) -> list[dict[str, str]] | None:
    """Pairs from model output, repairing what can be repaired; None when no JSON value can be recovered.

    Accepts an array of {question, answer} objects, one such object, or an object wrapping the array
    ({"pairs": [...]}). Items without a non-empty question and answer are left out.
    """
    value = _extract_json(raw)
    if value is None:
        return None
    if isinstance(value, dict):
        inner = next(
            (
                v
                for k, v in value.items()
                if isinstance(v, list)
                and str(k).lower() in ("pairs", "qa", "qas", "questions", "items", "data")
            ),
            None,
        )
        value = inner if inner is not None else [value]
    if not isinstance(value, list):
        return None
    pairs = []
    for item in value:
        if not isinstance(item, dict):
            continue
        question, answer = _field(item, "question", "q"), _field(item, "answer", "a")
        if question and answer:
            if not question.endswith("?"):
                question = question.rstrip(".") + "?"
            pairs.append({"question": question, "answer": answer})
    return pairs


# ---------------------------------------------------------------- the resumable cache


class GenerationCache:
    """Raw model outputs in an append-only JSONL file, one line per chunk, fsynced after every batch.

    A run that dies mid-batch loses at most that batch; a half-written last line is skipped on reload.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, str] = {}
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    try:
                        record = json.loads(line)
                        self.entries[record["key"]] = record["output"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        log.warning(
                            "%s:%d: unreadable cache line skipped (an interrupted write?)", path, lineno
                        )

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
                self.entries[row["key"]] = row["output"]
            fh.flush()
            os.fsync(fh.fileno())


def cache_key(chunk_id: str, model: str, phash: str) -> str:
    """chunk + model + prompt hash: what makes a cached output valid for this run."""
    return hashlib.sha256("\x1f".join([chunk_id, model, phash]).encode("utf-8")).hexdigest()[:24]


def cache_file(cache_dir: str | Path, kind: str, model: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.strip("/"))[-80:] or "model"
    return Path(cache_dir) / f"{kind}-{safe}.jsonl"


# ---------------------------------------------------------------- models and backends


def resolve_model(ref: str, param: str) -> str:
    """A local directory as is; an HF id only if it is in the local HF cache or the hub can be reached.

    Offline with an id that is not cached, the user gets one line naming the fix: a local path.
    """
    if not ref:
        raise StageError(f"{param} is empty: set it to a local model directory or a Hugging Face id")
    if Path(ref).expanduser().exists():
        return str(Path(ref).expanduser())
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise StageError(f"{param}: model path {ref} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(ref, local_files_only=True)
    except Exception as cached_exc:  # noqa: BLE001 - any failure here just means "not in the local cache"
        log.debug("%s not in the local HF cache: %s", ref, cached_exc)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        raise StageError(
            f"{param}={ref} is not a local path and the Hugging Face Hub is offline: download it on a "
            f"machine with internet and set {param} to its local directory"
        )
    try:
        from huggingface_hub import list_repo_files, snapshot_download

        return snapshot_download(ref, allow_patterns=download_patterns(list_repo_files(ref)))
    except Exception as exc:  # noqa: BLE001 - network, auth or missing repo: all end in the same advice
        raise StageError(
            f"cannot fetch {param}={ref} from the Hugging Face Hub ({type(exc).__name__}); set {param} "
            f"to a local model directory instead"
        ) from None


def download_patterns(repo_files: Sequence[str]) -> list[str]:
    """What to fetch of a Hub model: config, tokenizer and ONE weight format -- safetensors when the repo has them,
    else the `pytorch_model*.bin` the published lmqg (T5) checkpoints ship; never both, never TF/Flax weights."""
    patterns = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    if any(f.endswith(".safetensors") for f in repo_files):
        return [*patterns, "*.safetensors"]
    if any(re.fullmatch(r"pytorch_model(-\d+-of-\d+)?\.bin", f.rsplit("/", 1)[-1]) for f in repo_files):
        return [*patterns, "pytorch_model*.bin"]
    raise StageError("the model repo has neither *.safetensors nor pytorch_model*.bin weights")


def choose_backend(backend: str) -> str:
    """'auto' -> vllm when it is importable and a GPU is present, else transformers."""
    if backend not in ("auto", "transformers", "vllm"):
        raise StageError(f"qa_gen.llm.backend must be auto, transformers or vllm, not {backend!r}")
    has_vllm = importlib.util.find_spec("vllm") is not None
    if backend == "vllm" and not has_vllm:
        raise StageError(
            "qa_gen.llm.backend=vllm but the vllm package is not installed (pip install vllm on a GPU "
            "machine); use backend: transformers or auto"
        )
    if backend != "auto":
        return backend
    if not has_vllm:
        return "transformers"
    import torch

    return "vllm" if torch.cuda.is_available() else "transformers"


def count_generated(new_tokens: Any, eos_id: int | Sequence[int] | None) -> int:
    """Tokens each sequence really generated: up to and including its first stop token (padding after it is not
    work)."""
    stops = set(eos_id) if isinstance(eos_id, Sequence) else ({eos_id} if eos_id is not None else set())
    total = 0
    for row in new_tokens.tolist():
        total += next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
    return total


class TransformersGenerator:
    """Batched greedy generation with a causal LM: left padding so every prompt ends where generation starts.

    On CPU the prompts of a batch are prefilled one at a time and their KV caches stacked (left-padded) before
    the batched decode: a padded prefill needs an explicit attention mask, which sends CPU attention down a path
    2-3x slower than the unpadded causal kernel, while decoding is where batching pays (one weight pass per step
    for the whole batch). Outputs are identical either way (tests check batched == one-by-one).
    """

    def __init__(self, model_path: str, separate_prefill: bool | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        self.separate_prefill = self.device == "cpu" if separate_prefill is None else separate_prefill
        from stages.common.modeling import stop_token_ids

        self.stop_ids = stop_token_ids(self.model, self.tokenizer)  # Gemma's <end_of_turn> as well as <eos>
        self.new_tokens = 0

    def prepare(self, messages: list[dict[str, str]]) -> str:
        """The prompt text (transformers tokenizes it with add_special_tokens=False: one BOS, the template's)."""
        return render_prompt(self.tokenizer, messages)

    def n_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )
        with self.torch.inference_mode():
            cache = self._prefill_one_by_one(enc) if self.separate_prefill and len(prompts) > 1 else None
            extra = {"cache": cache} if cache is not None else {}
            out = self.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.stop_ids,
                **extra,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        self.new_tokens += count_generated(new, self.stop_ids)
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def _prefill_one_by_one(self, enc: Any) -> Any:
        """A DynamicCache holding every prompt but its last token, left-padded to the batch width; None when
        the model's cache is not plain full attention (sliding windows, hybrids), which then prefill batched."""
        import torch.nn.functional as F
        from transformers.cache_utils import DynamicCache, DynamicLayer

        ids, mask = enc["input_ids"], enc["attention_mask"]
        width = ids.shape[1] - 1
        caches = []
        for row, row_mask in zip(ids, mask, strict=True):
            real = row[row_mask.bool()]
            if len(real) < 2:
                return None
            cache = self.model(input_ids=real[None, :-1], use_cache=True).cache
            if not all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
                return None
            caches.append(cache)
        data = []
        for i in range(len(caches[0].layers)):
            keys = [F.pad(c.layers[i].keys, (0, 0, width - c.layers[i].keys.shape[-2], 0)) for c in caches]
            values = [
                F.pad(c.layers[i].values, (0, 0, width - c.layers[i].values.shape[-2], 0)) for c in caches
            ]
            data.append((self.torch.cat(keys), self.torch.cat(values)))
        return DynamicCache(ddp_cache_data=data)


def vllm_engine_kwargs(model_path: str, cfg: QaGenLlmParams) -> dict[str, Any]:
    """`vllm.LLM(...)` arguments from qa_gen.llm params (their ranges are checked by the schema at load, before
    any download or the minutes-long engine start)."""
    return {"model": model_path, "dtype": "auto", "seed": 0, "max_model_len": cfg.max_model_len,
            "tensor_parallel_size": cfg.tensor_parallel_size, "gpu_memory_utilization": cfg.gpu_memory_utilization}


class VllmGenerator:
    """vLLM on GPUs through its chat API: `LLM.chat` applies the model's own template to the messages once (no
    re-templated text through `generate`, which would add a second BOS on Llama and Gemma), and structured outputs
    hold every answer to the pairs JSON schema. Our batches exist for the resumable cache; vLLM batches inside.

    `llm`, `sampling_cls` and `structured_cls` are vLLM's `LLM`, `SamplingParams` and `StructuredOutputsParams`
    (`load` imports them); tests pass stand-ins with the same interface."""

    def __init__(self, llm: Any, sampling_cls: Any, structured_cls: Any | None, json_schema: dict | None) -> None:
        self.llm, self.sampling_cls, self.structured_cls = llm, sampling_cls, structured_cls
        self.json_schema = json_schema
        self.tokenizer = llm.get_tokenizer()
        self.new_tokens = 0

    @classmethod
    def load(cls, model_path: str, cfg: QaGenLlmParams) -> VllmGenerator:
        kwargs = vllm_engine_kwargs(model_path, cfg)
        from vllm import LLM, SamplingParams

        try:
            from vllm.sampling_params import StructuredOutputsParams
        except ImportError:  # vLLM < 0.10.2: the same schema went through guided decoding
            from vllm.sampling_params import GuidedDecodingParams as StructuredOutputsParams
        schema = pairs_json_schema(cfg.pairs_per_chunk) if cfg.guided_json else None
        return cls(LLM(**kwargs), SamplingParams, StructuredOutputsParams, schema)

    def prepare(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The conversation vLLM templates itself (system folded where the template has no system role)."""
        from stages.common.chat_templates import messages_for

        return messages_for(self.tokenizer, messages)

    def n_tokens(self, conversation: list[dict[str, str]]) -> int:
        return len(self.tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True,
                                                      return_dict=True)["input_ids"])

    def sampling_params(self, max_new_tokens: int) -> Any:
        settings: dict[str, Any] = {"temperature": 0.0, "max_tokens": max_new_tokens, "seed": 0}
        if self.json_schema is not None and self.structured_cls is not None:
            field = "guided_decoding" if self.structured_cls.__name__ == "GuidedDecodingParams" else "structured_outputs"
            settings[field] = self.structured_cls(json=self.json_schema)
        return self.sampling_cls(**settings)

    def generate(self, conversations: list[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
        outputs = self.llm.chat(conversations, sampling_params=self.sampling_params(max_new_tokens),
                                use_tqdm=False, add_generation_prompt=True)
        self.new_tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
        return [o.outputs[0].text for o in outputs]


def load_generator(model_path: str, backend: str, cfg: QaGenLlmParams) -> Any:
    if backend == "vllm":
        return VllmGenerator.load(model_path, cfg)
    return TransformersGenerator(model_path)


def load_llm(cfg: QaGenLlmParams) -> Any:
    backend = choose_backend(cfg.backend)
    path = resolve_model(cfg.model, "qa_gen.llm.model")
    log.info("llm: generating with %s (%s backend)", cfg.model, backend)
    return load_generator(path, backend, cfg)


# ---------------------------------------------------------------- the generator


def run_cached_generation(
    items: list[tuple[str, str]],
    gen: Any,
    cache: GenerationCache,
    batch_size: int,
    max_new_tokens: int,
    metrics: StageMetrics,
    kind: str,
    extra: dict[str, str],
) -> None:
    """Generate outputs for (key, prompt) items missing from the cache, batch by batch, appending each batch."""
    todo = [(key, prompt) for key, prompt in items if key not in cache]
    if not todo:
        return
    lengths = [gen.n_tokens(prompt) for _, prompt in todo]
    batches = length_sorted_batches(lengths, batch_size)
    for batch in progress(batches, desc=f"qa_gen {kind}", unit="batch"):
        outputs = gen.generate([todo[i][1] for i in batch], max_new_tokens)
        cache.append(
            [{**extra, "key": todo[i][0], "output": out} for i, out in zip(batch, outputs, strict=True)]
        )
        metrics.inc(f"{kind}.generated", len(batch))
        metrics.inc(f"{kind}.batches")
    metrics.inc(f"{kind}.new_tokens", gen.new_tokens)


def generate_llm(
    chunks: list[dict[str, Any]],
    cfg: QaGenLlmParams,
    metrics: StageMetrics,
    generator_factory: Callable[[], Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield candidate pairs for `chunks`; model outputs come from the cache when a previous run made them."""
    model_ref, pairs_per_chunk, max_new_tokens = cfg.model, cfg.pairs_per_chunk, cfg.max_new_tokens
    cache = GenerationCache(cache_file(cfg.cache_dir, "llm", model_ref or "none"))
    messages = {c["chunk_id"]: build_messages(c, pairs_per_chunk) for c in chunks}
    keys = {cid: cache_key(cid, model_ref, prompt_hash(m, max_new_tokens)) for cid, m in messages.items()}
    missing = [c for c in chunks if keys[c["chunk_id"]] not in cache]
    if missing:
        gen = generator_factory() if generator_factory else load_llm(cfg)
        prepare = getattr(gen, "prepare", None) or (lambda m: render_prompt(gen.tokenizer, m))
        items = [(keys[c["chunk_id"]], prepare(messages[c["chunk_id"]])) for c in missing]
        run_cached_generation(
            items,
            gen,
            cache,
            cfg.batch_size,
            max_new_tokens,
            metrics,
            "llm",
            {"model": model_ref},
        )
    metrics.inc("llm.cached", len(chunks) - len(missing))
    metrics.inc("llm.chunks", len(chunks))
    for chunk in chunks:
        raw = cache.get(keys[chunk["chunk_id"]])
        if raw is None:
            metrics.inc("errors.llm_missing_output")
            continue
        pairs = parse_pairs(raw)
        if pairs is None:
            metrics.inc("dropped.llm_unparseable")
            continue
        if not pairs:
            metrics.inc("dropped.llm_no_valid_pairs")
        for pair in pairs[:pairs_per_chunk]:
            yield {
                **pair,
                "project": chunk.get("project", ""),
                "doc_id": chunk.get("doc_id", ""),
                "chunk_id": chunk["chunk_id"],
                "url": chunk.get("url", ""),
                "license": chunk.get("license", ""),
                "generator": "llm",
            }

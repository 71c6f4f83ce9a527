"""Typed params: one pydantic model per stage, and one loader that refuses a bad params file with one line.

Why: params come from a user (`dvc exp run -S ...`) and a typo used to pass silently: a misspelt key was
ignored, `maturity: graduated` (a string) selected nothing, a negative chunk size wrote empty outputs over
good ones. Here unknown keys, wrong types and out-of-range values are refused before a stage touches any
output, with one line naming the param, its value and what is allowed:

    unify.chunk_max_words: -5 — must be an integer ≥ 10

The defaults live in params.yaml only: every field is required. A stage adopts this by declaring its model
here (or in its own module) and calling `load_stage_params("section", Model, path)`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from stages.common.params import DEFAULT_PARAMS, ParamsError, load_params

M = TypeVar("M", bound=BaseModel)

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
Autocast = Literal["none", "bf16"]


class StageParams(BaseModel):
    """Base of every stage's params: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _require(condition: bool, kind: str, message: str) -> None:
    """A cross-field rule; the message names the param (the formatter prints it as it is)."""
    if not condition:
        raise PydanticCustomError(kind, message)


# ------------------------------------------------------------------------------------------ scrape
class GitHubParams(StageParams):
    api_url: NonEmptyStr
    raw_url: NonEmptyStr
    concurrency: Annotated[int, Field(ge=1, le=64)]
    max_retries: Annotated[int, Field(ge=0, le=20)]
    timeout: Annotated[float, Field(gt=0)]
    per_page: Annotated[int, Field(ge=1, le=100)]
    backoff_base: Annotated[float, Field(ge=0)]
    backoff_max: Annotated[float, Field(ge=0)]
    max_rate_limit_wait: Annotated[float, Field(ge=0)]


class WebParams(StageParams):
    enabled: bool
    max_depth: NonNegativeInt
    max_pages: PositiveInt
    download_delay: Annotated[float, Field(ge=0)]
    autothrottle: bool
    http_cache: bool
    timeout: Annotated[float, Field(gt=0)]
    crawl_timeout: Annotated[float, Field(gt=0)]


class ScrapeParams(StageParams):
    source: Literal["github", "mirror"]
    landscape_url: NonEmptyStr
    mirror_dir: str
    cache_dir: NonEmptyStr
    maturity: list[Literal["graduated", "incubating", "sandbox", "archived"]]
    categories: list[str]
    allow: list[str]
    deny: list[str]
    max_projects: NonNegativeInt
    repo_projects: dict[str, str]
    licenses: dict[str, str]
    discover_docs_repos: bool
    docs_repo_names: list[str]
    extensions: Annotated[list[NonEmptyStr], Field(min_length=1)]
    exclude_dirs: list[str]
    max_file_bytes: NonNegativeInt
    github: GitHubParams
    web: WebParams

    @model_validator(mode="after")
    def _mirror_needs_a_folder(self) -> ScrapeParams:
        _require(self.source != "mirror" or bool(self.mirror_dir.strip()), "mirror_dir",
                 f"scrape.mirror_dir: {self.mirror_dir!r} — must name a folder of <owner>__<repo> trees "
                 "when scrape.source is mirror")
        return self


# ------------------------------------------------------------------------------------------ unify
class UnifyParams(StageParams):
    chunk_max_words: Annotated[int, Field(ge=10)]
    chunk_min_words: NonNegativeInt
    max_file_bytes: PositiveInt
    pdf_max_pages: PositiveInt
    workers: Annotated[int, Field(ge=1, le=64)]
    file_timeout_s: Annotated[float, Field(gt=0)]

    @model_validator(mode="after")
    def _min_below_max(self) -> UnifyParams:
        _require(self.chunk_min_words <= self.chunk_max_words, "chunk_bounds",
                 f"unify.chunk_min_words: {self.chunk_min_words} — must be ≤ unify.chunk_max_words "
                 f"({self.chunk_max_words})")
        return self


# ------------------------------------------------------------------------------------------ langfilter
class LangfilterParams(StageParams):
    languages: Annotated[list[Annotated[str, Field(pattern=r"^[a-z]{2,3}$")]], Field(min_length=1)]
    min_confidence: Fraction
    min_words: NonNegativeInt
    inherit_below: Fraction
    workers: Annotated[int, Field(ge=1, le=64)]
    ground_truth: str


# ------------------------------------------------------------------------------------------ ner
class NerParams(StageParams):
    ambiguous_names: list[str]
    min_cooccurrence: PositiveInt
    max_relations_per_type: NonNegativeInt
    batch_size: PositiveInt


# ------------------------------------------------------------------------------------------ qa_gen
class QaGenLlmParams(StageParams):
    model: str
    backend: Literal["auto", "transformers", "vllm"]
    pairs_per_chunk: PositiveInt
    batch_size: PositiveInt
    max_new_tokens: PositiveInt
    max_chunks: NonNegativeInt
    cache_dir: NonEmptyStr
    guided_json: bool  # vLLM structured outputs to the pairs JSON schema
    max_model_len: Annotated[int, Field(ge=256)]
    tensor_parallel_size: PositiveInt
    gpu_memory_utilization: Annotated[float, Field(ge=0.05, le=0.99)]


class QaGenQagParams(StageParams):
    model: NonEmptyStr
    batch_size: PositiveInt
    max_new_tokens: PositiveInt
    max_chunks: NonNegativeInt
    num_beams: PositiveInt
    pairs_per_chunk: PositiveInt
    cache_dir: NonEmptyStr


class QaGenParams(StageParams):
    generators: Annotated[list[Literal["structural", "entity", "llm", "qag"]], Field(min_length=1)]
    min_grounding: Fraction
    min_answer_words: PositiveInt
    max_answer_words: PositiveInt
    max_pairs_per_chunk: PositiveInt
    max_manifest_words: PositiveInt
    seed: int
    llm: QaGenLlmParams
    qag: QaGenQagParams

    @model_validator(mode="after")
    def _answer_bounds(self) -> QaGenParams:
        _require(self.min_answer_words <= self.max_answer_words, "answer_bounds",
                 f"qa_gen.min_answer_words: {self.min_answer_words} — must be ≤ qa_gen.max_answer_words "
                 f"({self.max_answer_words})")
        _require("llm" not in self.generators or bool(self.llm.model.strip()), "llm_model",
                 "qa_gen.llm.model: '' — must name a model (HF id or local path) when generators include llm")
        return self


# ------------------------------------------------------------------------------------------ stackoverflow
class StackOverflowParams(StageParams):
    source: Literal["api", "dir"]
    api_url: NonEmptyStr
    site: NonEmptyStr
    dir: str
    save_dir: str
    filter: str
    timeout: Annotated[float, Field(gt=0)]
    max_retries: Annotated[int, Field(ge=0, le=20)]
    min_question_score: int
    min_answer_score: int
    max_answers_per_question: NonNegativeInt
    max_questions_per_tag: NonNegativeInt
    page_size: Annotated[int, Field(ge=1, le=100)]
    tags: dict[str, str]

    @model_validator(mode="after")
    def _dir_needs_a_folder(self) -> StackOverflowParams:
        _require(self.source != "dir" or bool(self.dir.strip()), "dir",
                 f"stackoverflow.dir: {self.dir!r} — must name a folder of saved API pages when "
                 "stackoverflow.source is dir")
        return self


# ------------------------------------------------------------------------------------------ merge
class MergeParams(StageParams):
    seed: int
    validation_fraction: Annotated[float, Field(ge=0.0, lt=0.5)]
    test_fraction: Annotated[float, Field(ge=0.0, lt=0.5)]
    system_prompt: str
    near_dup_threshold: Annotated[float, Field(gt=0.0, le=1.0)]
    minhash_num_perm: Annotated[int, Field(ge=16, le=1024)]
    decontam_ngram: Annotated[int, Field(ge=3, le=64)]
    decontam_min_words: PositiveInt
    decontaminate_heldout: bool
    source_priority: Annotated[list[Literal["docs", "stackoverflow"]], Field(min_length=1)]


# ------------------------------------------------------------------------------------------ index
class IndexParams(StageParams):
    embedding_model: NonEmptyStr
    max_seq_length: Annotated[int, Field(ge=16, le=8192)]
    batch_size: Annotated[int, Field(ge=1, le=4096)]
    autocast: Autocast
    cache_dir: NonEmptyStr
    dense_backend: Literal["exact", "usearch"]
    rrf_k: Annotated[int, Field(ge=1, le=10000)]
    bm25_weight: Annotated[float, Field(ge=0, le=100)]
    dense_weight: Annotated[float, Field(ge=0, le=100)]
    candidates: Annotated[int, Field(ge=1, le=10000)]
    project_filter: Literal["none", "boost", "filter"]
    eval_k: Annotated[list[PositiveInt], Field(min_length=1)]
    latency_queries: Annotated[int, Field(ge=0, le=100000)]


# ------------------------------------------------------------------------------------------ inference
Quantization = Literal["none", "4bit", "8bit"]


class InferenceParams(StageParams):
    k: Annotated[int, Field(ge=0, le=50)]
    excerpt_words: PositiveInt
    max_prompt_tokens: Annotated[int, Field(ge=64)]
    max_new_tokens: PositiveInt
    repetition_penalty: Annotated[float, Field(gt=0)]
    retrieval_mode: Literal["bm25", "dense", "hybrid"]
    autocast: Autocast


# ------------------------------------------------------------------------------------------ train (+ base_model)
class RaftParams(StageParams):
    p_gold: Fraction
    closed_book_fraction: Fraction
    no_gold_target: Literal["answer", "abstain"]


class LaunchParams(StageParams):
    num_processes: Annotated[int, Field(ge=1, le=1024)]
    config: str
    main_process_port: Annotated[int, Field(ge=0, le=65535)]


class TrainParams(StageParams):
    base_model: NonEmptyStr
    base_dtype: Literal["auto", "float32", "bfloat16", "float16"]
    quantization: Quantization
    lora_r: PositiveInt
    lora_alpha: PositiveInt
    lora_dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    target_modules: NonEmptyStr | Annotated[list[NonEmptyStr], Field(min_length=1)]
    context: Literal["none", "rag"]
    raft: RaftParams
    max_length: Annotated[int, Field(ge=16)]
    packing: bool
    packing_layout: Literal["rows", "flat"]
    learning_rate: Annotated[float, Field(gt=0)]
    lr_scheduler: NonEmptyStr
    warmup_ratio: Annotated[float, Field(ge=0)]
    epochs: Annotated[int | float, Field(gt=0)]  # an int stays an int (the run fingerprint hashes it)
    max_steps: Annotated[int, Field(ge=-1)]
    batch_size: PositiveInt
    eval_batch_size: PositiveInt
    grad_accum: PositiveInt
    weight_decay: Annotated[float, Field(ge=0)]
    max_grad_norm: Annotated[float, Field(ge=0)]  # 0 = no gradient clipping (transformers)
    max_train_examples: NonNegativeInt
    max_eval_examples: NonNegativeInt
    eval_before_train: bool
    seed: int
    save_steps: PositiveInt
    logging_steps: PositiveInt
    merge: bool
    gradient_checkpointing: bool
    autocast: Autocast
    launch: LaunchParams

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainParams:
        _require(self.max_steps != 0, "max_steps",
                 "train.max_steps: 0 — must be > 0 (a cap on optimizer steps) or -1 (train.epochs decides)")
        return self


# ------------------------------------------------------------------------------------------ eval
EvalArm = Literal["base_closed", "tuned_closed", "base_rag", "tuned_rag"]


class EvalSetSpec(StageParams):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    path: NonEmptyStr
    format: Literal["qa", "mcq"]


class EvalParams(StageParams):
    sets: list[EvalSetSpec]
    arms: Annotated[list[EvalArm], Field(min_length=1)]
    max_examples: NonNegativeInt
    max_new_tokens: PositiveInt
    batch_size: PositiveInt
    repetition_penalty: Annotated[float, Field(gt=0)]
    bootstrap_samples: PositiveInt
    seed: int
    max_length: Annotated[int, Field(ge=16)]
    system_prompt: str
    threads: NonNegativeInt

    @model_validator(mode="after")
    def _set_names(self) -> EvalParams:
        names = [s.name for s in self.sets]
        _require("merge-test" not in names and len(set(names)) == len(names), "set_names",
                 f"eval.sets: {names!r} — names must be unique and not merge-test (the merge test split)")
        return self


# ------------------------------------------------------------------------------------------ hpo
class HpoFloat(StageParams):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False  # a distribution's shape, not a pipeline default: omitted means uniform


class HpoInt(StageParams):
    type: Literal["int"]
    low: int
    high: int
    step: PositiveInt = 1
    log: bool = False


class HpoCategorical(StageParams):
    type: Literal["categorical"]
    choices: Annotated[list[Any], Field(min_length=1)]


HpoSpace = Annotated[HpoFloat | HpoInt | HpoCategorical, Field(discriminator="type")]


class HpoParams(StageParams):
    n_trials: PositiveInt
    n_startup_trials: NonNegativeInt
    target: NonEmptyStr
    metric: Annotated[str, Field(pattern=r"^[^:]+:.+$")]
    direction: Literal["minimize", "maximize"]
    seed: int
    storage: Annotated[str, Field(pattern=r"^(|sqlite:.*|journal:.*|postgresql.*)$")]
    study_name: NonEmptyStr
    workdir: NonEmptyStr
    heartbeat_interval: PositiveInt
    grace_period: PositiveInt
    max_retry: NonNegativeInt
    prune_on: str
    prune_warmup_steps: NonNegativeInt
    poll_seconds: Annotated[float, Field(gt=0)]
    max_wait_seconds: Annotated[float, Field(gt=0)]
    max_failed_trials: NonNegativeInt
    space: Annotated[dict[NonEmptyStr, HpoSpace], Field(min_length=1)]


# ------------------------------------------------------------------------------------------ export
ExportFileType = Literal["f16", "q8_0"]  # stages/export/gguf_file.py FILE_TYPES


class ExportRuntime(StageParams):
    temperature: Annotated[float, Field(ge=0)] | None = None  # an option left out is the runtime's own default
    top_p: Fraction | None = None
    repeat_penalty: Annotated[float, Field(gt=0)] | None = None
    num_ctx: PositiveInt | None = None


class ExportParams(StageParams):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    file_types: Annotated[list[ExportFileType], Field(min_length=1)]
    system_prompt: str
    check_prompts: Annotated[list[Annotated[str, Field(pattern=r"\S")]], Field(min_length=1)]
    min_top1_agreement: dict[ExportFileType, Fraction]
    runtime: ExportRuntime

    @model_validator(mode="after")
    def _threshold_per_type(self) -> ExportParams:
        missing = [ft for ft in self.file_types if ft not in self.min_top1_agreement]
        _require(not missing, "thresholds",
                 f"export.min_top1_agreement: {dict(self.min_top1_agreement)!r} — needs a number in [0, 1] for "
                 f"{', '.join(missing)}")
        return self


# ------------------------------------------------------------------------------------------ publish, competitors
class PublishParams(StageParams):
    dataset_repo: Annotated[str, Field(pattern=r"^$|^[\w.-]+/[\w.-]+$")]
    model_repo: Annotated[str, Field(pattern=r"^$|^[\w.-]+/[\w.-]+$")]
    private: bool
    base_model_id: str


class CompetitorModel(StageParams):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    model: NonEmptyStr


class CompetitorsParams(StageParams):
    models: list[CompetitorModel]
    batch_size: Annotated[int, Field(ge=1, le=64)]


# ------------------------------------------------------------------------------------------ loader
def load_stage_params(section: str, model: type[M], path: str | Path = DEFAULT_PARAMS) -> M:
    """The section of the params file as a validated `model`; ParamsError (one line) when it is not valid."""
    raw = load_params(section, path)
    return validate_params(section, model, raw)


def validate_params(section: str, model: type[M], raw: Any) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(format_validation_error(section, model, exc)) from None


def format_validation_error(section: str, model: type[BaseModel], exc: ValidationError) -> str:
    """`section.key: value — what is allowed` for the first error, plus how many more there are."""
    errors = exc.errors(include_url=False)
    # A misspelt key also makes the real key "missing": the unknown key is the cause, so it is named first.
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    loc = ".".join(str(part) for part in first["loc"])
    if not loc:  # a cross-field rule: its message names the param already
        return f"{first['msg']}{more}"
    name = f"{section}.{loc}"
    value = first.get("input")
    kind, ctx = first["type"], first.get("ctx") or {}
    if kind == "missing":
        return f"{name}: missing — required (every param has its default in params.yaml){more}"
    if kind == "extra_forbidden":
        fields = _fields_at(model, first["loc"][:-1])
        close = difflib.get_close_matches(str(first["loc"][-1]), fields, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"{name}: unknown param — {hint}allowed here: {', '.join(fields)}{more}"
    noun = _noun(model, first["loc"])
    bounds = {"greater_than_equal": ("≥", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("≤", "le"),
              "less_than": ("<", "lt")}
    if kind in bounds:
        symbol, key = bounds[kind]
        rule = f"must be {noun} {symbol} {ctx.get(key)}"
    elif kind.endswith(("_parsing", "_type")) or kind in ("int_from_float",):
        rule = f"must be {noun}"
    else:
        rule = str(first["msg"]).replace("Input should be", "must be").replace("Value error, ", "")
    return f"{name}: {value!r} — {rule}{more}"


def _field_annotation(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    current: Any = model
    annotation: Any = None
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            annotation = current.model_fields[part].annotation
            current = annotation
        else:
            break
    return annotation


def _noun(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    annotation = _field_annotation(model, loc)
    origin = getattr(annotation, "__origin__", None)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if origin is list or annotation is list:
        return "a list (e.g. [a, b])"
    if origin is dict or annotation is dict:
        return "a mapping (key: value)"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping of " + ", ".join(annotation.model_fields)
    return "a valid value"


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    target: Any = model if not loc else _field_annotation(model, loc)
    if isinstance(target, type) and issubclass(target, BaseModel):
        return list(target.model_fields)
    return []

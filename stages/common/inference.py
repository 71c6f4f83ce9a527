"""The inference core: a question (or an OpenAI-style conversation) -> an answer and the sources it cites.

eval, ask, chat, serve and the web app all call this module, so what is evaluated is what users get: the same
retriever, the same prompt (stages.common.prompting), the same decoding and stop tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stages.common.cli import StageError
from stages.common.jsonl import read_json
from stages.common.modeling import generation_config_for, stop_token_ids
from stages.common.progress import progress
from stages.common.prompting import rag_user_content

log = logging.getLogger(__name__)

Conversation = str | Sequence[dict[str, str]]


class StreamCancelled(Exception):
    """Raised inside generate() by the streamer once the reader of a stream is gone."""


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # extra stop strings; the model's own stop tokens always apply
    seed: int | None = None
    repetition_penalty: float = 1.2


@dataclass(frozen=True)
class Source:
    n: int
    chunk_id: str
    url: str
    project: str
    title: str
    license: str
    text: str
    score: float

    def public(self) -> dict[str, Any]:
        """The served shape (DESIGN.md, "The served answer")."""
        return {"n": self.n, "url": self.url, "project": self.project, "title": self.title,
                "license": self.license, "chunk_id": self.chunk_id}


@dataclass(frozen=True)
class Answer:
    text: str
    sources: list[Source] = field(default_factory=list)
    closed_book: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sources"] = [s.public() for s in self.sources]
        return out


@dataclass(frozen=True)
class InferenceSettings:
    """How a question becomes a prompt and an answer: params.yaml `inference:`, plus the system prompt training
    used (`merge.system_prompt`) and how models/base is loaded (`train.quantization`). Every value comes from
    params.yaml (`from_params`); there are no defaults here."""

    system_prompt: str
    k: int
    excerpt_words: int
    max_prompt_tokens: int
    max_new_tokens: int
    repetition_penalty: float
    retrieval_mode: str
    autocast: str
    quantization: str

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> InferenceSettings:
        """`params` is the whole params file: `inference:`, `merge:` and `train:` are validated (ParamsError,
        one line)."""
        from stages.common.schema import InferenceParams, MergeParams, TrainParams, validate_params

        inf = validate_params("inference", InferenceParams, params.get("inference"))
        merge = validate_params("merge", MergeParams, params.get("merge"))
        train = validate_params("train", TrainParams, params.get("train"))
        return cls(system_prompt=merge.system_prompt, k=inf.k, excerpt_words=inf.excerpt_words,
                   max_prompt_tokens=inf.max_prompt_tokens, max_new_tokens=inf.max_new_tokens,
                   repetition_penalty=inf.repetition_penalty, retrieval_mode=inf.retrieval_mode,
                   autocast=inf.autocast, quantization=train.quantization)


def format_sources(sources: Sequence[Source]) -> str:
    """Numbered links for plain clients that ignore the `sources` field."""
    if not sources:
        return ""
    lines = [f"[{s.n}] {s.title or s.url} - {s.url} ({', '.join(x for x in (s.project, s.license) if x)})"
             for s in sources]
    return "\n\nSources:\n" + "\n".join(lines)


def to_sources(hits: Sequence[Any]) -> list[Source]:
    return [Source(n=i, chunk_id=h.chunk_id, url=h.url, project=h.project, title=h.title, license=h.license,
                   text=h.text, score=h.score) for i, h in enumerate(hits, start=1)]


def normalise_conversation(conversation: Conversation) -> list[dict[str, str]]:
    """A question string or OpenAI-style messages -> a list of {role, content} ending on a user turn."""
    if isinstance(conversation, str):
        messages = [{"role": "user", "content": conversation}]
    else:
        messages = [{"role": str(m.get("role")), "content": str(m.get("content") or "")} for m in conversation]
    if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise ValueError("a conversation must end with a non-empty user message")
    return messages


class Assistant:
    """A loaded model (+ adapter) and retriever; answers one question, a batch, or a stream."""

    def __init__(self, model: Any, tokenizer: Any, retriever: Any, settings: InferenceSettings, *,
                 name: str = "cncf-llm", versions: dict[str, str] | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.retriever = retriever
        self.settings = settings
        self.name = name
        self.versions = versions or {}
        self.max_context_tokens = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        self._lock = threading.Lock()  # one generate at a time: torch on 2 cores gains nothing from two

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_params(cls, params_path: str | Path = "params.yaml", *, base_dir: str | Path = "models/base",
                    adapter_dir: str | Path | None = "models/adapter", index_dir: str | Path | None = "data/index",
                    use_adapter: bool = True, device: str | None = None) -> Assistant:
        from stages.common.modeling import load_causal_lm, pick_device, setup_cpu_threads
        from stages.common.params import load_params
        from stages.common.retrieval import Retriever

        params = load_params(None, params_path)
        settings = InferenceSettings.from_params(params)
        device = device or pick_device()
        if device == "cpu":
            setup_cpu_threads()
        base_dir = Path(base_dir)
        adapter = Path(adapter_dir) if adapter_dir and use_adapter else None
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            raise StageError(f"no adapter at {adapter}: run `dvc repro train`, or pass --base-only")
        tokenizer = load_chat_tokenizer(adapter or base_dir)
        quantization = settings.quantization
        model = load_causal_lm(base_dir, quantization, device)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        if quantization == "none":
            model.to(device)
        model.eval()
        retriever = Retriever.load(index_dir) if index_dir and Path(index_dir).is_dir() else None
        if retriever is None:
            log.warning("no retrieval index at %s: answers are closed-book", index_dir)
        versions = {"base": _dir_version(base_dir), "adapter": _dir_version(adapter) if adapter else "none",
                    "index": _dir_version(Path(index_dir)) if retriever else "none",
                    "dataset": _dir_version(Path("data/merge"))}
        return cls(model, tokenizer, retriever, settings, versions=versions)

    # ------------------------------------------------------------------ prompts
    def retrieve(self, question: str, k: int | None = None) -> list[Source]:
        if self.retriever is None:
            return []
        k = self.settings.k if k is None else k
        return to_sources(self.retriever.search(question, k, mode=self.settings.retrieval_mode))

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def build_prompt(self, conversation: Conversation, sources: Sequence[Source] | None) -> str:
        """Chat-template text: system prompt, earlier turns, and the last question (with excerpts when given).

        Over the prompt budget, the oldest turns go first, then the excerpts shrink; the question always stays."""
        messages = normalise_conversation(conversation)
        system = [m for m in messages if m["role"] == "system"][-1:] or (
            [{"role": "system", "content": self.settings.system_prompt}] if self.settings.system_prompt else [])
        turns = [m for m in messages if m["role"] in ("user", "assistant")]
        question = turns[-1]["content"]
        history = turns[:-1]
        words = self.settings.excerpt_words
        budget = min(self.settings.max_prompt_tokens, self.max_context_tokens - 16)
        while True:
            last = rag_user_content(question, sources, words) if sources else question
            text = self.render([*system, *history, {"role": "user", "content": last}])
            if len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) <= budget:
                return text
            if history:
                history = history[2:] if len(history) >= 2 else []
            elif sources and words > 20:
                words = max(20, words * 2 // 3)
            else:
                return text  # generation truncates from the left, keeping the question's end

    # ------------------------------------------------------------------ answering
    def answer(self, conversation: Conversation, *, closed_book: bool = False, k: int | None = None,
               options: GenerationOptions | None = None) -> Answer:
        return self.answer_batch([conversation], closed_book=closed_book, k=k, options=options)[0]

    def answer_batch(self, conversations: Sequence[Conversation], *, closed_book: bool = False, k: int | None = None,
                     options: GenerationOptions | None = None, batch_size: int | None = None,
                     desc: str | None = None) -> list[Answer]:
        """Answers in input order. Retrieval is one batched search; generation is one `generate` per batch
        (all of them at once unless `batch_size` splits them, longest prompts first)."""
        options = options or self.default_options()
        questions = [normalise_conversation(c)[-1]["content"] for c in conversations]
        sources = self.retrieve_batch(questions, k) if not closed_book else [[] for _ in questions]
        prompts = [self.build_prompt(c, s) for c, s in zip(conversations, sources, strict=True)]
        outputs = self.generate(prompts, options, batch_size=batch_size or max(1, len(prompts)), desc=desc)
        return [Answer(text=text, sources=list(src), closed_book=closed_book, prompt_tokens=n_in,
                       completion_tokens=n_out, finish_reason=finish)
                for (text, n_in, n_out, finish), src in zip(outputs, sources, strict=True)]

    def retrieve_batch(self, questions: Sequence[str], k: int | None = None) -> list[list[Source]]:
        if self.retriever is None:
            return [[] for _ in questions]
        k = self.settings.k if k is None else k
        hits = self.retriever.search_batch(list(questions), k, mode=self.settings.retrieval_mode)
        return [to_sources(h) for h in hits]

    def stream(self, conversation: Conversation, *, closed_book: bool = False, k: int | None = None,
               options: GenerationOptions | None = None, cancel: threading.Event | None = None
               ) -> Iterator[str | Answer]:
        """Text deltas as the model writes them, then the final Answer.

        Setting `cancel` (or closing the generator: a client that went away) ends `generate` at the next token
        instead of letting it run to max_new_tokens while it holds the model; StreamCancelled is raised then."""
        from transformers import TextIteratorStreamer

        options = options or self.default_options()
        cancel = cancel or threading.Event()
        messages = normalise_conversation(conversation)
        sources = [] if closed_book else self.retrieve(messages[-1]["content"], k)
        prompt = self.build_prompt(messages, sources)
        encoded = self._encode([prompt])

        class Streamer(TextIteratorStreamer):
            def put(self, value: Any) -> None:
                if cancel.is_set():
                    raise StreamCancelled()
                super().put(value)

        streamer = Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=None)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                with self._lock:
                    result["out"] = self._generate_tensors(encoded, options, streamer=streamer)
            except BaseException as exc:  # surfaced in the caller's thread below
                result["error"] = exc
            finally:
                streamer.end()

        thread = threading.Thread(target=run, name="stream-generate", daemon=True)
        thread.start()
        emitted = ""
        try:
            for delta in streamer:
                cut = _cut_at_stop(emitted + delta, options.stop)
                if cut is not None:
                    if len(cut) > len(emitted):
                        yield cut[len(emitted):]
                    emitted = cut
                    break
                emitted += delta
                if delta:
                    yield delta
        except GeneratorExit:  # the consumer went away: end generate at the next token
            cancel.set()
            thread.join()
            raise
        thread.join()  # a stop string ends generate by itself (GenerationConfig.stop_strings)
        if "error" in result:
            raise result["error"]
        text, n_in, n_out, finish = self._decode(encoded, result["out"], options)[0]
        yield Answer(text=text, sources=list(sources), closed_book=closed_book, prompt_tokens=n_in,
                     completion_tokens=n_out, finish_reason=finish)

    def default_options(self) -> GenerationOptions:
        return GenerationOptions(max_new_tokens=self.settings.max_new_tokens,
                                 repetition_penalty=self.settings.repetition_penalty)

    def compute(self) -> Any:
        """The model's compute context (`inference.autocast`): enter it in the thread that runs the model."""
        from stages.common.modeling import compute_context

        return compute_context(next(self.model.parameters()).device.type, self.settings.autocast)

    @contextlib.contextmanager
    def base_only(self) -> Iterator[None]:
        """Answer with the adapter switched off (the base model), on the same weights and prompts."""
        disable = getattr(self.model, "disable_adapter", None)
        if disable is None:
            yield
            return
        with disable():
            yield

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[str], options: GenerationOptions, *, batch_size: int,
                 desc: str | None = None) -> list[tuple[str, int, int, str]]:
        """(text, prompt tokens, completion tokens, finish reason) per prompt, in input order."""
        if not prompts:
            return []
        encoded = [self._encode([p])["input_ids"][0] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        results: list[tuple[str, int, int, str]] = [("", 0, 0, "stop")] * len(prompts)
        iterator = progress(batches, desc=desc, unit="batch") if desc else batches
        for batch in iterator:
            padded = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, padding=True,
                                        return_tensors="pt")
            with self._lock:
                out = self._generate_tensors(padded, options)
            for i, row in zip(batch, self._decode(padded, out, options), strict=True):
                results[i] = row
        return results

    def _encode(self, prompts: Sequence[str]) -> Any:
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"  # keep the question's end and the assistant header
        budget = min(self.settings.max_prompt_tokens, self.max_context_tokens - 16)
        return self.tokenizer(list(prompts), add_special_tokens=False, truncation=True, max_length=budget,
                              padding=True, return_tensors="pt")

    def _generate_tensors(self, encoded: Any, options: GenerationOptions, streamer: Any = None) -> Any:
        import torch

        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
        room = self.max_context_tokens - inputs["input_ids"].shape[1]
        sample = options.temperature > 0
        config = generation_config_for(
            self.model, self.tokenizer, max_new_tokens=max(1, min(options.max_new_tokens, room)), do_sample=sample,
            temperature=options.temperature if sample else None, top_p=options.top_p if sample else None,
            top_k=None, stop_strings=list(options.stop) or None)
        if options.seed is not None:
            torch.manual_seed(options.seed)
        with torch.inference_mode(), self.compute():
            return self.model.generate(**inputs, generation_config=config, streamer=streamer,
                                       logits_processor=answer_repetition_penalty(options.repetition_penalty,
                                                                                  inputs["input_ids"].shape[1]),
                                       tokenizer=self.tokenizer if options.stop else None)

    def _decode(self, encoded: Any, out: Any, options: GenerationOptions) -> list[tuple[str, int, int, str]]:
        width = encoded["input_ids"].shape[1]
        stops = set(stop_token_ids(self.model, self.tokenizer))
        rows = []
        for prompt_row, row in zip(encoded["attention_mask"], out[:, width:], strict=True):
            tokens = row.tolist()
            ended = next((i for i, t in enumerate(tokens) if t in stops), None)
            body = tokens[:ended] if ended is not None else [t for t in tokens if t != self.tokenizer.pad_token_id]
            text = self.tokenizer.decode(body, skip_special_tokens=True).strip()
            cut = _cut_at_stop(text, options.stop)
            finish = "stop" if ended is not None or cut is not None else (
                "length" if len(body) >= options.max_new_tokens else "stop")
            rows.append(((cut if cut is not None else text).strip(), int(prompt_row.sum()), len(body), finish))
        return rows


def answer_repetition_penalty(penalty: float, prompt_length: int) -> Any:
    """A repetition penalty over the answer's own tokens only, not the prompt's.

    transformers' `repetition_penalty` counts every token of a decoder-only prompt as "already said", so with
    retrieved excerpts in the prompt it pushes the reader away from the very words it should copy from them.
    Left padding gives every row of a batch the same prompt width, so one length covers the batch."""
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    if penalty == 1.0:
        return LogitsProcessorList()
    return LogitsProcessorList([RepetitionPenaltyLogitsProcessor(float(penalty), prompt_ignore_length=prompt_length)])


def _cut_at_stop(text: str, stops: Sequence[str]) -> str | None:
    """`text` up to the first stop string, or None when none occurs."""
    positions = [text.find(s) for s in stops if s and s in text]
    return text[:min(positions)] if positions else None


def load_chat_tokenizer(source: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if not tokenizer.chat_template:
        raise StageError(f"tokenizer in {source} has no chat template")
    return tokenizer


def _dir_version(path: Path | None) -> str:
    """A short id of a model/data folder: the hash DVC recorded for it, else a hash of its file sizes and names."""
    if path is None or not path.exists():
        return "none"
    info = path / "base_model.json"
    if info.is_file():
        with contextlib.suppress(Exception):
            return str(read_json(info).get("sha256", ""))[:12] or _listing_hash(path)
    return _listing_hash(path)


def _listing_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            digest.update(f"{p.relative_to(path)}:{p.stat().st_size}".encode())
    return digest.hexdigest()[:12]

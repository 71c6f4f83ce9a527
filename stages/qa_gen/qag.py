"""lmqg-style QAG: a T5 model turns a paragraph into "question: ..., answer: ... | question: ..., answer: ...".

Why run it through transformers directly instead of the `lmqg` package: lmqg 0.1.1 breaks on transformers 5 and
pulls ~1 GB of dependencies; its model format is plain T5 with a text prefix, which is all this needs.
lmqg answers are short spans ("the kubelet"); each is widened to the chunk sentence that holds it, which makes
a useful answer and keeps it grounded. lmqg questions rarely name the project, so the project is added when the
question does not name it ("... in Kubernetes?"); without that they would fail the self-contained rule.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

from stages.common.metrics import StageMetrics
from stages.common.schema import QaGenQagParams
from stages.qa_gen.llm import (
    GenerationCache,
    cache_file,
    cache_key,
    count_generated,
    resolve_model,
    run_cached_generation,
)
from stages.qa_gen.textutil import display_name, prose_text, sentences

log = logging.getLogger(__name__)

QAG_PREFIX = "generate question and answer: "
MAX_PARAGRAPH_CHARS = 2000
_PAIR = re.compile(r"^\s*question:\s*(?P<q>.+?)\s*,\s*answer:\s*(?P<a>.+?)\s*$", re.I | re.S)


def qag_input(chunk: dict[str, Any]) -> str:
    """lmqg's input format: the prefix and one paragraph of plain prose (no code, no markup)."""
    paragraph = " ".join(prose_text(chunk.get("text") or "").split())[:MAX_PARAGRAPH_CHARS]
    return QAG_PREFIX + paragraph


def parse_qag_output(text: str) -> list[dict[str, str]]:
    """'question: A?, answer: B | question: C?, answer: D' -> [{question, answer}, ...]; malformed parts skipped."""
    pairs = []
    for part in text.split("|"):
        m = _PAIR.match(part)
        if not m:
            continue
        question, answer = " ".join(m.group("q").split()), " ".join(m.group("a").split())
        if question and answer:
            pairs.append(
                {
                    "question": question if question.endswith("?") else question.rstrip(".") + "?",
                    "answer": answer,
                }
            )
    return pairs


def widen_answer(span: str, chunk_text: str) -> str:
    """The first chunk sentence containing the answer span (the span itself if no sentence holds it)."""
    needle = span.lower().strip(" .")
    for paragraph in prose_text(chunk_text).split("\n\n"):
        for sent in sentences(paragraph):
            if needle and needle in sent.lower():
                return sent
    return span


def name_project(question: str, project: str) -> str:
    if not project or project.lower() in question.lower():
        return question
    return f"{question.rstrip('?').rstrip()} in {project}?"


class T5Generator:
    """Batched seq2seq generation (no left padding needed: the encoder reads the input, the decoder starts fresh)."""

    def __init__(self, model_path: str, num_beams: int = 1) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model_path).to(self.device).eval()
        self.num_beams = num_beams
        self.new_tokens = 0

    def n_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt)["input_ids"])

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=512).to(
            self.device
        )
        with self.torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=max_new_tokens, num_beams=self.num_beams, do_sample=False
            )
        self.new_tokens += count_generated(
            out[:, 1:], self.tokenizer.eos_token_id
        )  # [:, 1:]: the start token
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)


def _input_hash(text: str, max_new_tokens: int, num_beams: int) -> str:
    return hashlib.sha256(f"{text}\x1f{max_new_tokens}\x1f{num_beams}".encode()).hexdigest()[:16]


def generate_qag(
    chunks: list[dict[str, Any]],
    cfg: QaGenQagParams,
    metrics: StageMetrics,
    generator_factory: Callable[[], Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield candidate pairs from a T5 QAG model; outputs are cached like the llm generator's (resumable)."""
    model_ref, max_new_tokens, num_beams = cfg.model, cfg.max_new_tokens, cfg.num_beams
    cache = GenerationCache(cache_file(cfg.cache_dir, "qag", model_ref))
    inputs = {c["chunk_id"]: qag_input(c) for c in chunks}
    keys = {
        cid: cache_key(cid, model_ref, _input_hash(text, max_new_tokens, num_beams))
        for cid, text in inputs.items()
    }
    missing = [c for c in chunks if keys[c["chunk_id"]] not in cache]
    if missing:
        if generator_factory is not None:
            gen = generator_factory()
        else:
            gen = T5Generator(resolve_model(model_ref, "qa_gen.qag.model"), num_beams)
        items = [(keys[c["chunk_id"]], inputs[c["chunk_id"]]) for c in missing]
        run_cached_generation(
            items,
            gen,
            cache,
            cfg.batch_size,
            max_new_tokens,
            metrics,
            "qag",
            {"model": model_ref},
        )
    metrics.inc("qag.cached", len(chunks) - len(missing))
    metrics.inc("qag.chunks", len(chunks))
    for chunk in chunks:
        raw = cache.get(keys[chunk["chunk_id"]]) or ""
        pairs = parse_qag_output(raw)
        if not pairs:
            metrics.inc("dropped.qag_unparseable")
            continue
        project = display_name(chunk.get("project") or "")
        for pair in pairs[: cfg.pairs_per_chunk]:
            yield {
                "question": name_project(pair["question"], project),
                "answer": widen_answer(pair["answer"], chunk.get("text") or ""),
                "project": chunk.get("project", ""),
                "doc_id": chunk.get("doc_id", ""),
                "chunk_id": chunk["chunk_id"],
                "url": chunk.get("url", ""),
                "license": chunk.get("license", ""),
                "generator": "qag",
            }

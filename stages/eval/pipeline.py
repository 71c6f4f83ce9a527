"""The whole eval run: load sets, score base and tuned on each, write eval.json, predictions, report and plots.

Kept apart from `__main__` so tests call `run_eval` with explicit paths, the validated `eval:` section and the
inference settings.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.common.cli import StageError
from stages.common.jsonl import iter_jsonl_lenient, stable_id, write_json, write_jsonl
from stages.common.metrics import StageMetrics
from stages.common.retrieval import docs_by_source_key
from stages.common.schema import EvalParams
from stages.common.text import words
from stages.eval import contamination as contam
from stages.eval import metrics as tm

if TYPE_CHECKING:
    from stages.common.inference import InferenceSettings

log = logging.getLogger(__name__)

MERGE_TEST = "merge-test"  # eval.sets may not use this name (the schema refuses it)


@dataclass(frozen=True)
class QaItem:
    qa_id: str
    project: str
    question: str
    reference: str
    system: str | None
    url: str = ""
    doc_id: str = ""  # merge pairs: the source document's id
    source: str = ""  # hand-written sets: `checked_against`, <owner>__<repo>/<path>

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": "user", "content": self.question}, {"role": "assistant", "content": self.reference}]


@dataclass
class EvalPaths:
    base_dir: Path = Path("models/base")
    adapter_dir: Path = Path("models/adapter")
    index_dir: Path = Path("data/index")
    train: Path = Path("data/merge/train.jsonl")
    test: Path = Path("data/merge/test.jsonl")
    metrics: Path = Path("metrics/eval.json")
    predictions: Path = Path("data/eval/predictions.jsonl")
    report: Path = Path("metrics/report.md")
    plots_dir: Path = Path("metrics/eval_plots")


@dataclass
class EvalSet:
    name: str
    format: str
    path: str
    items: list[Any] = field(default_factory=list)


# ---------------------------------------------------------------- reading sets

def read_rows(path: Path, set_name: str, stats: StageMetrics) -> list[dict[str, Any]]:
    """JSON objects of a JSONL file; a broken line is a warning with path:line and a counter, not a crash."""
    return list(iter_jsonl_lenient(path, lambda kind: stats.inc(f"dropped.{set_name}.{kind}")))


def qa_from_messages(row: dict[str, Any]) -> QaItem:
    """A merge record (system?/user/assistant messages) as a question, its reference and its system prompt."""
    messages = row.get("messages") or []
    by_role = {m.get("role"): m.get("content", "") for m in messages if isinstance(m, dict)}
    if not by_role.get("user") or not by_role.get("assistant") or not row.get("qa_id"):
        raise ValueError("record needs qa_id and user + assistant messages")
    return QaItem(str(row["qa_id"]), str(row.get("project") or "unknown"), by_role["user"], by_role["assistant"],
                  by_role.get("system") or None, str(row.get("url") or ""), doc_id=str(row.get("doc_id") or ""))


def qa_from_row(row: dict[str, Any], set_name: str, system: str | None) -> QaItem:
    """A hand-written or external QA row: question, answer, project (qa_id/id optional, derived if absent)."""
    question, answer = str(row.get("question") or "").strip(), str(row.get("answer") or "").strip()
    if not question or not answer:
        raise ValueError("row needs a question and an answer")
    qa_id = str(row.get("qa_id") or row.get("id") or stable_id(set_name, question))
    return QaItem(qa_id, str(row.get("project") or "unknown"), question, answer, system, str(row.get("url") or ""),
                  source=str(row.get("checked_against") or ""))


def load_items(rows: Iterable[dict[str, Any]], parse: Callable[[dict[str, Any]], Any], path: Path, set_name: str,
               stats: StageMetrics) -> list[Any]:
    """Parsed items; a row the parser rejects (ValueError) is a warning naming the file and a counter."""
    items = []
    for row in rows:
        try:
            items.append(parse(row))
        except ValueError as exc:
            log.warning("%s: %s: %s; skipped", path, row.get("qa_id") or row.get("id") or "?", exc)
            stats.inc(f"dropped.{set_name}.invalid")
    return items


def select_subset(items: Sequence[Any], max_examples: int, seed: int, key: Callable[[Any], str]) -> list[Any]:
    """Every item, or a seeded sample of `max_examples`; sorted by id either way, so runs compare."""
    ordered = sorted(items, key=key)
    if max_examples <= 0 or len(ordered) <= max_examples:
        return ordered
    picked = sorted(random.Random(seed).sample(range(len(ordered)), max_examples))
    return [ordered[i] for i in picked]


def train_system_prompt(train_path: Path) -> str | None:
    """The system prompt the model was trained with (most common in train): external sets get it too."""
    from stages.common.jsonl import read_jsonl

    if not train_path.is_file():
        return None
    counts: Counter[str] = Counter()
    for row in read_jsonl(train_path):
        for m in row.get("messages", []):
            if m.get("role") == "system" and m.get("content"):
                counts[m["content"]] += 1
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0] if counts else None


def load_sets(paths: EvalPaths, params: EvalParams, system: str | None, stats: StageMetrics) -> list[EvalSet]:
    """merge-test first, then every `eval.sets` entry; a missing external file is skipped with a warning."""
    from stages.eval.mcq import parse_item

    seed, cap = params.seed, params.max_examples
    if not paths.test.is_file():
        raise StageError(f"{paths.test} not found (run `dvc repro merge` first)")
    items = load_items(read_rows(paths.test, MERGE_TEST, stats), qa_from_messages, paths.test, MERGE_TEST, stats)
    sets = [EvalSet(MERGE_TEST, "qa", str(paths.test), select_subset(items, cap, seed, lambda it: it.qa_id))]
    for spec in params.sets:  # names (unique, not merge-test), paths and formats checked by the schema
        name, fmt, path = spec.name, spec.format, Path(spec.path)
        if not path.is_file():
            log.warning("eval set %s: %s not found; skipped", name, path)
            stats.inc(f"errors.missing_set.{name}")
            continue
        rows = read_rows(path, name, stats)
        if fmt == "qa":
            items = load_items(rows, lambda r, n=name: qa_from_row(r, n, system), path, name, stats)
            sets.append(EvalSet(name, fmt, str(path), select_subset(items, cap, seed, lambda it: it.qa_id)))
        else:
            items = load_items(rows, lambda r: parse_item(r, seed), path, name, stats)
            sets.append(EvalSet(name, fmt, str(path), select_subset(items, cap, seed, lambda it: it.item_id)))
    for s in sets:
        stats.inc(f"items.{s.name}", len(s.items))
    return sets


# ---------------------------------------------------------------- arms

ARMS = ("base_closed", "tuned_closed", "base_rag", "tuned_rag")
RETRIEVAL_ONLY = "retrieval_only"
QUESTION_ONLY = "question_only"  # the question itself as the answer: what restating it scores, no model
# Each Δ names its pair: (new, reference). The first is the headline; the last keeps the model honest.
PAIRS = (("tuned_rag", "base_closed"), ("tuned_rag", "tuned_closed"), ("tuned_rag", "base_rag"),
         ("base_rag", "base_closed"), ("tuned_closed", "base_closed"), ("tuned_rag", RETRIEVAL_ONLY),
         ("tuned_rag", QUESTION_ONLY))


def is_rag(arm: str) -> bool:
    return arm.endswith("_rag")


def uses_adapter(arm: str) -> bool:
    return arm.startswith("tuned")


def set_texts(eval_set: EvalSet) -> list[str]:
    """The text of each item that could have leaked into training (question + answer, or + options)."""
    if eval_set.format == "qa":
        return [f"{it.question}\n{it.reference}" for it in eval_set.items]
    return [it.question + "\n" + "\n".join(text for _, text in it.options) for it in eval_set.items]


def conversation(question: str, system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]


def source_docs(item: Any, docs_by_key: dict[str, set[str]]) -> frozenset[str]:
    """The doc ids that answer an item: its merge doc_id, or the indexed doc of its `checked_against` file."""
    if getattr(item, "doc_id", ""):
        return frozenset({item.doc_id})
    return frozenset(docs_by_key.get(getattr(item, "source", ""), ()))


def example_ppl(score: tuple[float, int]) -> float:
    total, n = score
    return math.exp(-total / n) if n else math.nan


def _arm_context(assistant: Any, arm: str) -> Any:
    import contextlib

    return contextlib.nullcontext() if uses_adapter(arm) else assistant.base_only()


def run_qa_arm(assistant: Any, items: Sequence[QaItem], sources: Sequence[Sequence[Any]], arm: str,
               params: EvalParams, options: Any, set_name: str) -> tuple[list[str], list[tuple[float, int]]]:
    """Answers (greedy, through the inference core) and reference log-likelihoods for one arm."""
    from stages.eval.perplexity import continuation_sequence, masked_logprobs

    prompts = [assistant.build_prompt(conversation(it.question, it.system), src if is_rag(arm) else None)
               for it, src in zip(items, sources, strict=True)]
    with _arm_context(assistant, arm), assistant.compute():
        outputs = assistant.generate(prompts, options, batch_size=params.batch_size,
                                     desc=f"{set_name} {arm} generate")
        sequences = [continuation_sequence(assistant.tokenizer, p, it.reference) for p, it in zip(prompts, items,
                                                                                                  strict=True)]
        scores = masked_logprobs(assistant.model, sequences, pad_id=assistant.tokenizer.pad_token_id,
                                 batch_size=params.batch_size, max_tokens=params.max_length,
                                 desc=f"{set_name} {arm} perplexity")
    return [text for text, *_ in outputs], scores


def retrieval_only_answers(items: Sequence[QaItem], sources: Sequence[Sequence[Any]]) -> list[str]:
    """The top excerpt itself, cut (around the question's words) to the reference answer's length: no model."""
    from stages.common.prompting import best_window

    out = []
    for it, src in zip(items, sources, strict=True):
        n = max(5, len(it.reference.split()))
        out.append(best_window(src[0].text, it.question, n) if src else "")
    return out


def score_qa_set(eval_set: EvalSet, answers: dict[str, list[str]], scores: dict[str, list[tuple[float, int]]],
                 sources: Sequence[Sequence[Any]], docs: Sequence[frozenset[str]], doc_of: dict[str, str],
                 params: EvalParams) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per-arm metrics, each named Δ with a paired bootstrap CI, per-project ROUGE-L and one prediction row per item."""
    from stages.common.prompting import strip_citations
    from stages.eval.grounded import grounded_scores, summarise
    from stages.eval.perplexity import perplexity

    items, refs = eval_set.items, [it.reference for it in eval_set.items]
    samples, seed = params.bootstrap_samples, params.seed
    rouge = {arm: [tm.rouge_l(strip_citations(a), r) for a, r in zip(answers[arm], refs, strict=True)]
             for arm in answers}
    arms: dict[str, Any] = {}
    grounded_rows: dict[str, list[dict[str, Any]]] = {}
    for arm, texts in answers.items():
        plain = [strip_citations(a) for a in texts]
        row: dict[str, Any] = {
            "rouge_l": tm.mean_with_ci(rouge[arm], samples, seed),
            "bleu": tm.corpus_bleu(plain, refs),
            "chrf": tm.corpus_chrf(plain, refs),
            "perplexity": perplexity(scores[arm]) if arm in scores else None,
            **tm.length_stats(plain),
        }
        if is_rag(arm):
            grounded_rows[arm] = [grounded_scores(a, src, d, doc_of) for a, src, d in zip(texts, sources, docs,
                                                                                         strict=True)]
            row.update(summarise(grounded_rows[arm]))
        arms[arm] = row
    deltas = {f"{new}-vs-{ref}": {"rouge_l": tm.paired_delta(rouge[ref], rouge[new], samples, seed)}
              for new, ref in PAIRS if new in rouge and ref in rouge}
    by_project: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_project[it.project].append(i)
    per_project = {project: {"n": len(idx), "rouge_l": {arm: statistics.fmean(rouge[arm][i] for i in idx)
                                                        for arm in rouge}}
                   for project, idx in sorted(by_project.items())}
    result = {"format": "qa", "path": eval_set.path, "n": len(items), "arms": arms, "deltas": deltas,
              "per_project": per_project,
              "reference_words_mean": statistics.fmean(len(words(r, lower=True)) for r in refs) if refs else 0.0}
    rows = []
    for i, it in enumerate(items):
        row = {"set": eval_set.name, "qa_id": it.qa_id, "project": it.project, "question": it.question,
               "reference": it.reference,
               "sources": [{"n": s.n, "chunk_id": s.chunk_id, "url": s.url, "title": s.title} for s in sources[i]],
               "source_retrieved": any(doc_of.get(s.chunk_id) in docs[i] for s in sources[i]) if docs[i] else None}
        for arm in answers:
            row[arm] = answers[arm][i]
            row[f"rouge_l_{arm}"] = round(rouge[arm][i], 6)
            if arm in scores:
                row[f"ppl_{arm}"] = _round(example_ppl(scores[arm][i]))
        rows.append(row)
    return result, rows


def run_mcq_arm(assistant: Any, items: Sequence[Any], sources: Sequence[Sequence[Any]], arm: str, system: str | None,
                params: EvalParams, set_name: str) -> list[dict[str, int]]:
    """Correctness per item: option log-likelihood after the same prompt the arm answers open questions with."""
    from stages.eval.mcq import score_items_shared_prefix

    prompts = [assistant.build_prompt(conversation(item.question, system), src if is_rag(arm) else None)
               for item, src in zip(items, sources, strict=True)]
    with _arm_context(assistant, arm), assistant.compute():
        return score_items_shared_prefix(assistant.model, assistant.tokenizer, prompts, items,
                                         max_tokens=params.max_length, desc=f"{set_name} {arm}")


def score_mcq_set(eval_set: EvalSet, correct: dict[str, list[dict[str, int]]], sources: Sequence[Sequence[Any]],
                  docs: Sequence[frozenset[str]], doc_of: dict[str, str], params: EvalParams) -> dict[str, Any]:
    samples, seed = params.bootstrap_samples, params.seed
    arms = {}
    for arm, rows in correct.items():
        arms[arm] = {"accuracy": tm.mean_with_ci([c["sum"] for c in rows], samples, seed),
                     **{f"accuracy_{norm}_norm": statistics.fmean(c[norm] for c in rows) if rows else None
                        for norm in ("token", "char")}}
    deltas = {f"{new}-vs-{ref}": {"accuracy": tm.paired_delta([c["sum"] for c in correct[ref]],
                                                              [c["sum"] for c in correct[new]], samples, seed)}
              for new, ref in PAIRS if new in correct and ref in correct}
    known = [(src, d) for src, d in zip(sources, docs, strict=True) if d]
    chance = statistics.fmean(1 / len(it.options) for it in eval_set.items) if eval_set.items else math.nan
    return {"format": "mcq", "path": eval_set.path, "n": len(eval_set.items), "arms": arms, "deltas": deltas,
            "chance": chance,
            "source_retrieved": (sum(any(doc_of.get(s.chunk_id) in d for s in src) for src, d in known) / len(known))
            if known else None}


def _round(value: float, digits: int = 6) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def finite(obj: Any) -> Any:
    """NaN/inf become null: strict JSON readers (and `dvc metrics`) reject NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------- the run

def load_assistant(paths: EvalPaths, params: EvalParams, settings: InferenceSettings) -> Any:
    """The inference core on models/base + models/adapter + data/index, as ask/chat/serve load it."""
    from stages.common.inference import Assistant, load_chat_tokenizer
    from stages.common.modeling import pick_device, setup_cpu_threads
    from stages.common.retrieval import Retriever
    from stages.eval.generate import load_model

    setup_cpu_threads(params.threads or None)
    device = pick_device()
    tokenizer = load_chat_tokenizer(paths.adapter_dir if (paths.adapter_dir / "tokenizer_config.json").is_file()
                                    else paths.base_dir)
    model = load_model(paths.base_dir, paths.adapter_dir, device, settings.quantization)
    retriever = Retriever.load(paths.index_dir)
    return Assistant(model, tokenizer, retriever, settings), device


def run_eval(paths: EvalPaths, params: EvalParams, settings: InferenceSettings, decontam_ngram: int,
             stats: StageMetrics | None = None) -> dict[str, Any]:
    """Evaluate the four arms (+ retrieval_only and question_only) on every set and write all outputs; returns
    eval.json's content. `decontam_ngram` (merge.decontam_ngram) is the word n-gram that marks an eval item
    contaminated: the same one merge drops training pairs by."""
    from stages.common.inference import GenerationOptions
    from stages.eval.report import write_plots, write_report

    stats = stats or StageMetrics("eval")
    system = params.system_prompt or train_system_prompt(paths.train)
    sets = load_sets(paths, params, system, stats)
    ngram = decontam_ngram
    index = contam.train_index(paths.train, ngram)
    assistant, device = load_assistant(paths, params, settings)
    doc_of = {c["chunk_id"]: str(c.get("doc_id") or "") for c in assistant.retriever.chunks}
    docs_by_key = docs_by_source_key(assistant.retriever.chunks)
    options = GenerationOptions(max_new_tokens=params.max_new_tokens, repetition_penalty=params.repetition_penalty)
    arms = [a for a in ARMS if a in params.arms]
    log.info("evaluating %s on %s, arms %s: %s", paths.adapter_dir, device, ", ".join(arms),
             ", ".join(f"{s.name}({len(s.items)})" for s in sets))

    results: dict[str, Any] = {}
    predictions: list[dict[str, Any]] = []
    for eval_set in sets:
        items = eval_set.items
        sources = assistant.retrieve_batch([it.question for it in items])
        docs = [source_docs(it, docs_by_key) for it in items]
        if eval_set.format == "qa":
            answers: dict[str, list[str]] = {}
            scores: dict[str, list[tuple[float, int]]] = {}
            for arm in arms:
                answers[arm], scores[arm] = run_qa_arm(assistant, items, sources, arm, params, options, eval_set.name)
            answers[RETRIEVAL_ONLY] = retrieval_only_answers(items, sources)
            answers[QUESTION_ONLY] = [it.question for it in items]
            result, rows = score_qa_set(eval_set, answers, scores, sources, docs, doc_of, params)
            predictions.extend(rows)
        else:
            correct = {arm: run_mcq_arm(assistant, items, sources, arm, system, params, eval_set.name) for arm in arms}
            result = score_mcq_set(eval_set, correct, sources, docs, doc_of, params)
        result["contamination"] = contam.contamination(set_texts(eval_set), index, ngram)
        results[eval_set.name] = result
        stats.inc("sets_evaluated")
        stats.inc("items_out", result["n"])
        log.info("%s: %s", eval_set.name, _headline(result))

    predictions.sort(key=lambda r: (r["set"], r["qa_id"]))
    write_jsonl(paths.predictions, predictions)
    config = {k: getattr(params, k) for k in ("max_examples", "max_new_tokens", "batch_size", "repetition_penalty",
                                         "bootstrap_samples", "seed")}
    config["k"] = assistant.settings.k
    config["excerpt_words"] = assistant.settings.excerpt_words
    stats.set("throughput.items_per_second", round(sum(r["n"] for r in results.values()) / max(stats.elapsed, 1e-9), 3))
    report = finite({"sets": results, "config": config, "device": device})
    plots = write_plots(report, paths.plots_dir)
    write_report(report, predictions, plots, paths.report, paths.plots_dir)
    report["run"] = stats.as_dict()
    write_json(paths.metrics, finite(report))
    return report


def _headline(result: dict[str, Any]) -> str:
    key = "rouge_l" if result["format"] == "qa" else "accuracy"
    return ", ".join(f"{arm} {row[key]['mean']:.4f}" for arm, row in result["arms"].items()) + f" (n={result['n']})"

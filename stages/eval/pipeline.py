"""The whole eval run: load sets, score base and tuned on each, write eval.json, predictions, report and plots.

Kept apart from `__main__` so tests call `run_eval` with explicit paths and a params dict.
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
from typing import Any

from stages.common.cli import StageError
from stages.common.jsonl import iter_jsonl_lenient, stable_id, write_json, write_jsonl
from stages.common.metrics import StageMetrics
from stages.eval import contamination as contam
from stages.eval import metrics as tm

log = logging.getLogger(__name__)

MERGE_TEST = "merge-test"
FORMATS = ("qa", "mcq")


@dataclass(frozen=True)
class QaItem:
    qa_id: str
    project: str
    question: str
    reference: str
    system: str | None
    url: str = ""

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": "user", "content": self.question}, {"role": "assistant", "content": self.reference}]


@dataclass
class EvalPaths:
    base_dir: Path = Path("models/base")
    adapter_dir: Path = Path("models/adapter")
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
                  by_role.get("system") or None, str(row.get("url") or ""))


def qa_from_row(row: dict[str, Any], set_name: str, system: str | None) -> QaItem:
    """A hand-written or external QA row: question, answer, project (qa_id/id optional, derived if absent)."""
    question, answer = str(row.get("question") or "").strip(), str(row.get("answer") or "").strip()
    if not question or not answer:
        raise ValueError("row needs a question and an answer")
    qa_id = str(row.get("qa_id") or row.get("id") or stable_id(set_name, question))
    return QaItem(qa_id, str(row.get("project") or "unknown"), question, answer, system, str(row.get("url") or ""))


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


def load_sets(paths: EvalPaths, params: dict[str, Any], system: str | None, stats: StageMetrics) -> list[EvalSet]:
    """merge-test first, then every `eval.sets` entry; a missing external file is skipped with a warning."""
    from stages.eval.mcq import parse_item

    seed, cap = int(params.get("seed", 42)), int(params.get("max_examples", 0))
    if not paths.test.is_file():
        raise StageError(f"{paths.test} not found (run `dvc repro merge` first)")
    items = load_items(read_rows(paths.test, MERGE_TEST, stats), qa_from_messages, paths.test, MERGE_TEST, stats)
    sets = [EvalSet(MERGE_TEST, "qa", str(paths.test), select_subset(items, cap, seed, lambda it: it.qa_id))]
    for spec in params.get("sets") or []:
        name, fmt, path = str(spec.get("name", "")), str(spec.get("format", "qa")), Path(str(spec.get("path", "")))
        if not name or fmt not in FORMATS or name == MERGE_TEST:
            raise StageError(f"eval.sets entry {spec!r}: needs a name (not {MERGE_TEST}), a path and format qa|mcq")
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


# ---------------------------------------------------------------- scoring

def set_texts(eval_set: EvalSet) -> list[str]:
    """The text of each item that could have leaked into training (question + answer, or + options)."""
    if eval_set.format == "qa":
        return [f"{it.question}\n{it.reference}" for it in eval_set.items]
    return [it.question + "\n" + "\n".join(text for _, text in it.options) for it in eval_set.items]


def answer_scores(model: Any, tokenizer: Any, items: Sequence[QaItem], params: dict[str, Any],
                  desc: str) -> list[tuple[float, int]]:
    from stages.eval.perplexity import assistant_sequence, masked_logprobs

    return masked_logprobs(model, [assistant_sequence(tokenizer, it.messages()) for it in items],
                           pad_id=tokenizer.pad_token_id, batch_size=int(params["batch_size"]),
                           max_tokens=int(params.get("max_length", 1024)), desc=desc)


def run_model_on_qa(model: Any, tokenizer: Any, items: Sequence[QaItem], params: dict[str, Any],
                    label: str) -> tuple[list[str], list[tuple[float, int]]]:
    """Greedy answers and reference-answer log-likelihoods for the model in its current adapter state."""
    from stages.eval.generate import chat_prompt, generate_answers

    prompts = [chat_prompt(tokenizer, it.question, it.system) for it in items]
    answers = generate_answers(model, tokenizer, prompts, batch_size=int(params["batch_size"]),
                               max_new_tokens=int(params["max_new_tokens"]),
                               repetition_penalty=float(params.get("repetition_penalty", 1.0)),
                               max_prompt_tokens=int(params.get("max_prompt_tokens", 768)), desc=f"{label} generate")
    return answers, answer_scores(model, tokenizer, items, params, f"{label} perplexity")


def example_ppl(score: tuple[float, int]) -> float:
    total, n = score
    return math.exp(-total / n) if n else math.nan


def qa_results(eval_set: EvalSet, base: tuple[list[str], list[tuple[float, int]]],
               tuned: tuple[list[str], list[tuple[float, int]]], params: dict[str, Any]
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Set-level metrics (with CIs), per-project breakdown and one prediction row per item."""
    from stages.eval.perplexity import perplexity

    items, refs = eval_set.items, [it.reference for it in eval_set.items]
    (base_ans, base_sc), (tuned_ans, tuned_sc) = base, tuned
    rouge_b = [tm.rouge_l(a, r) for a, r in zip(base_ans, refs, strict=True)]
    rouge_t = [tm.rouge_l(a, r) for a, r in zip(tuned_ans, refs, strict=True)]
    samples, seed = int(params.get("bootstrap_samples", 1000)), int(params.get("seed", 42))
    len_b, len_t = tm.length_stats(base_ans), tm.length_stats(tuned_ans)
    metrics = {
        "rouge_l": tm.paired_with_ci(rouge_b, rouge_t, samples, seed),
        "bleu": tm.compare(tm.corpus_bleu(base_ans, refs), tm.corpus_bleu(tuned_ans, refs)),
        "chrf": tm.compare(tm.corpus_chrf(base_ans, refs), tm.corpus_chrf(tuned_ans, refs)),
        "perplexity": tm.compare(perplexity(base_sc), perplexity(tuned_sc)),
        **{k: tm.compare(len_b[k], len_t[k]) for k in len_b},
    }
    by_project: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        by_project[it.project].append(i)
    per_project = {
        project: {
            "n": len(idx),
            "rouge_l": tm.compare(statistics.fmean(rouge_b[i] for i in idx), statistics.fmean(rouge_t[i] for i in idx)),
            "perplexity": tm.compare(perplexity([base_sc[i] for i in idx]), perplexity([tuned_sc[i] for i in idx])),
        }
        for project, idx in sorted(by_project.items())
    }
    result = {"format": "qa", "path": eval_set.path, "n": len(items), "metrics": metrics, "per_project": per_project,
              "reference_words_mean": statistics.fmean(len(tm.words(r)) for r in refs) if refs else 0.0}
    rows = [{"set": eval_set.name, "qa_id": it.qa_id, "project": it.project, "question": it.question,
             "reference": it.reference, "base": base_ans[i], "tuned": tuned_ans[i],
             "rouge_l_base": round(rouge_b[i], 6), "rouge_l_tuned": round(rouge_t[i], 6),
             "ppl_base": _round(example_ppl(base_sc[i])), "ppl_tuned": _round(example_ppl(tuned_sc[i]))}
            for i, it in enumerate(items)]
    return result, rows


def mcq_results(eval_set: EvalSet, base: Sequence[dict[str, int]], tuned: Sequence[dict[str, int]],
                params: dict[str, Any]) -> dict[str, Any]:
    """Accuracy per normalisation; the summed one gets bootstrap CIs (it is the headline MCQ number)."""
    samples, seed = int(params.get("bootstrap_samples", 1000)), int(params.get("seed", 42))
    metrics = {"accuracy": tm.paired_with_ci([c["sum"] for c in base], [c["sum"] for c in tuned], samples, seed)}
    for norm in ("token", "char"):
        metrics[f"accuracy_{norm}_norm"] = tm.compare(statistics.fmean(c[norm] for c in base) if base else math.nan,
                                                      statistics.fmean(c[norm] for c in tuned) if tuned else math.nan)
    chance = statistics.fmean(1 / len(it.options) for it in eval_set.items) if eval_set.items else math.nan
    return {"format": "mcq", "path": eval_set.path, "n": len(eval_set.items), "metrics": metrics, "chance": chance}


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

def run_eval(paths: EvalPaths, params: dict[str, Any], stats: StageMetrics | None = None) -> dict[str, Any]:
    """Evaluate base and tuned on every set and write all outputs; returns the eval.json content."""
    from stages.common.modeling import pick_device, setup_cpu_threads
    from stages.eval.generate import load_model, load_tokenizer
    from stages.eval.mcq import score_items
    from stages.eval.report import write_plots, write_report

    stats = stats or StageMetrics("eval")
    system = params.get("system_prompt") or train_system_prompt(paths.train)
    sets = load_sets(paths, params, system, stats)
    ngram = int(params.get("contamination_ngram", 13))
    index = contam.train_index(paths.train, ngram)
    setup_cpu_threads(int(params.get("threads") or 0) or None)
    device = pick_device()
    tokenizer = load_tokenizer(paths.base_dir, paths.adapter_dir)
    model = load_model(paths.base_dir, paths.adapter_dir, device, str(params.get("quantization", "none")))
    log.info("evaluating %s on %s: %s", paths.adapter_dir, device, ", ".join(f"{s.name}({len(s.items)})" for s in sets))

    results: dict[str, Any] = {}
    predictions: list[dict[str, Any]] = []
    for eval_set in sets:
        if eval_set.format == "qa":
            with model.disable_adapter():
                base = run_model_on_qa(model, tokenizer, eval_set.items, params, f"{eval_set.name} base")
            tuned = run_model_on_qa(model, tokenizer, eval_set.items, params, f"{eval_set.name} tuned")
            result, rows = qa_results(eval_set, base, tuned, params)
            predictions.extend(rows)
        else:
            kwargs = {"batch_size": int(params["batch_size"]), "max_tokens": int(params.get("max_length", 1024))}
            with model.disable_adapter():
                base_mcq = score_items(model, tokenizer, eval_set.items, system, desc=f"{eval_set.name} base", **kwargs)
            tuned_mcq = score_items(model, tokenizer, eval_set.items, system, desc=f"{eval_set.name} tuned", **kwargs)
            result = mcq_results(eval_set, base_mcq, tuned_mcq, params)
        result["contamination"] = contam.contamination(set_texts(eval_set), index, ngram)
        results[eval_set.name] = result
        stats.inc("sets_evaluated")
        stats.inc("items_out", result["n"])
        log.info("%s: %s", eval_set.name, _headline(result))

    predictions.sort(key=lambda r: (r["set"], r["qa_id"]))
    write_jsonl(paths.predictions, predictions)
    config = {k: params.get(k) for k in ("max_examples", "max_new_tokens", "batch_size", "repetition_penalty",
                                         "bootstrap_samples", "seed")}
    stats.set("throughput.items_per_second", round(sum(r["n"] for r in results.values()) / max(stats.elapsed, 1e-9), 3))
    report = finite({"sets": results, "config": config, "device": device})
    plots = write_plots(report, paths.plots_dir)
    write_report(report, predictions, plots, paths.report, paths.plots_dir)
    report["run"] = stats.as_dict()
    write_json(paths.metrics, finite(report))
    return report


def _headline(result: dict[str, Any]) -> str:
    key = "rouge_l" if result["format"] == "qa" else "accuracy"
    row = result["metrics"][key]
    return f"{key} base {row['base']:.4f} tuned {row['tuned']:.4f} (n={result['n']})"

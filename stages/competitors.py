"""Competitors: other models answer eval's sets, closed-book and with retrieval, next to the project's four arms.

    python -m stages.competitors                   # every entry of `competitors.models` in params.yaml
    python -m stages.competitors --only gemma3-270m

Each competitor is a base model resolved like `train.base_model` (an offline package alias, a local dir or a
Hugging Face id), saved once under models/competitors/<name>/, and evaluated through the same inference core,
prompt, retrieval, generation settings and seeded items as `eval` (metrics/eval.json), in two arms:
`<name>_closed` and `<name>_rag`. The result is metrics/competitors/<name>.json and one table for all of them,
metrics/competitors/report.md, with a paired Δ against the tuned reader (tuned_rag, per item, from
data/eval/predictions.jsonl) wherever the items match.

Why not a DVC stage: Gemma-3-270m alone takes ~15 min of the 2-core CPU box, so it stays out of the pinned run's
50-minute budget; it reads the pinned run's outputs (models/base is not used) and its metrics are committed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.common.cli import StageError, run_cli, setup_logging, stage_parser
from stages.common.inference import InferenceSettings
from stages.common.jsonl import iter_jsonl_lenient, read_json, write_json
from stages.common.metrics import StageMetrics
from stages.common.params import load_params
from stages.common.schema import CompetitorsParams, EvalParams, load_stage_params

log = logging.getLogger(__name__)

MODELS_DIR = Path("models/competitors")
METRICS_DIR = Path("metrics/competitors")
OWN_ARMS = ("base_closed", "tuned_closed", "base_rag", "tuned_rag")


def competitor_specs(cfg: CompetitorsParams, only: Sequence[str]) -> list[tuple[str, str]]:
    """(name, model ref) of each `competitors.models` entry (names checked by the schema); `only` narrows them."""
    specs = [(entry.name, entry.model) for entry in cfg.models]
    unknown = sorted(set(only) - {name for name, _ in specs})
    if unknown:
        raise StageError(f"--only {', '.join(unknown)}: not in competitors.models")
    return [(n, m) for n, m in specs if not only or n in only]


def ensure_model(name: str, ref: str) -> Path:
    """models/competitors/<name>: built once (resolved, training template added, saved in its own dtype)."""
    from stages.base_model import build_base_model

    out = MODELS_DIR / name
    if not (out / "config.json").is_file():
        log.info("competitor %s: building %s from %s", name, out, ref)
        build_base_model(ref, out)
    return out


def own_rouge_by_item(predictions: Path) -> dict[tuple[str, str], float]:
    """(set, qa_id) -> tuned_rag ROUGE-L of the pinned eval run."""
    if not predictions.is_file():
        return {}
    return {(str(r.get("set")), str(r.get("qa_id"))): float(r["rouge_l_tuned_rag"])
            for r in iter_jsonl_lenient(predictions) if "rouge_l_tuned_rag" in r}


def evaluate_competitor(name: str, model_dir: Path, eval_cfg: EvalParams, settings: InferenceSettings,
                        batch_size: int, stats: StageMetrics) -> dict[str, Any]:
    """The competitor's closed and rag arms on every eval set (same items, prompts and settings as `eval`)."""
    from stages.common.inference import Assistant, GenerationOptions, load_chat_tokenizer
    from stages.common.modeling import load_causal_lm, pick_device, setup_cpu_threads
    from stages.common.retrieval import Retriever, docs_by_source_key
    from stages.eval import metrics as tm
    from stages.eval.pipeline import (
        EvalPaths,
        load_sets,
        run_mcq_arm,
        run_qa_arm,
        score_mcq_set,
        score_qa_set,
        source_docs,
        train_system_prompt,
    )

    paths = EvalPaths()
    setup_cpu_threads(eval_cfg.threads or None)
    device = pick_device()
    assistant = Assistant(load_causal_lm(model_dir, "none", device).eval(), load_chat_tokenizer(model_dir),
                          Retriever.load(paths.index_dir), settings, name=name)
    system = eval_cfg.system_prompt or train_system_prompt(paths.train)
    params = eval_cfg.model_copy(update={"batch_size": batch_size})  # competitors.batch_size: bigger vocabularies
    options = GenerationOptions(max_new_tokens=eval_cfg.max_new_tokens, repetition_penalty=eval_cfg.repetition_penalty)
    doc_of = {c["chunk_id"]: str(c.get("doc_id") or "") for c in assistant.retriever.chunks}
    docs_by_key = docs_by_source_key(assistant.retriever.chunks)
    own = own_rouge_by_item(paths.predictions)
    arms = {"base_closed": f"{name}_closed", "base_rag": f"{name}_rag"}  # no adapter: the model as it ships
    out: dict[str, Any] = {}
    for eval_set in load_sets(paths, params, system, stats):
        items = eval_set.items
        versus_tuned: dict[str, Any] = {}
        sources = assistant.retrieve_batch([it.question for it in items])
        docs = [source_docs(it, docs_by_key) for it in items]
        if eval_set.format == "qa":
            answers, scores = {}, {}
            for arm in arms:
                answers[arm], scores[arm] = run_qa_arm(assistant, items, sources, arm, params, options, eval_set.name)
            result, rows = score_qa_set(eval_set, answers, scores, sources, docs, doc_of, params)
            pairs = [(own[(eval_set.name, r["qa_id"])], r["rouge_l_base_rag"]) for r in rows
                     if (eval_set.name, r["qa_id"]) in own]
            if pairs and len(pairs) == len(rows):
                versus_tuned = {f"tuned_rag-vs-{name}_rag": {"rouge_l": tm.paired_delta(
                    [c for _, c in pairs], [t for t, _ in pairs], eval_cfg.bootstrap_samples, eval_cfg.seed)}}
            else:
                log.warning("%s: pinned predictions do not cover these items; no paired Δ", eval_set.name)
            result["examples"] = [{"qa_id": r["qa_id"], "question": r["question"], "closed": r["base_closed"],
                                   "rag": r["base_rag"]} for r in rows[:3]]
        else:
            correct = {arm: run_mcq_arm(assistant, items, sources, arm, system, params, eval_set.name)
                       for arm in arms}
            result = score_mcq_set(eval_set, correct, sources, docs, doc_of, params)
        result["arms"] = {arms[a]: row for a, row in result["arms"].items()}
        result["deltas"] = {**{_renamed(pair, arms): row for pair, row in result["deltas"].items()}, **versus_tuned}
        result.pop("per_project", None)
        out[eval_set.name] = result
        log.info("%s on %s: %s", name, eval_set.name, ", ".join(
            f"{a} {_headline(row)}" for a, row in result["arms"].items()))
    return out


def _renamed(pair: str, arms: dict[str, str]) -> str:
    """`base_rag-vs-base_closed` -> `<name>_rag-vs-<name>_closed`: each side is mapped whole (eval's arm names never
    hold `-vs-`), so a competitor name that contains an arm name is left alone."""
    new, _, ref = pair.partition("-vs-")
    return f"{arms.get(new, new)}-vs-{arms.get(ref, ref)}"


def _headline(row: dict[str, Any]) -> str:
    value = (row.get("rouge_l") or row.get("accuracy") or {}).get("mean")
    return f"{value:.4f}" if isinstance(value, float) else "n/a"


def render_table(own: dict[str, Any], competitors: dict[str, dict[str, Any]]) -> str:
    """One markdown table: each set's headline metric for the project's arms and every competitor's two arms."""
    names = sorted(competitors)
    columns = [*OWN_ARMS, *[f"{n}_{kind}" for n in names for kind in ("closed", "rag")]]
    lines = ["# Competitors", "",
             "The project's four arms (metrics/eval.json) beside other models answering the same items through the "
             "same inference core, prompt and retrieval (`python -m stages.competitors`). ROUGE-L for open "
             "questions, accuracy for multiple choice; 95 % bootstrap CIs in each competitor's JSON.", "",
             "| set | n | metric | " + " | ".join(columns) + " |", "|---|---:|---|" + "---:|" * len(columns)]
    for set_name, result in (own.get("sets") or {}).items():
        key = "rouge_l" if result.get("format") == "qa" else "accuracy"
        values = {arm: row.get(key, {}).get("mean") for arm, row in result.get("arms", {}).items()}
        for n in names:
            for arm, row in competitors[n].get("sets", {}).get(set_name, {}).get("arms", {}).items():
                values[arm] = row.get(key, {}).get("mean")
        cells = [f"{values[c]:.4f}" if isinstance(values.get(c), float) else "—" for c in columns]
        lines.append(f"| {set_name} | {result.get('n')} | {key} | " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        for set_name, result in competitors[n].get("sets", {}).items():
            for pair, row in result.get("deltas", {}).items():
                metric, d = next(iter(row.items()))
                lines.append(f"- {set_name}: {pair} {metric} Δ {d['delta']:+.4f} "
                             f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}], wins/losses {d['wins']}/{d['losses']}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--only", action="append", default=[], help="a competitor name (repeatable)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = load_stage_params("competitors", CompetitorsParams, args.params)
    eval_cfg = load_stage_params("eval", EvalParams, args.params)
    settings = InferenceSettings.from_params(load_params(None, args.params))  # inference: + merge.system_prompt
    specs = competitor_specs(cfg, args.only)
    if not specs:
        raise StageError("no competitors: add {name, model} entries under competitors.models in params.yaml")
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    for name, ref in specs:
        stats = StageMetrics(f"competitors.{name}")
        model_dir = ensure_model(name, ref)
        sets = evaluate_competitor(name, model_dir, eval_cfg, settings, cfg.batch_size, stats)
        info = _read_json(model_dir / "base_model.json")
        write_json(METRICS_DIR / f"{name}.json", {"model": ref, "architecture": info.get("architecture"),
                                                  "n_parameters": info.get("n_parameters"), "sets": sets,
                                                  "run": stats.as_dict()})
    own = _read_json(Path("metrics/eval.json"))
    competitors = {p.stem: _read_json(p) for p in sorted(METRICS_DIR.glob("*.json"))}
    (METRICS_DIR / "report.md").write_text(render_table(own, competitors), encoding="utf-8")
    log.info("wrote %s", METRICS_DIR / "report.md")


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON file, or {} when it is not there yet (no pinned eval run, a model without provenance)."""
    return read_json(path) if path.is_file() else {}


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

"""metrics/report.md and PNG plots (matplotlib Agg): readable offline, unlike `dvc plots show` (CDN vega)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.common.jsonl import atomic_write

log = logging.getLogger(__name__)

PLOT_METRICS = ("rouge_l", "chrf", "perplexity", "faithfulness", "citation_accuracy", "accuracy")
MAX_PROJECTS_PLOTTED = 30
N_EXAMPLES = 5
SNIPPET_CHARS = 400


# ---------------------------------------------------------------- plots

def _save(fig: Any, path: Path) -> Path:
    """PNG written atomically, without the matplotlib version in its metadata (stable bytes across upgrades)."""
    import matplotlib.pyplot as plt

    with atomic_write(path, "wb", encoding=None) as fh:
        fig.savefig(fh, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def _err(row: dict[str, Any], side: str) -> tuple[float, float]:
    """Error-bar lengths below/above the point from the row's 95 % CI; zero where there is none."""
    ci = (row.get("ci95") or {}).get(side)
    value = row.get(side)
    if not ci or value is None or ci[0] is None or ci[1] is None:
        return 0.0, 0.0
    return max(0.0, value - ci[0]), max(0.0, ci[1] - value)


ARM_COLORS = {"base_closed": "#9aa5b1", "tuned_closed": "#6b8fd6", "base_rag": "#e0a458", "tuned_rag": "#2f6fde",
              "retrieval_only": "#5c946e", "question_only": "#c9c9c9"}


def _arm_value(row: Any) -> float | None:
    return row.get("mean") if isinstance(row, dict) else row


def plot_metric(sets: dict[str, Any], metric: str, path: Path) -> Path | None:
    """One bar per arm for one metric across the sets that have it, with CI error bars where known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in sets.items() if any(_arm_value(a.get(metric)) is not None for a in r["arms"].values())]
    if not names:
        return None
    arms = [a for a in ARM_COLORS if any(a in sets[n]["arms"] for n in names)]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(names) * len(arms) / 2 + 2), 3.8))
    width = 0.8 / len(arms)
    for j, arm in enumerate(arms):
        values, lows, highs = [], [], []
        for n in names:
            row = sets[n]["arms"].get(arm, {}).get(metric)
            value = _arm_value(row)
            values.append(value or 0.0)
            ci = row.get("ci95") if isinstance(row, dict) else None
            ok = value is not None and ci and ci[0] is not None
            lows.append(max(0.0, value - ci[0]) if ok else 0.0)
            highs.append(max(0.0, ci[1] - value) if ok else 0.0)
        ax.bar([i - 0.4 + width * (j + 0.5) for i in range(len(names))], values, width, label=arm,
               color=ARM_COLORS[arm], yerr=[lows, highs], capsize=3)
    ax.set_xticks(list(range(len(names))), names, rotation=15)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by arm" + (" (lower is better)" if metric == "perplexity" else ""))
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_per_project(per_project: dict[str, Any], set_name: str, path: Path) -> Path | None:
    """Per-project ROUGE-L of every arm, for the projects with the most items."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not per_project:
        return None
    projects = sorted(per_project, key=lambda p: (-per_project[p]["n"], p))[:MAX_PROJECTS_PLOTTED][::-1]
    arms = [a for a in ARM_COLORS if a in next(iter(per_project.values()))["rouge_l"]]
    fig, ax = plt.subplots(figsize=(7.5, max(2.5, 0.45 * len(projects) + 1.2)))
    height = 0.8 / len(arms)
    for j, arm in enumerate(arms):
        ax.barh([i - 0.4 + height * (j + 0.5) for i in range(len(projects))],
                [per_project[p]["rouge_l"][arm] or 0.0 for p in projects], height, label=arm, color=ARM_COLORS[arm])
    ax.set_yticks(list(range(len(projects))), [f"{p} (n={per_project[p]['n']})" for p in projects])
    ax.set_xlabel("ROUGE-L F1")
    ax.set_title(f"{set_name}: ROUGE-L per project")
    ax.legend(fontsize=7)
    return _save(fig, path)


def write_plots(report: dict[str, Any], plots_dir: Path) -> list[Path]:
    """Every plot the report links to; stale PNGs from an earlier run with other sets are removed."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    for old in plots_dir.glob("*.png"):
        old.unlink()
    sets = report["sets"]
    written = [plot_metric(sets, m, plots_dir / f"{m}.png") for m in PLOT_METRICS]
    for name, result in sets.items():
        if result.get("per_project"):
            written.append(plot_per_project(result["per_project"], name, plots_dir / f"per_project_rouge_l_{name}.png"))
    return [p for p in written if p is not None]


# ---------------------------------------------------------------- report.md

def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(ci: Sequence[Any] | None) -> str:
    if not ci or ci[0] is None:
        return ""
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _contamination_line(c: dict[str, Any]) -> str:
    return (f"Contamination: {c['n_contaminated']}/{c['n']} items ({100 * c['share']:.1f} %) share a word "
            f"{c['ngram']}-gram with the training split; {c['n_too_short']} item(s) are shorter than {c['ngram']} words and cannot match.")


QA_ROWS = ("rouge_l", "bleu", "chrf", "perplexity", "answer_words_mean", "repeated_4gram_share", "faithfulness",
           "citation_rate", "citation_accuracy", "citation_accuracy_when_retrieved", "source_retrieved",
           "abstain_when_missed", "abstain_when_retrieved")
MCQ_ROWS = ("accuracy", "accuracy_token_norm", "accuracy_char_norm")


def _cell(row: Any) -> str:
    if isinstance(row, dict):
        return f"{_fmt(row.get('mean'))} {_ci(row.get('ci95'))}".strip()
    return _fmt(row)


def _set_section(name: str, result: dict[str, Any]) -> list[str]:
    arms = list(result["arms"])
    lines = [f"## {name}", "", f"Format `{result['format']}`, n = {result['n']}, from `{result['path']}`.", "",
             "| metric | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for metric in (QA_ROWS if result["format"] == "qa" else MCQ_ROWS):
        if any(metric in result["arms"][a] for a in arms):
            lines.append(f"| {metric} | " + " | ".join(_cell(result["arms"][a].get(metric)) for a in arms) + " |")
    lines += ["", "| Δ (new − reference) | metric | Δ | 95 % CI | wins / losses |", "|---|---|---:|---|---|"]
    for pair, metrics in result["deltas"].items():
        for metric, row in metrics.items():
            lines.append(f"| {pair} | {metric} | {_fmt(row['delta'])} | {_ci(row.get('ci95'))} | "
                         f"{row.get('wins', '')} / {row.get('losses', '')} |")
    lines += ["", _contamination_line(result["contamination"]), ""]
    if result["format"] == "mcq":
        lines += [f"Chance accuracy: {_fmt(result['chance'])}. Options are shuffled per item with the seed; "
                  "`accuracy` picks by summed log-likelihood, the `_norm` rows per token / per character. "
                  f"Source document among the retrieved excerpts: {_fmt(result.get('source_retrieved'))}.", ""]
    if result.get("per_project"):
        lines += ["| project | n | " + " | ".join(f"ROUGE-L {a}" for a in next(iter(
            result["per_project"].values()))["rouge_l"]) + " |",
                  "|---|---:|" + "---:|" * len(next(iter(result["per_project"].values()))["rouge_l"])]
        for project, row in result["per_project"].items():
            lines.append(f"| {project} | {row['n']} | " + " | ".join(_fmt(v) for v in row["rouge_l"].values()) + " |")
        lines.append("")
    return lines


def _quote(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > SNIPPET_CHARS:
        text = text[:SNIPPET_CHARS] + " …"
    return text.replace("|", "\\|") or "(empty)"


def _examples(predictions: Sequence[dict[str, Any]], prefer: str) -> list[str]:
    """Five predictions (by qa_id) of the preferred set: every arm side by side, with the excerpts retrieved."""
    if not predictions:
        return []
    names = {p["set"] for p in predictions}
    chosen_set = prefer if prefer in names else predictions[0]["set"]
    chosen = [p for p in predictions if p["set"] == chosen_set][:N_EXAMPLES]
    lines = [f"## Example answers ({chosen_set})", ""]
    for p in chosen:
        lines += [f"**{p['qa_id']}** ({p['project']})", "", f"- question: {_quote(p['question'])}",
                  f"- reference: {_quote(p['reference'])}"]
        for arm in ARM_COLORS:
            if arm in p:
                lines.append(f"- {arm} (ROUGE-L {_fmt(p.get(f'rouge_l_{arm}'), 3)}): {_quote(p[arm])}")
        for s in p.get("sources", []):
            lines.append(f"  - [{s['n']}] {_quote(s['title'])} — {s['url']}")
        lines.append("")
    return lines


def render_report(report: dict[str, Any], predictions: Sequence[dict[str, Any]], plot_links: Sequence[str]) -> str:
    config = report.get("config", {})
    lines = ["# Evaluation: four arms", "",
             "`base_closed` = models/base answering alone; `tuned_closed` = + models/adapter; `*_rag` = the same with "
             "the top-k retrieved excerpts in the prompt (stages.common.inference, what users get); `retrieval_only` = "
             "the top excerpt itself cut to the reference's length, no model; `question_only` = the question itself as the "
             "answer (what restating it scores: a gain over it is not a gain from restating). ROUGE-L is mean per-example F1 (stemmed, "
             "citations removed) with a 95 % bootstrap CI; BLEU and chrF are corpus-level sacrebleu (0-100); "
             "perplexity covers the reference answer's tokens after each arm's prompt. Each Δ names its pair; its CI "
             "resamples the items together.", "",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(config.items())) + f", device={report.get('device')}.",
             "", "## Summary", ""]
    arm_names = [a for a in ARM_COLORS if any(a in r["arms"] for r in report["sets"].values())]
    lines += ["| set | n | metric | " + " | ".join(arm_names) + " | contaminated |",
              "|---|---:|---|" + "---:|" * len(arm_names) + "---:|"]
    for name, result in report["sets"].items():
        key = "rouge_l" if result["format"] == "qa" else "accuracy"
        cells = [_fmt(_arm_value(result["arms"][a][key])) if a in result["arms"] else "—" for a in arm_names]
        lines.append(f"| {name} | {result['n']} | {key} | " + " | ".join(cells) +
                     f" | {100 * result['contamination']['share']:.1f} % |")
    lines.append("")
    losses = [f"{name}: {pair} {metric} Δ {_fmt(row['delta'])} {_ci(row.get('ci95'))}"
              for name, result in report["sets"].items() for pair, metrics in result["deltas"].items()
              for metric, row in metrics.items() if row.get("delta") is not None and row["delta"] <= 0]
    if losses:
        lines += ["Where the newer arm does not win (Δ ≤ 0):", ""] + [f"- {x}" for x in losses] + [""]
    for name, result in report["sets"].items():
        lines += _set_section(name, result)
    lines += _examples(predictions, prefer=next(iter(report["sets"]), ""))
    if plot_links:
        lines += ["## Plots", ""] + [f"![{Path(link).stem}]({link})" for link in plot_links] + [""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], predictions: Sequence[dict[str, Any]], plots: Sequence[Path],
                 report_path: Path, plots_dir: Path) -> Path:
    links = [Path(os.path.relpath(p, report_path.parent)).as_posix() for p in plots]
    with atomic_write(report_path) as fh:
        fh.write(render_report(report, predictions, links))
    return report_path

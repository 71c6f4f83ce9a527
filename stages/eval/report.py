"""metrics/report.md and PNG plots (matplotlib Agg): readable offline, unlike `dvc plots show` (CDN vega)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.common.jsonl import atomic_write

log = logging.getLogger(__name__)

PLOT_METRICS = ("rouge_l", "bleu", "chrf", "perplexity", "accuracy")
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


def plot_metric(sets: dict[str, Any], metric: str, path: Path) -> Path | None:
    """Base vs tuned bars for one metric across the sets that have it, with CI error bars where known."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in sets.items() if metric in r["metrics"] and r["metrics"][metric]["base"] is not None]
    if not names:
        return None
    rows = [sets[n]["metrics"][metric] for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(names) + 2), 3.6))
    x = range(len(names))
    width = 0.38
    for offset, side, color in ((-width / 2, "base", "#9aa5b1"), (width / 2, "tuned", "#2f6fde")):
        values = [r[side] if r[side] is not None else 0.0 for r in rows]
        errs = [_err(r, side) for r in rows]
        ax.bar([i + offset for i in x], values, width, label=side, color=color,
               yerr=[[e[0] for e in errs], [e[1] for e in errs]], capsize=4)
    ax.set_xticks(list(x), names, rotation=15)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: base vs tuned" + (" (lower is better)" if metric == "perplexity" else ""))
    ax.legend()
    return _save(fig, path)


def plot_per_project(per_project: dict[str, Any], set_name: str, path: Path) -> Path | None:
    """Per-project ROUGE-L, base vs tuned, for the projects with the most items."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not per_project:
        return None
    projects = sorted(per_project, key=lambda p: (-per_project[p]["n"], p))[:MAX_PROJECTS_PLOTTED][::-1]
    fig, ax = plt.subplots(figsize=(7.0, max(2.5, 0.32 * len(projects) + 1.2)))
    y = range(len(projects))
    height = 0.4
    for offset, side, color in ((-height / 2, "base", "#9aa5b1"), (height / 2, "tuned", "#2f6fde")):
        ax.barh([i + offset for i in y], [per_project[p]["rouge_l"][side] or 0.0 for p in projects], height,
                label=side, color=color)
    ax.set_yticks(list(y), [f"{p} (n={per_project[p]['n']})" for p in projects])
    ax.set_xlabel("ROUGE-L F1")
    ax.set_title(f"{set_name}: ROUGE-L per project")
    ax.legend()
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


def _set_section(name: str, result: dict[str, Any]) -> list[str]:
    lines = [f"## {name}", "", f"Format `{result['format']}`, n = {result['n']}, from `{result['path']}`.", "",
             "| metric | base | tuned | Δ (tuned − base) | base 95 % CI | tuned 95 % CI | Δ 95 % CI |",
             "|---|---:|---:|---:|---|---|---|"]
    for metric, row in result["metrics"].items():
        ci = row.get("ci95") or {}
        lines.append(f"| {metric} | {_fmt(row['base'])} | {_fmt(row['tuned'])} | {_fmt(row['delta'])} | "
                     f"{_ci(ci.get('base'))} | {_ci(ci.get('tuned'))} | {_ci(ci.get('delta'))} |")
    lines += ["", _contamination_line(result["contamination"]), ""]
    if result["format"] == "mcq":
        lines += [f"Chance accuracy: {_fmt(result['chance'])}. Options are shuffled per item with the seed; "
                  "`accuracy` picks by summed log-likelihood, the `_norm` rows per token / per character.", ""]
    if result.get("per_project"):
        lines += ["| project | n | ROUGE-L base | ROUGE-L tuned | perplexity base | perplexity tuned |",
                  "|---|---:|---:|---:|---:|---:|"]
        for project, row in result["per_project"].items():
            lines.append(f"| {project} | {row['n']} | {_fmt(row['rouge_l']['base'])} | {_fmt(row['rouge_l']['tuned'])}"
                         f" | {_fmt(row['perplexity']['base'], 2)} | {_fmt(row['perplexity']['tuned'], 2)} |")
        lines.append("")
    return lines


def _quote(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > SNIPPET_CHARS:
        text = text[:SNIPPET_CHARS] + " …"
    return text.replace("|", "\\|") or "(empty)"


def _examples(predictions: Sequence[dict[str, Any]], prefer: str) -> list[str]:
    """Five predictions (by qa_id) of the preferred set, else the first set: base and tuned side by side."""
    if not predictions:
        return []
    names = {p["set"] for p in predictions}
    chosen_set = prefer if prefer in names else predictions[0]["set"]
    chosen = [p for p in predictions if p["set"] == chosen_set][:N_EXAMPLES]
    lines = [f"## Example predictions ({chosen_set})", ""]
    for p in chosen:
        lines += [f"**{p['qa_id']}** ({p['project']})", "",
                  f"- question: {_quote(p['question'])}",
                  f"- reference: {_quote(p['reference'])}",
                  f"- base (ROUGE-L {_fmt(p['rouge_l_base'], 3)}): {_quote(p['base'])}",
                  f"- tuned (ROUGE-L {_fmt(p['rouge_l_tuned'], 3)}): {_quote(p['tuned'])}", ""]
    return lines


def render_report(report: dict[str, Any], predictions: Sequence[dict[str, Any]], plot_links: Sequence[str]) -> str:
    config = report.get("config", {})
    lines = ["# Evaluation: base vs fine-tuned", "",
             "Base = models/base, tuned = the same weights + models/adapter. ROUGE-L is mean per-example F1 "
             "(stemmed); BLEU and chrF are corpus-level sacrebleu scores (0-100); perplexity covers the reference "
             "answer's assistant tokens only; 95 % CIs are percentile bootstraps (the Δ CI resamples pairs).", "",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(config.items())) + f", device={report.get('device')}.",
             "", "## Summary", "",
             "| set | n | metric | base | tuned | Δ | Δ 95 % CI | contaminated |", "|---|---:|---|---:|---:|---:|---|---:|"]
    for name, result in report["sets"].items():
        key = "rouge_l" if result["format"] == "qa" else "accuracy"
        row = result["metrics"][key]
        lines.append(f"| {name} | {result['n']} | {key} | {_fmt(row['base'])} | {_fmt(row['tuned'])} | "
                     f"{_fmt(row['delta'])} | {_ci((row.get('ci95') or {}).get('delta'))} | "
                     f"{100 * result['contamination']['share']:.1f} % |")
    lines.append("")
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

"""Time the markdown cleaner on pathological markup at growing sizes and print a table: linear or not.

    python benchmarks/pathological_markup.py [--sizes 5,10,20,40,80] [--repeat 3]

Each case repeats one hostile unit (the issue's repeated Hugo shortcode, unclosed shortcodes and comments,
nested brackets, JSX-like tags) up to each size in KB and runs the cleaner unify uses on it
(`stages.common.text.clean_markdown`, MDX mode on). The last column is time per KB divided by the time per KB
at the smallest size: about 1 everywhere means linear time; the old regex cleaner took 48 s on 20 KB.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from stages.common.text import clean_markdown  # noqa: E402

CASES = {
    "hugo shortcode (issue)": '{{< note >}}\nA {{< glossary_tooltip text="Pod" term_id="pod" >}} line.\n',
    "unclosed shortcode": "{{< note ",
    "unclosed mermaid pair": "{{< mermaid >}} graph ",
    "unclosed highlight pair": "{{< highlight go >}}\nx := 1\n",
    "unclosed html comment": "<!-- x ",
    "nested brackets/links": "[a](b(c)[",
    "jsx-like tags": '<Tabs a="1" b={x} ',
    "mdx comment": "{/* x ",
    "emphasis run": "*a **b _c ",
    "long table": "| a | b |\n|---|---|\n| `x` | [y](z) |\n",
}


def time_case(unit: str, size_kb: int, repeat: int) -> float:
    text = unit * max(1, size_kb * 1024 // len(unit))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        clean_markdown(text, mdx=True)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5,10,20,40,80", help="sizes in KB (default: 5,10,20,40,80)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs per cell (default: 3)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    header = ["case"] + [f"{s} KB (s)" for s in sizes] + [f"per-KB ratio {sizes[-1]}/{sizes[0]} KB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name, unit in CASES.items():
        times = [time_case(unit, s, args.repeat) for s in sizes]
        ratio = (times[-1] / sizes[-1]) / max(times[0] / sizes[0], 1e-9)
        print("| " + " | ".join([name] + [f"{t:.3f}" for t in times] + [f"{ratio:.2f}"]) + " |")


if __name__ == "__main__":
    main()

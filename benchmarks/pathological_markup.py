"""Time the markdown cleaner on pathological markup at growing sizes and print a table: linear or not.

    python benchmarks/pathological_markup.py [--sizes 10,20,40,80,160] [--repeat 3]

Each case repeats one hostile unit (the issue's repeated Hugo shortcode, unclosed shortcodes and comments,
nested brackets, JSX-like tags) up to each size in KB and runs the cleaner unify uses on it
(`stages.common.text.clean_markdown`, MDX mode on), timing CPU seconds (a busy shared machine does not bend the
curve). The last column is the growth exponent between the smallest and largest size, log(t2/t1)/log(s2/s1):
1 means linear time, 2 quadratic, 3 cubic (the old regex cleaner: 48 s on the issue's 20 KB case).
"""

from __future__ import annotations

import argparse
import math
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
        start = time.process_time()
        clean_markdown(text, mdx=True)
        best = min(best, time.process_time() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,20,40,80,160", help="sizes in KB (default: 10,20,40,80,160)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs per cell (default: 3)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    header = ["case"] + [f"{s} KB (CPU s)" for s in sizes] + [f"growth exponent {sizes[0]}->{sizes[-1]} KB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name, unit in CASES.items():
        times = [time_case(unit, s, args.repeat) for s in sizes]
        exponent = math.log(max(times[-1], 1e-6) / max(times[0], 1e-6)) / math.log(sizes[-1] / sizes[0])
        shown = f"{exponent:.2f}" if times[0] >= 0.002 else "n/a (too fast to time)"
        print("| " + " | ".join([name] + [f"{t:.3f}" for t in times] + [shown]) + " |")


if __name__ == "__main__":
    main()

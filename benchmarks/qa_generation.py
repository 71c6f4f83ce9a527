"""Benchmark qa_gen's llm generation: length-sorted batches vs one prompt at a time, same model, same chunks.

    python benchmarks/qa_generation.py                      # tiny random model from tests/fakes/tiny_model.py
    python benchmarks/qa_generation.py --model models/base --chunks data/langfilter/chunks.jsonl -n 16

Prints a table (seconds, chunks/s, generated tokens/s) and the batched/one-by-one ratio. Why it matters: on a CPU
the per-step Python and kernel-launch overhead of `generate` dominates for small models, and batching pays it
once per batch instead of once per chunk.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from stages.common.jsonl import read_jsonl  # noqa: E402
from stages.qa_gen.llm import TransformersGenerator, build_messages, length_sorted_batches, render_prompt  # noqa: E402

log = logging.getLogger("benchmarks.qa_generation")
CORPUS = REPO_ROOT.parent / "shared" / "corpus"


def load_chunks(path: Path | None, n: int) -> list[dict[str, Any]]:
    """The first n prose chunks of a chunks.jsonl, else corpus-shaped chunks of the shared corpus."""
    if path and path.is_file():
        chunks = [c for c in read_jsonl(path) if c.get("kind") not in ("yaml", "json")]
    else:
        from tests.test_qa_gen_helpers import corpus_chunks

        chunks = [c for c in corpus_chunks(CORPUS, projects={"Prometheus"}) if c["kind"] == "markdown"]
    chunks = [c for c in chunks if int(c.get("n_words") or 0) >= 40]
    return sorted(chunks, key=lambda c: c["chunk_id"])[:n]


def run(
    gen: TransformersGenerator, prompts: list[str], batch_size: int, max_new_tokens: int
) -> tuple[float, int]:
    """(seconds, generated tokens) for all prompts in length-sorted batches of `batch_size`."""
    lengths = [gen.n_tokens(p) for p in prompts]
    gen.new_tokens = 0
    start = time.perf_counter()
    for batch in length_sorted_batches(lengths, batch_size):
        gen.generate([prompts[i] for i in batch], max_new_tokens)
    return time.perf_counter() - start, gen.new_tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="", help="local causal LM dir (default: build the tiny test model)"
    )
    parser.add_argument("--chunks", type=Path, default=REPO_ROOT / "data" / "langfilter" / "chunks.jsonl")
    parser.add_argument("-n", "--num-chunks", type=int, default=32)
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[8, 16],
        help="batched modes to compare with one-by-one (default: 8, the params value, and 16)",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per mode; the fastest counts (shared CPU)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=384, help="default: qa_gen.llm.max_new_tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if not model_dir:
            from tests.fakes.tiny_model import build_tiny_model, corpus_text

            model_dir = str(
                build_tiny_model(Path(tmp) / "tiny", corpus_text(CORPUS / "repos" / "prometheus__docs"))
            )
        gen = TransformersGenerator(model_dir)
        chunks = load_chunks(args.chunks, args.num_chunks)
        prompts = [render_prompt(gen.tokenizer, build_messages(c, 2)) for c in chunks]
        prompt_tokens = sum(gen.n_tokens(p) for p in prompts) / max(1, len(prompts))
        run(gen, prompts[:2], 2, 4)  # warm-up: first calls allocate and compile kernels
        rows = []
        modes = [("one-by-one", 1)] + [(f"batched ({b})", b) for b in args.batch_sizes]
        for label, batch_size in modes:
            seconds, tokens = min(
                run(gen, prompts, batch_size, args.max_new_tokens) for _ in range(max(1, args.repeats))
            )
            rows.append((label, seconds, len(prompts) / seconds, tokens / seconds, tokens))
    print(
        f"\nmodel: {args.model or 'tiny random Llama (tests/fakes/tiny_model.py)'}   chunks: {len(prompts)}   "
        f"prompt tokens (mean): {prompt_tokens:.0f}   max_new_tokens: {args.max_new_tokens}   "
        f"torch threads: {args.threads}"
    )
    print(f"{'mode':<16}{'seconds':>10}{'chunks/s':>11}{'tokens/s':>11}{'tokens':>9}{'ratio':>8}")
    for label, seconds, cps, tps, tokens in rows:
        print(f"{label:<16}{seconds:>10.2f}{cps:>11.2f}{tps:>11.1f}{tokens:>9d}{cps / rows[0][2]:>7.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Ask the tuned model a question; it answers from retrieved documentation excerpts and cites them.

    python -m stages.ask "How do I roll back a Helm release?"
    python -m stages.ask --closed-book "What is a Pod?"
    python -m stages.ask --json --k 5 "Which port does etcd listen on for clients?"

The answer streams as it is written, followed by its numbered sources (URL, project, licence). This is the same
inference core (stages.common.inference) that eval measures and that chat, serve and the web app use.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from stages.common.cli import StageError, run_cli, setup_logging
from stages.common.inference import Answer, Assistant, GenerationOptions

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stages.ask", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("question", nargs="+", help="the question (quote it, or pass several words)")
    p.add_argument("--closed-book", action="store_true", help="answer without retrieval")
    p.add_argument("--k", type=int, default=None, help="excerpts to retrieve (default: inference.k)")
    p.add_argument("--json", action="store_true", help="print one JSON object (answer, sources, token counts)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: inference.max_new_tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--base-only", action="store_true", help="the base model, without the adapter")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--base-dir", default="models/base")
    p.add_argument("--adapter-dir", default="models/adapter")
    p.add_argument("--index-dir", default="data/index")
    p.add_argument("--log-level", default="WARNING")
    return p


def render_sources(answer: Answer) -> str:
    lines = [f"[{s.n}] {s.title or s.url}\n    {s.url}\n    {s.project} · {s.license or 'licence unknown'}"
             for s in answer.sources]
    return ("\n\nSources:\n" + "\n".join(lines)) if lines else "\n\n(closed-book: no sources)"


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    setup_logging(args.log_level)
    question = " ".join(args.question).strip()
    if not question:
        raise StageError("empty question")
    if args.k is not None and not 1 <= args.k <= 20:
        raise StageError(f"--k {args.k}: must be between 1 and 20")
    assistant = Assistant.from_params(args.params, base_dir=args.base_dir, adapter_dir=args.adapter_dir,
                                      index_dir=args.index_dir, use_adapter=not args.base_only)
    defaults = assistant.default_options()
    options = GenerationOptions(max_new_tokens=args.max_new_tokens or defaults.max_new_tokens,
                                temperature=args.temperature, seed=args.seed,
                                repetition_penalty=defaults.repetition_penalty)
    if args.json:
        answer = assistant.answer(question, closed_book=args.closed_book, k=args.k, options=options)
        print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2))
        return
    final: Answer | None = None
    for piece in assistant.stream(question, closed_book=args.closed_book, k=args.k, options=options):
        if isinstance(piece, Answer):
            final = piece
        else:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if final is not None:
        print(render_sources(final))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

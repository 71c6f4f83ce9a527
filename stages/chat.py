"""Chat with the tuned model in the terminal: answers stream as they are written and cite numbered sources.

    python -m stages.chat                          # interactive; /help lists the commands
    python -m stages.chat --once "What is a Pod?"  # one answer, then exit (scripts)
    echo "What is a Pod?" | python -m stages.chat --once -

Commands: /reset (forget the conversation), /sources (the excerpts behind the last answer), /closed-book
(toggle retrieval), /help, /quit. Earlier turns stay in the conversation while they fit the model's context
(the inference core drops the oldest first). Reads models/base, models/adapter, data/index.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO

from stages.common.cli import StageError, run_cli, setup_logging, stage_parser

log = logging.getLogger(__name__)

MAX_HISTORY_MESSAGES = 40  # beyond this the core would drop them anyway; keeps memory bounded
HELP = ("/reset  forget the conversation\n/sources  the excerpts behind the last answer\n"
        "/closed-book  toggle retrieval (now {state})\n/quit  leave")


class ChatSession:
    """One conversation: history, the last answer's sources, the retrieval switch."""

    def __init__(self, assistant: Any, out: TextIO, *, closed_book: bool = False, options: Any = None) -> None:
        self.assistant = assistant
        self.out = out
        self.closed_book = closed_book
        self.options = options or assistant.default_options()
        self.history: list[dict[str, str]] = []
        self.last_sources: list[Any] = []

    def ask(self, question: str) -> Any:
        """Stream the answer to `question` (with the history) to `out`; returns the final Answer."""
        from stages.common.inference import Answer, format_sources
        from stages.common.streaming import cancellable_stream, trimmed

        conversation = [*self.history, {"role": "user", "content": question}]
        cancel = threading.Event()
        answer = None
        stream = trimmed(cancellable_stream(self.assistant, conversation, closed_book=self.closed_book, k=None,
                                            options=self.options, cancel=cancel))
        try:
            for item in stream:
                if isinstance(item, Answer):
                    answer = item
                else:
                    self.out.write(item)
                    self.out.flush()
        except KeyboardInterrupt:
            stream.close()  # stops generate at its next token
            self.out.write("\n(interrupted)\n")
            return None
        assert answer is not None
        self.out.write(format_sources(answer.sources) + "\n")
        self.out.flush()
        self.history = [*conversation, {"role": "assistant", "content": answer.text}][-MAX_HISTORY_MESSAGES:]
        self.last_sources = list(answer.sources)
        return answer

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        name = line.strip().split()[0].lower()
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.history, self.last_sources = [], []
            self.out.write("(conversation cleared)\n")
        elif name == "/sources":
            if not self.last_sources:
                self.out.write("(no sources: ask a question with retrieval on first)\n")
            for s in self.last_sources:
                words = s.text.split()
                excerpt = " ".join(words[:60]) + (" …" if len(words) > 60 else "")
                self.out.write(f"[{s.n}] {s.title} - {s.url} ({s.project}, {s.license})\n    {excerpt}\n")
        elif name == "/closed-book":
            self.closed_book = not self.closed_book
            self.out.write(f"(retrieval {'off: closed-book' if self.closed_book else 'on'})\n")
        elif name == "/help":
            self.out.write(HELP.format(state="closed-book" if self.closed_book else "retrieval on") + "\n")
        else:
            self.out.write(f"(unknown command {name}; /help lists them)\n")
        self.out.flush()
        return True


def repl(session: ChatSession, lines: TextIO, interactive: bool) -> None:
    """Read questions and commands line by line until /quit or end of input."""
    while True:
        if interactive:
            session.out.write("\n> ")
            session.out.flush()
        line = lines.readline()
        if not line:
            return
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not session.command(line):
                return
            continue
        session.ask(line)


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--once", metavar="QUESTION", help="answer one question and exit ('-' reads it from stdin)")
    parser.add_argument("--closed-book", action="store_true", help="start with retrieval off")
    parser.add_argument("--max-tokens", type=int, default=0, help="answer length cap (default: params inference)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible answers)")
    parser.add_argument("--base", default="models/base", help="base model dir")
    parser.add_argument("--adapter", default="models/adapter", help="LoRA adapter dir")
    parser.add_argument("--index", default="data/index", help="retrieval index dir (missing = closed-book)")
    parser.add_argument("--base-only", action="store_true", help="chat with the base model (no adapter)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level if args.log_level != "INFO" else "WARNING")  # the answer is the output
    question = None
    if args.once is not None:
        question = sys.stdin.read() if args.once == "-" else args.once
        if not question.strip():
            raise StageError("--once needs a non-empty question")
    if args.max_tokens < 0 or not 0 <= args.temperature <= 2:
        raise StageError("--max-tokens must be positive and --temperature in [0, 2]")
    from dataclasses import replace

    from stages.common.inference import Assistant

    assistant = Assistant.from_params(args.params, base_dir=args.base, adapter_dir=args.adapter,
                                      index_dir=args.index, use_adapter=not args.base_only)
    options = replace(assistant.default_options(), temperature=args.temperature, seed=args.seed)
    if args.max_tokens:
        options = replace(options, max_new_tokens=args.max_tokens)
    session = ChatSession(assistant, sys.stdout, closed_book=args.closed_book, options=options)
    if question is not None:
        session.ask(question.strip())
        return
    interactive = sys.stdin.isatty()
    if interactive:
        sys.stdout.write(f"cncf-llm chat ({', '.join(f'{k} {v}' for k, v in assistant.versions.items())}); "
                         "/help for commands\n")
    repl(session, sys.stdin, interactive)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

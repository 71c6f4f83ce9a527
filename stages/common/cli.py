"""One entry-point shape for every stage: --params, --log-level, one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from stages.common.params import ParamsError

log = logging.getLogger("cncf_llm")


class StageError(Exception):
    """A failure the user can act on (bad input, offline, missing file): printed as one line, exit 1."""


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    # Libraries that log every request or file at INFO drown the stage's own story.
    for noisy in ("urllib3", "filelock", "httpx", "scrapy", "trafilatura", "datasets", "fsspec"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def stage_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default: INFO)")
    return parser


LIBRARY_CACHES = {"MPLCONFIGDIR": ".cache/matplotlib"}  # matplotlib's font cache would land in ~/.cache


def contain_library_caches() -> None:
    """Point library caches that default to HOME at folders under the project's .cache/ (unless set)."""
    for variable, folder in LIBRARY_CACHES.items():
        if not os.environ.get(variable):
            os.environ[variable] = str(Path(folder).resolve())


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a stage's main; user-fixable errors become one clear line and exit code 1.

    SIGTERM (`kill`, a CI timeout) unwinds like Ctrl-C, so process pools are terminated by their `with` blocks
    instead of being left behind as orphans.
    """
    with contextlib.suppress(ValueError):  # not the main thread (a test calling run_cli): leave signals alone
        signal.signal(signal.SIGTERM, _raise_interrupt)
    contain_library_caches()
    try:
        main(argv)
    except (StageError, ParamsError) as exc:
        if not logging.getLogger().handlers:
            setup_logging()
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0

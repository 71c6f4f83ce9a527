"""tqdm progress bars that stay quiet when stderr is not a terminal (CI logs), unless forced."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    disable = not sys.stderr.isatty() and os.environ.get("CNCF_LLM_PROGRESS") != "1"
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, mininterval=1.0)

"""Read params.yaml the way DVC sees it (after `dvc exp run -S ...` rewrote it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(Exception):
    """params.yaml is missing a key or holds a value of the wrong shape."""


def load_params(section: str | None = None, path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Return the whole params file, or one top-level section of it."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path} (run from the repository root or pass --params)")
    with path.open(encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    if section is None:
        return params
    if section not in params:
        raise ParamsError(f"section '{section}' missing from {path}")
    return params[section] or {}

"""Turn a params profile (configs/profiles/*.yaml, a partial params.yaml) into `dvc exp run -S key=value` flags.

    python -m stages.common.profiles configs/profiles/gemma2-2b-qlora-1gpu.yaml          # prints the flags
    python -m stages.common.profiles configs/profiles/gemma2-2b-qlora-1gpu.yaml --run    # dvc exp run <flags>

Why flags and not a second params file: `-S` records every changed value in the experiment (dvc exp show), and the
profile cannot introduce a key params.yaml does not have (a typo is refused in one line, before any run).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from stages.common.cli import StageError, run_cli


def flatten(profile: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mapping -> sorted (dotted.key, value); lists stay values."""
    items: list[tuple[str, Any]] = []
    for key in sorted(profile):
        value = profile[key]
        name = f"{prefix}{key}"
        items.extend(flatten(value, f"{name}.") if isinstance(value, dict) else [(name, value)])
    return items


def _lookup(params: dict[str, Any], dotted: str) -> bool:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def profile_flags(profile_path: Path, params_path: Path = Path("params.yaml")) -> list[str]:
    """`-S key=value` pairs for every leaf of the profile; each key must exist in params.yaml."""
    if not profile_path.is_file():
        raise StageError(f"profile not found: {profile_path}")
    profile = yaml.safe_load(profile_path.read_text(encoding="utf-8")) or {}
    params = yaml.safe_load(params_path.read_text(encoding="utf-8")) or {}
    if not isinstance(profile, dict):
        raise StageError(f"{profile_path}: a profile is a mapping of params sections")
    flags: list[str] = []
    for key, value in flatten(profile):
        if not _lookup(params, key):
            raise StageError(f"{profile_path}: {key} is not a key of {params_path}")
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        flags += ["-S", f"{key}={text}"]
    return flags


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", help="configs/profiles/<name>.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--run", action="store_true", help="exec `dvc exp run` with the flags (and any extra args)")
    args, extra = parser.parse_known_args(argv)
    flags = profile_flags(Path(args.profile), Path(args.params))
    if args.run:
        os.execvp("dvc", ["dvc", "exp", "run", *flags, *extra])
    print(" ".join(shlex.quote(flag) for flag in flags))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

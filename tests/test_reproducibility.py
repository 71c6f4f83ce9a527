"""Outputs must not depend on where things are installed: models/base is byte-identical across machines."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_base_model_bytes_do_not_depend_on_the_install_path(tiny_model_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The pinned models/base once differed between machines only by the venv path written into base_model.json."""
    from stages.base_model import build_base_model

    digests = []
    for machine in ("machine-a/deep/venv", "machine-b"):
        home = tmp_path / machine
        shutil.copytree(tiny_model_dir, home / "model")
        monkeypatch.chdir(home)
        build_base_model("model", home / "out")
        digests.append(tree_digest(home / "out"))
    assert digests[0] == digests[1]
    assert str(tmp_path) not in (tmp_path / "machine-b/out/base_model.json").read_text()

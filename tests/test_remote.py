"""The default DVC remote: `dvc push` from one clone, `dvc pull` in a fresh clone restores every output.

A tiny DAG (data/ and models/ outputs, a metric) in a repository that carries this project's own `.dvc/config`, so the
default remote (a folder beside the clone) and its `--local` override are what is tested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
DVC_YAML = """stages:
  prepare:
    cmd: python prepare.py
    deps: [prepare.py]
    outs: [data/prepare]
  fit:
    cmd: python fit.py
    deps: [fit.py, data/prepare]
    outs: [models/fit]
    metrics:
      - metrics/fit.json:
          cache: false
"""
PREPARE = "import pathlib\np = pathlib.Path('data/prepare')\np.mkdir(parents=True)\n(p / 'rows.jsonl').write_text('{}\\n')\n"
FIT = ("import json, pathlib\np = pathlib.Path('models/fit')\np.mkdir(parents=True)\n"
       "(p / 'weights.bin').write_bytes(bytes(range(256)) * 64)\npathlib.Path('metrics').mkdir(exist_ok=True)\n"
       "pathlib.Path('metrics/fit.json').write_text(json.dumps({'loss': 0.5}))\n")


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def make_env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "DVC_"))}
    bin_dir = str(Path(sys.executable).parent)
    return {**base, **GIT_ID, "HOME": str(tmp_path / "home"), "PATH": f"{bin_dir}{os.pathsep}{base['PATH']}"}


def test_push_then_pull_in_a_fresh_clone_restores_every_output(tmp_path: Path, repo_root: Path) -> None:
    env = make_env(tmp_path)
    origin = tmp_path / "work" / "origin"
    (origin / ".dvc").mkdir(parents=True)
    shutil.copy(repo_root / ".dvc" / "config", origin / ".dvc" / "config")
    shutil.copy(repo_root / ".dvc" / ".gitignore", origin / ".dvc" / ".gitignore")
    shutil.copy(repo_root / ".gitignore", origin / ".gitignore")
    (origin / "dvc.yaml").write_text(DVC_YAML)
    (origin / "prepare.py").write_text(PREPARE)
    (origin / "fit.py").write_text(FIT)
    sh(["git", "init", "-q"], origin, env)
    sh(["dvc", "repro"], origin, env)
    sh(["git", "add", "-A"], origin, env)
    sh(["git", "commit", "-qm", "pipeline"], origin, env)

    # The default remote is the folder beside the clone: ../dvc-remote.
    assert "../../dvc-remote" in (origin / ".dvc" / "config").read_text()
    sh(["dvc", "push"], origin, env)
    remote = tmp_path / "work" / "dvc-remote"
    assert remote.is_dir() and any(p.is_file() for p in remote.rglob("*"))

    clone = tmp_path / "work" / "clone"
    sh(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
    assert not (clone / "models" / "fit").exists()
    assert "not in cache" in sh(["dvc", "status"], clone, env)
    sh(["dvc", "pull"], clone, env)
    for rel in ("data/prepare/rows.jsonl", "models/fit/weights.bin"):
        assert (clone / rel).read_bytes() == (origin / rel).read_bytes(), rel
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], clone, env)
    assert "Running stage" not in sh(["dvc", "repro"], clone, env)

    # A per-clone override (`dvc remote modify --local`) sends pushes elsewhere, without touching .dvc/config.
    elsewhere = tmp_path / "scratch-remote"
    sh(["dvc", "remote", "modify", "--local", "shared", "url", str(elsewhere)], clone, env)
    sh(["dvc", "push"], clone, env)
    assert any(p.is_file() for p in elsewhere.rglob("*"))
    assert "scratch-remote" not in (clone / ".dvc" / "config").read_text()
    assert sh(["git", "status", "--porcelain"], clone, env).strip() == ""

"""End to end: the real `dvc` CLI over a copy of this repository, offline, on the shared corpus.

These are the runs a user makes: `dvc exp run -S scrape.source=mirror ...`, a second `dvc repro` that does nothing,
a param change that reruns only what depends on it, and the whole DAG down to eval with a tiny model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common.jsonl import read_jsonl

pytestmark = pytest.mark.slow

GIT_ID = {"GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@test", "GIT_COMMITTER_NAME": "e2e",
          "GIT_COMMITTER_EMAIL": "e2e@test"}


def copy_project(src: Path, dst: Path, env: dict[str, str]) -> Path:
    """What a fresh clone holds: tracked and untracked-not-ignored files, committed in a new git repo."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=src,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (src / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "fresh clone"]):
        subprocess.run(["git", *args], cwd=dst, check=True, env={**env, **GIT_ID}, capture_output=True)
    return dst


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-4000:]}"
    return output


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")  # no global git identity, no user config: a fresh machine
    bin_dir = str(Path(sys.executable).parent)
    base = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return {**base, "HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{base['PATH']}", "GITHUB_TOKEN": "ghp_e2eSecretTokenValue000000000000000"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo_root, env) -> Path:
    return copy_project(repo_root, tmp_path_factory.mktemp("project"), env)


def test_data_stages_reproduce_incrementally(project, corpus, env):
    c = corpus
    out = run(["dvc", "exp", "run", "-S", "scrape.source=mirror", "-S", f"scrape.mirror_dir={c}/repos",
               "-S", f"scrape.landscape_url={c}/landscape/landscape.yml", "langfilter"], project, env)
    assert ran_stages(out) == {"scrape", "unify", "langfilter"}
    kept = list(read_jsonl(project / "data/langfilter/chunks.jsonl"))
    assert len(kept) > 5000
    assert {r["lang"] for r in kept} == {"en"}
    projects = {r["project"] for r in kept}
    assert {"Kubernetes", "Prometheus", "Helm", "etcd", "CNCF TAG Security"} <= projects
    for stage in ("scrape", "unify", "langfilter"):
        assert json.loads((project / f"metrics/{stage}.json").read_text())

    again = run(["dvc", "repro", "langfilter"], project, env)
    assert ran_stages(again) == set(), again

    params = project / "params.yaml"
    text = params.read_text()
    assert "  min_confidence: 0.5 " in text
    params.write_text(text.replace("  min_confidence: 0.5 ", "  min_confidence: 0.6 ", 1))
    changed = run(["dvc", "repro", "langfilter"], project, env)
    assert ran_stages(changed) == {"langfilter"}

    # The token lent to the environment reaches no output, metric, param or lock file.
    token = env["GITHUB_TOKEN"]
    for path in [*project.glob("data/**/*.jsonl"), *project.glob("metrics/*.json"),
                 project / "params.yaml", project / "dvc.lock"]:
        if path.is_file():
            assert token not in path.read_text(encoding="utf-8", errors="replace"), path

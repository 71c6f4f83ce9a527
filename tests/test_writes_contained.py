"""The data stages write nothing outside data/, metrics/ and the configured caches (issue 10).

Every data stage runs through its real CLI in a scratch project folder with HOME (and XDG dirs) pointed at an
empty temporary folder. Afterwards HOME must still be empty and the project folder may hold only what was put
there (params.yaml, evalsets/, the mirror) plus data/, metrics/ and .cache/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

STAGES = ["stages.scrape", "stages.unify", "stages.langfilter", "stages.ner", "stages.qa_gen",
          "stages.stackoverflow", "stages.merge"]


def snapshot(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_data_stages_write_only_inside_data_metrics_and_caches(corpus: Path, repo_root: Path,
                                                               tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    shutil.copytree(corpus / "repos" / "k8sgpt-ai__docs", project / "mirror" / "k8sgpt-ai__docs")
    shutil.copytree(repo_root / "evalsets", project / "evalsets")
    replay = project / "replay"
    replay.mkdir()
    for page in (1, 2):
        shutil.copy(corpus / "stackexchange" / f"questions_kubernetes_page_{page:03d}.json", replay)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["scrape"].update(source="mirror", mirror_dir="mirror",
                            landscape_url=str(corpus / "landscape" / "landscape.yml"))
    params["stackoverflow"].update(source="dir", dir="replay")
    params["langfilter"]["ground_truth"] = ""  # the corpus manifest is not beside this scratch project
    params["unify"]["workers"] = params["langfilter"]["workers"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    before = snapshot(project)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(repo_root), "HOME": str(home),
           "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_DATA_HOME": str(home / ".local" / "share"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for module in STAGES:
        done = subprocess.run([sys.executable, "-m", module], cwd=project, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{module}: {done.stderr[-3000:]}"
    assert snapshot(home) == set(), f"written under HOME: {sorted(snapshot(home))[:10]}"
    new = snapshot(project) - before
    outside = sorted(p for p in new if p.split("/")[0] not in ("data", "metrics", ".cache"))
    assert outside == [], f"written outside data/, metrics/, .cache/: {outside[:10]}"
    assert (project / "data" / "merge" / "train.jsonl").stat().st_size > 0  # the chain really ran end to end

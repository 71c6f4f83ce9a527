"""Hostile names from outside: API ids and repo names, mirror trees that are links, FIFOs, undecodable names.

Each case reproduces a failure from issue 10: before the fix these wrote outside the output folders, read files
from outside the mirror, hung on a FIFO or crashed between swapping files/ and writing manifest.jsonl.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.common.fs import UnsafePathError, read_regular_file, resolve_under
from stages.common.jsonl import read_jsonl
from stages.scrape import store
from stages.scrape.landscape import github_repo
from stages.scrape.select import is_commit_id, is_github_owner, is_github_repo_name
from tests.fakes.github_server import FakeGitHub
from tests.test_scrape_github import make_repos, run, scrape_params

ESCAPE_SHA = "../../../../escaped"


def test_hostile_api_ids_and_names_stay_inside(repo_root: Path, tmp_path: Path) -> None:
    repos = make_repos()
    repos["kubernetes/website"].head_sha = ESCAPE_SHA
    repos["prometheus/docs"].head_sha = "/tmp/absolute-" + "a" * 30
    with FakeGitHub(repos, users={"k8sgpt-ai"}) as fake:
        fake.listing_extra["kubernetes"] = [{"name": "../../escape-docs"}, {"name": "x/../../../y-docs"},
                                            {"name": None}, "not-an-object", {"name": "d" * 101 + "-docs"}]
        params = scrape_params(repo_root, tmp_path, fake)
        metrics = run(params, tmp_path / "out")
    assert {p.name for p in tmp_path.iterdir()} <= {"out", "out_metrics.json", "cache", "landscape.yml"}
    cache = (tmp_path / "cache" / "github").resolve()
    assert all(p.parent == cache for p in cache.iterdir()), "every cache folder is a direct child"
    assert metrics["errors"]["repo_bad_response"] == 2  # the two repos with hostile commit ids, nothing else
    assert metrics["skipped"]["invalid_repo_name"] == 4
    assert metrics["skipped"]["invalid_repo_listing"] == 1
    records = list(read_jsonl(tmp_path / "out" / "manifest.jsonl"))
    repos_seen = {r["repo"] for r in records}
    assert "helm/helm-www" in repos_seen and "kubernetes/website" not in repos_seen
    for r in records:
        assert resolve_under(tmp_path / "out", r["local_path"]).is_file()


def test_name_rules() -> None:
    assert is_commit_id("0123456789abcdef0123456789abcdef01234567")
    for bad in ("0" * 39, "0" * 41, "G" * 40, ESCAPE_SHA, None, 12, "0" * 39 + "/"):
        assert not is_commit_id(bad)
    assert is_github_owner("kubernetes") and is_github_owner("k8sgpt-ai")
    for bad in ("", "-x", "a/b", "..", "a" * 40, "a b"):
        assert not is_github_owner(bad)
    assert is_github_repo_name("opentelemetry.io") and is_github_repo_name(".github")
    for bad in ("", ".", "..", "a/b", "a" * 101, "x\x00"):
        assert not is_github_repo_name(bad)
    assert github_repo("https://github.com/../../etc") is None
    assert github_repo("https://github.com/kubernetes/website.git") == ("kubernetes", "website")
    with pytest.raises(UnsafePathError):
        store.cache_folder(Path("c"), "kubernetes", "website", ESCAPE_SHA)
    with pytest.raises(UnsafePathError):
        resolve_under(Path("c"), "a/../../b")


def hostile_mirror(root: Path, outside: Path) -> Path:
    """A good tree, a tree that is a symlink to a folder outside, a FIFO named *.md, an undecodable file name."""
    (outside / "docs").mkdir(parents=True)
    (outside / "docs" / "secret.md").write_text("# Secret\nfrom outside the mirror\n")
    helm = root / "helm__helm-www" / "docs"
    helm.mkdir(parents=True)
    (helm / "intro.md").write_text("# Intro\nHelm charts.\n")
    os.mkfifo(helm / "pipe.md")
    os.mkfifo(root / "helm__helm-www" / "README.md")
    with open(os.path.join(os.fsencode(helm), b"bad-\xff-name.md"), "wb") as fh:  # not UTF-8 on disk
        fh.write(b"# bad name\n")
    (root / "prometheus__docs").symlink_to(outside, target_is_directory=True)
    return root


def test_hostile_mirror_is_contained_and_does_not_hang(repo_root: Path, corpus: Path, tmp_path: Path) -> None:
    mirror = hostile_mirror(tmp_path / "mirror", tmp_path / "outside")
    params = yaml.safe_load((repo_root / "params.yaml").read_text())["scrape"]
    params.update(source="mirror", mirror_dir=str(mirror), landscape_url=str(corpus / "landscape" / "landscape.yml"),
                  cache_dir=str(tmp_path / "cache"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"scrape": params}))
    cmd = [sys.executable, "-m", "stages.scrape", "--params", str(tmp_path / "params.yaml"),
           "--out-dir", str(tmp_path / "out"), "--metrics", str(tmp_path / "metrics.json")]
    done = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=120)  # a FIFO read would hang
    assert done.returncode == 0, done.stderr[-2000:]
    records = list(read_jsonl(tmp_path / "out" / "manifest.jsonl"))
    assert [(r["repo"], r["path"]) for r in records] == [("helm/helm-www", "docs/intro.md")]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["skipped"]["symlinked_tree"] == 1
    assert metrics["skipped"]["not_regular_file"] == 2
    assert metrics["skipped"]["undecodable_name"] == 1
    assert not list((tmp_path / "out").rglob("secret.md"))


def test_read_regular_file_refuses_fifo_and_symlink(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "real").write_bytes(b"ok")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert read_regular_file(tmp_path / "real") == b"ok"
    for name in ("fifo", "link"):
        with pytest.raises(UnsafePathError):
            read_regular_file(tmp_path / name)


def test_failed_run_keeps_previous_outputs_together(repo_root: Path, corpus: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while building the new files/ leaves the old files/, manifest and projects exactly as they were."""
    from stages.common.metrics import StageMetrics
    from stages.scrape.__main__ import run_scrape

    mirror = tmp_path / "mirror" / "helm__helm-www" / "docs"
    mirror.mkdir(parents=True)
    for i in range(3):
        (mirror / f"p{i}.md").write_text(f"# Page {i}\n")
    params = yaml.safe_load((repo_root / "params.yaml").read_text())["scrape"]
    params.update(source="mirror", mirror_dir=str(tmp_path / "mirror"), cache_dir=str(tmp_path / "cache"),
                  landscape_url=str(corpus / "landscape" / "landscape.yml"))
    out = tmp_path / "out"
    run_scrape(params, out, StageMetrics("scrape"))
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (mirror / "p3.md").write_text("# Page 3\n")
    calls = {"n": 0}
    real = store.read_regular_file

    def failing(path: Path, max_bytes: int | None = None) -> bytes:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(path, max_bytes)

    monkeypatch.setattr(store, "read_regular_file", failing)
    with pytest.raises(RuntimeError):
        run_scrape(params, out, StageMetrics("scrape"))
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
             if not p.relative_to(out).as_posix().startswith(".")}
    assert after == before

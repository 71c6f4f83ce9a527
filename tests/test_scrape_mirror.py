"""Mirror source: the shared corpus trees, plus a small synthetic mirror with every selection case."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from stages.common.jsonl import read_jsonl, sha256_file
from stages.common.metrics import StageMetrics
from stages.scrape.__main__ import main, run_scrape
from stages.scrape.mirror import detect_license, scan_tree, tree_commit
from tests.pinned_params import pinned

MANIFEST_FIELDS = {"project", "source", "url", "repo", "path", "commit", "license", "sha256", "bytes", "kind",
                   "local_path"}


def mirror_params(repo_root: Path, mirror_dir: Path, landscape: Path, cache: Path) -> dict:
    params = yaml.safe_load((repo_root / "params.yaml").read_text())["scrape"]
    params.update(source="mirror", mirror_dir=str(mirror_dir), landscape_url=str(landscape), cache_dir=str(cache))
    return params


@pytest.fixture(scope="module")
def corpus_run(corpus: Path, repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("mirror")
    params = mirror_params(repo_root, corpus / "repos", corpus / "landscape" / "landscape.yml", tmp / "cache")
    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump({"scrape": params}))
    main(["--params", str(params_file), "--out-dir", str(tmp / "out"), "--metrics", str(tmp / "metrics.json")])
    return tmp, params


def test_corpus_trees_map_to_projects(corpus_run: tuple[Path, dict], corpus: Path) -> None:
    tmp, _ = corpus_run
    records = list(read_jsonl(tmp / "out" / "manifest.jsonl"))
    projects = {r["repo"]: r["project"] for r in records}
    trees = sorted(p.name.replace("__", "/", 1) for p in (corpus / "repos").iterdir() if p.is_dir())
    assert sorted(projects) == trees, "every corpus tree must map to a project"
    assert projects["kubernetes/website"] == "Kubernetes"
    assert projects["kubernetes/community"] == "Kubernetes"
    assert projects["fluent/fluent-bit-docs"] == "Fluentd"
    assert projects["argoproj/argo-cd"] == "Argo"
    assert projects["k8sgpt-ai/docs"] == "K8sGPT"
    assert projects["cncf/tag-security"] == "CNCF TAG Security"
    metrics = json.loads((tmp / "metrics.json").read_text())
    assert metrics["repos"]["ok"] == len(trees)
    assert "unmatched_tree" not in metrics.get("skipped", {})
    assert metrics["files"]["pdf"] == 5 and metrics["files"]["markdown"] > 2000
    assert metrics["files"]["total"] == len(records)


def test_corpus_manifest_contract(corpus_run: tuple[Path, dict], corpus: Path) -> None:
    tmp, _ = corpus_run
    out = tmp / "out"
    records = list(read_jsonl(out / "manifest.jsonl"))
    assert [r["local_path"] for r in records] == sorted(r["local_path"] for r in records)
    with (corpus / "MANIFEST.csv").open(newline="") as fh:
        truth = {row["local_path"].removeprefix("repos/"): row["sha256"] for row in csv.DictReader(fh)}
    for r in records:
        assert set(r) == MANIFEST_FIELDS
        assert r["source"] == "mirror" and r["kind"] in {"markdown", "pdf", "yaml", "json"}
        assert r["url"] == f"https://github.com/{r['repo']}/blob/{r['commit']}/{r['path']}"
        assert r["local_path"] == f"files/{r['repo'].replace('/', '__')}/{r['path']}"
        assert len(r["commit"]) == 40
    for r in records[::97]:  # spot-check content against the file and the corpus's own manifest
        assert sha256_file(out / r["local_path"]) == r["sha256"] == truth[r["local_path"].removeprefix("files/")]
    pdf = next(r for r in records if r["kind"] == "pdf")
    assert (out / pdf["local_path"]).read_bytes()[:5] == b"%PDF-"
    assert (out / "landscape.yml").read_bytes() == (corpus / "landscape" / "landscape.yml").read_bytes()
    assert {r["project"] for r in read_jsonl(out / "projects.jsonl")} >= {r["project"] for r in records}


def test_corpus_run_is_deterministic(corpus_run: tuple[Path, dict], tmp_path: Path) -> None:
    tmp, params = corpus_run
    run_scrape(params, tmp_path / "again", StageMetrics("scrape"))
    for name in ("manifest.jsonl", "projects.jsonl"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp / "out" / name).read_bytes()


def make_mirror(root: Path) -> Path:
    """Trees exercising each rule: git checkout, LICENSE, excluded dir, symlink, big file, unmatched tree."""
    helm = root / "helm__helm-www"
    (helm / "docs" / "vendor").mkdir(parents=True)
    (helm / "docs" / "intro.md").write_text("# Intro\nHelm charts.\n")
    (helm / "docs" / "vendor" / "lib.md").write_text("vendored\n")
    (helm / "docs" / "logo.png").write_bytes(b"\x89PNG")
    (helm / "docs" / "big.md").write_text("x" * 2000)
    (helm / "LICENSE").write_text("MIT License\n\nPermission is hereby granted, free of charge, to any person")
    (helm / "docs" / "escape.md").symlink_to("/etc/passwd")
    prom = root / "prometheus__docs"
    (prom / "docs").mkdir(parents=True)
    (prom / "docs" / "a.yaml").write_text("a: 1\n")
    subprocess.run(["git", "init", "-q", str(prom)], check=True)
    git = ["git", "-C", str(prom), "-c", "user.name=t", "-c", "user.email=t@e", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    (root / "nobody__things" / "docs").mkdir(parents=True)
    (root / "nobody__things" / "docs" / "x.md").write_text("# x\n")
    return root


def test_synthetic_mirror_rules(repo_root: Path, corpus: Path, tmp_path: Path,
                                caplog: pytest.LogCaptureFixture) -> None:
    mirror = make_mirror(tmp_path / "mirror")
    params = mirror_params(repo_root, mirror, corpus / "landscape" / "landscape.yml", tmp_path / "cache")
    params["max_file_bytes"] = 1000
    params["licenses"] = {"helm/helm-www": "CC-BY-4.0"}  # a declared docs licence beats the LICENSE file
    metrics = StageMetrics("scrape")
    records = run_scrape(params, tmp_path / "out", metrics)
    by_path = {(r["repo"], r["path"]): r for r in records}
    assert sorted(by_path) == [("helm/helm-www", "docs/intro.md"), ("prometheus/docs", "docs/a.yaml")]
    assert by_path[("helm/helm-www", "docs/intro.md")]["license"] == "CC-BY-4.0"
    assert by_path[("prometheus/docs", "docs/a.yaml")]["license"] == "unknown"
    params["licenses"] = {}
    records = run_scrape(params, tmp_path / "out2", StageMetrics("scrape"))
    assert {r["path"]: r["license"] for r in records}["docs/intro.md"] == "MIT"  # detected from LICENSE
    head = subprocess.run(["git", "-C", str(mirror / "prometheus__docs"), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert by_path[("prometheus/docs", "docs/a.yaml")]["commit"] == head
    counts = metrics.as_dict()
    assert counts["skipped"] == {"excluded_dir": 1, "extension": 2,  # logo.png, LICENSE
                                 "too_large": 1, "unsafe_path": 1,
                                 "unmatched_tree": 1}
    assert "nobody__things" in caplog.text
    assert not list((tmp_path / "out").rglob("passwd"))


def test_content_hash_commit_is_stable(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.md").write_text("one")
    params = {**pinned("scrape"), "extensions": ["md"], "exclude_dirs": [], "max_file_bytes": 0}
    paths, _ = scan_tree(tmp_path, params)
    first = tree_commit(tmp_path, paths)
    assert first == tree_commit(tmp_path, paths) and len(first) == 40
    (tmp_path / "a" / "x.md").write_text("two")
    assert tree_commit(tmp_path, paths) != first


def test_detect_license() -> None:
    assert detect_license("                                 Apache License\n  Version 2.0, January 2004") == "Apache-2.0"
    assert detect_license("Creative Commons Attribution 4.0 International Public License") == "CC-BY-4.0"
    assert detect_license("Permission is hereby granted, free of charge, to any person obtaining") == "MIT"
    assert detect_license("All rights reserved.") is None

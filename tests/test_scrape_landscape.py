"""Landscape parsing and project selection, on the real landscape.yml of the shared corpus."""

from __future__ import annotations

import http.server
import threading
from functools import partial
from pathlib import Path

import pytest

from stages.common.cli import StageError
from stages.scrape.landscape import (
    github_repo,
    load_landscape_bytes,
    parse_items,
    project_repos,
    select_projects,
)
from tests.pinned_params import pinned

# the whole pinned scrape section (every key is required), with the selection this test file is about spelt out
DEFAULTS = {**pinned("scrape"), "maturity": ["graduated", "incubating"], "categories": [], "allow": [], "deny": [],
            "max_projects": 0,
            "repo_projects": {"cncf/tag-security": "CNCF TAG Security", "k8sgpt-ai/docs": "K8sGPT"}}


@pytest.fixture(scope="module")
def items(corpus: Path) -> list[dict]:
    return parse_items((corpus / "landscape" / "landscape.yml").read_bytes())


def by_name(records: list[dict]) -> dict[str, dict]:
    return {r["project"]: r for r in records}


def test_parse_reads_real_fields_not_marker_keys(items: list[dict]) -> None:
    names = by_name(items)
    assert len(items) > 1000
    assert len(names) == len(items), "a project listed in two categories must appear once"
    k8s = names["Kubernetes"]
    assert k8s["maturity"] == "graduated"
    assert k8s["repo_url"] == "https://github.com/kubernetes/kubernetes"
    assert k8s["category"] == "Orchestration & Management"
    assert k8s["stack_overflow_url"] == "https://stackoverflow.com/questions/tagged/kubernetes"
    assert names["Karmada"]["maturity"] == "incubating"
    assert all(set(r) == {"project", "category", "subcategory", "maturity", "repo_url", "homepage_url", "docs_url",
                          "license", "description", "stack_overflow_url", "additional_repos"} for r in items)
    assert any(r["docs_url"] for r in items)
    assert any(r["additional_repos"] for r in items)
    assert None not in {r["category"] for r in items}


def test_default_selection(items: list[dict]) -> None:
    selected = by_name(select_projects(items, DEFAULTS))
    for name in ("Kubernetes", "Prometheus", "Helm", "Karmada", "Fluentd", "Argo", "etcd"):
        assert name in selected
    assert selected["Helm"]["maturity"] == "graduated"
    assert "Akri" not in selected  # sandbox
    assert selected["K8sGPT"]["maturity"] == "sandbox"  # pulled in by repo_projects
    tag = selected["CNCF TAG Security"]
    assert tag["maturity"] == "n/a" and tag["repo_url"] == "https://github.com/cncf/tag-security"
    assert {r["maturity"] for r in selected.values()} == {"graduated", "incubating", "sandbox", "n/a"}
    assert list(selected) == sorted(selected)


def test_filters_allow_deny_cap(items: list[dict]) -> None:
    params = dict(DEFAULTS, repo_projects={}, max_projects=3, allow=["Akri"], deny=["Argo"])
    names = [r["project"] for r in select_projects(items, params)]
    assert "Argo" not in names and "Akri" in names
    assert len(names) == 4
    only_obs = dict(DEFAULTS, repo_projects={}, categories=["Observability and Analysis"])
    cats = {r["category"] for r in select_projects(items, only_obs)}
    assert cats == {"Observability and Analysis"}


def test_github_repo_parsing() -> None:
    assert github_repo("https://github.com/helm/helm") == ("helm", "helm")
    assert github_repo("https://github.com/helm/helm.git/") == ("helm", "helm")
    assert github_repo("https://gitlab.com/a/b") is None
    assert github_repo("https://github.com/helm") is None
    project = {"repo_url": "https://github.com/a/b", "additional_repos": ["https://github.com/a/c",
                                                                          "https://github.com/a/b"]}
    assert project_repos(project) == [("a", "b"), ("a", "c")]


def test_landscape_from_local_url_and_bad_inputs(corpus: Path, tmp_path: Path) -> None:
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(corpus / "landscape"))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/landscape.yml"
        assert load_landscape_bytes(url) == (corpus / "landscape" / "landscape.yml").read_bytes()
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(StageError, match="not found"):
        load_landscape_bytes(str(tmp_path / "missing.yml"))
    bad = tmp_path / "bad.yml"
    bad.write_text("just: [a, list\n")
    with pytest.raises(StageError, match="not valid YAML"):
        parse_items(bad.read_bytes())

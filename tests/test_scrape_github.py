"""GitHub source against the local fake server: discovery, selection, cache/resume, faults, token hygiene."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stages.common.jsonl import read_jsonl, sha256_file
from stages.common.metrics import StageMetrics
from stages.scrape import github as github_mod
from stages.scrape.__main__ import run_scrape
from tests.fakes.github_server import FakeGitHub, FakeRepo

TOKEN = "fake-github-token-0123456789abcdef"
HUGE = {"path": "docs/huge.pdf", "type": "blob", "size": 200_000_000, "sha": "0" * 40, "mode": "100644"}
ESCAPE = {"path": "../../etc/passwd", "type": "blob", "size": 12, "sha": "1" * 40, "mode": "100644"}

LANDSCAPE = """
landscape:
  - category:
    name: Orchestration & Management
    subcategories:
      - subcategory:
        name: Scheduling & Orchestration
        items:
          - item:
            name: Kubernetes
            homepage_url: https://kubernetes.io/
            project: graduated
            repo_url: https://github.com/kubernetes/kubernetes
          - item:
            name: Sandy
            homepage_url: https://sandy.example/
            project: sandbox
            repo_url: https://github.com/sandy/sandy
  - category:
    name: Observability and Analysis
    subcategories:
      - subcategory:
        name: Observability
        items:
          - item:
            name: Prometheus
            homepage_url: https://prometheus.io/
            project: graduated
            repo_url: https://github.com/prometheus/prometheus
          - item:
            name: Helm
            homepage_url: https://helm.sh/
            project: graduated
            repo_url: https://github.com/helm/helm
          - item:
            name: etcd
            homepage_url: https://etcd.io/
            project: graduated
            repo_url: https://github.com/etcd-io/etcd
          - item:
            name: Fluentd
            homepage_url: https://www.fluentd.org/
            project: graduated
            repo_url: https://github.com/fluent/fluentd
          - item:
            name: Linkerd
            homepage_url: https://linkerd.io/
            project: incubating
            repo_url: https://github.com/linkerd/linkerd2
"""


def md(title: str, words: int = 20) -> bytes:
    return f"# {title}\n\n{' '.join(['word'] * words)}\n".encode()


def make_repos() -> dict[str, FakeRepo]:
    return {
        "kubernetes/kubernetes": FakeRepo({
            "README.md": md("Kubernetes"), "docs/design.md": md("Design"), "pkg/api/types.go": b"package api\n",
            "pkg/api/README.md": md("API"), "vendor/x/README.md": md("vendored"), "staging/notes.md": md("notes"),
        }, extra_entries=[ESCAPE, HUGE]),
        "kubernetes/website": FakeRepo({
            "README.md": md("Website"), "content/en/docs/concepts/pods.md": md("Pods", 200),
            "content/en/docs/concepts/nodes.md": md("Nodes", 100), "content/en/examples/pod.yaml": b"kind: Pod\n",
            "content/en/examples/ns.json": b'{"kind": "Namespace"}\n', "static/img.png": b"\x89PNG",
            "content/en/docs/tasks/run.md": md("Run"), "content/en/docs/tasks/debug.md": md("Debug"),
        }, license="CC-BY-4.0"),
        "kubernetes/community": FakeRepo({"README.md": md("Community")}),
        "kubernetes/api-docs": FakeRepo({"README.md": md("api docs"), "main.go": b"package main\n"}),
        "kubernetes/kubernetes.io": FakeRepo({"content/x.md": md("fork")}, fork=True),
        "prometheus/prometheus": FakeRepo({"README.md": md("Prometheus"), "documentation/storage.md": md("TSDB")}),
        "prometheus/docs": FakeRepo({"README.md": md("Docs"), "docs/introduction/overview.md": md("Overview"),
                                     "docs/audit.pdf": b"%PDF-1.4 fake\n"}, license=None),
        "helm/helm": FakeRepo({"README.md": md("Helm")}, license="MIT"),
        "helm/helm-www": FakeRepo({"docs/intro.md": md("Intro"), "i18n-old/x.md": md("old"),
                                   "docs/using helm.mdx": md("Using")}, license="MIT"),
        "etcd-io/etcd": FakeRepo({"README.md": md("etcd")}),
        "etcd-io/website": FakeRepo({"content/en/docs/v3.7/_index.md": md("etcd docs")}),
        "linkerd/linkerd2": FakeRepo({"README.md": md("Linkerd")}),
        "linkerd/website": FakeRepo({"linkerd.io/content/2.19/overview.md": md("Overview")}),
        "k8sgpt-ai/docs": FakeRepo({"docs/index.md": md("K8sGPT")}),
        "fluent/fluentd": FakeRepo({"README.md": md("Fluentd")}),
        "fluent/fluent-bit-docs": FakeRepo({f"section{i}/page.md": md(f"Page {i}") for i in range(12)}),
    }


def scrape_params(repo_root: Path, tmp: Path, fake: FakeGitHub) -> dict:
    params = yaml.safe_load((repo_root / "params.yaml").read_text())["scrape"]
    landscape = tmp / "landscape.yml"
    landscape.write_text(LANDSCAPE)
    params.update(source="github", landscape_url=str(landscape), cache_dir=str(tmp / "cache"))
    params["repo_projects"] = {"k8sgpt-ai/docs": "K8sGPT"}
    params["licenses"] = {}  # licences here come from the fake licence API (the override map is tested in mirror mode)
    params["github"] = dict(params["github"], api_url=fake.api_url, raw_url=fake.raw_url, concurrency=4,
                            max_retries=3, timeout=1.0, per_page=2, backoff_base=0.01, backoff_max=0.05)
    return params


def run(params: dict, out: Path) -> dict:
    metrics = StageMetrics("scrape")
    run_scrape(params, out, metrics)
    metrics.write(out.parent / f"{out.name}_metrics.json")
    return metrics.as_dict()


@pytest.fixture()
def fake() -> FakeGitHub:
    with FakeGitHub(make_repos(), users={"k8sgpt-ai"}) as server:
        yield server


def test_scrape_discovers_docs_repos_and_selects_files(fake: FakeGitHub, repo_root: Path, tmp_path: Path) -> None:
    params = scrape_params(repo_root, tmp_path, fake)
    metrics = run(params, tmp_path / "out")
    records = list(read_jsonl(tmp_path / "out" / "manifest.jsonl"))
    repos = {r["repo"]: r["project"] for r in records}
    assert repos == {
        "kubernetes/kubernetes": "Kubernetes", "kubernetes/website": "Kubernetes", "prometheus/docs": "Prometheus",
        "prometheus/prometheus": "Prometheus", "helm/helm": "Helm", "helm/helm-www": "Helm",
        "etcd-io/etcd": "etcd", "etcd-io/website": "etcd", "linkerd/linkerd2": "Linkerd",
        "linkerd/website": "Linkerd", "k8sgpt-ai/docs": "K8sGPT", "fluent/fluentd": "Fluentd",
        "fluent/fluent-bit-docs": "Fluentd"}  # a docs repo with its pages at the top level
    paths = {(r["repo"], r["path"]) for r in records}
    assert ("kubernetes/kubernetes", "docs/design.md") in paths
    assert ("kubernetes/kubernetes", "pkg/api/README.md") in paths
    assert ("kubernetes/kubernetes", "staging/notes.md") not in paths  # code repo: docs trees and READMEs only
    assert ("helm/helm-www", "docs/using helm.mdx") in paths
    assert ("kubernetes/website", "content/en/examples/ns.json") in paths
    assert not any(p.startswith("i18n-old/") or "vendor/" in p for _, p in paths)
    by_path = {(r["repo"], r["path"]): r for r in records}
    pods = by_path[("kubernetes/website", "content/en/docs/concepts/pods.md")]
    sha = fake.repos["kubernetes/website"].sha
    assert pods["commit"] == sha and pods["license"] == "CC-BY-4.0" and pods["source"] == "github"
    assert pods["url"] == f"https://github.com/kubernetes/website/blob/{sha}/content/en/docs/concepts/pods.md"
    assert sha256_file(tmp_path / "out" / pods["local_path"]) == pods["sha256"]
    assert by_path[("prometheus/docs", "docs/audit.pdf")]["kind"] == "pdf"
    assert by_path[("prometheus/docs", "README.md")]["license"] == "unknown"
    assert metrics["repos"]["ok"] == 13 and metrics["repos"]["not_docs"] == 1  # kubernetes/api-docs
    assert metrics["skipped"]["unsafe_path"] == 1 and metrics["skipped"]["too_large"] == 1
    assert metrics["skipped"]["excluded_dir"] == 2 and metrics["skipped"]["not_docs"] >= 1
    assert metrics["downloads"] == len(records) and metrics["files"]["total"] == len(records)
    assert fake.count(r"/orgs/k8sgpt-ai/repos") == 1 and fake.count(r"/users/k8sgpt-ai/repos") == 1
    assert fake.count(r"/orgs/kubernetes/repos") == 3  # per_page 2, five repos
    assert fake.count(r"huge\.pdf") == 0 and fake.count(r"passwd") == 0
    assert fake.count(r"kubernetes\.io") == 0  # a fork is not a docs repo


def test_rerun_costs_one_call_per_repo_and_is_deterministic(fake: FakeGitHub, repo_root: Path,
                                                            tmp_path: Path) -> None:
    params = scrape_params(repo_root, tmp_path, fake)
    first = run(params, tmp_path / "out1")
    fake.requests.clear()
    second = run(params, tmp_path / "out2")
    listing_calls = fake.count(r"^/api/(orgs|users)/")
    assert second["downloads"] == 0 and fake.count(r"^/raw/") == 0
    assert second["cache_hits"] == first["repos"]["ok"] + first["repos"]["not_docs"]
    assert second["api_calls"] == listing_calls + second["cache_hits"]
    assert fake.count(r"/commits/HEAD$") == second["cache_hits"]
    for name in ("manifest.jsonl", "projects.jsonl"):
        assert (tmp_path / "out1" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes()
    # A new commit in one repo: only that repo is fetched again.
    fake.repos["helm/helm-www"].files["docs/new.md"] = md("New")
    fake.requests.clear()
    third = run(params, tmp_path / "out3")
    assert {r.split("/")[2] + "/" + r.split("/")[3] for r in fake.requests if r.startswith("/raw/")} == {"helm/helm-www"}
    assert third["downloads"] == 1  # the new file; the two unchanged ones are copied from the old commit
    assert third["downloads_reused"] == 2
    assert len(list((tmp_path / "cache" / "github").glob("helm__helm-www@*"))) == 1  # old commit pruned
    assert ("helm/helm-www", "docs/new.md") in {(r["repo"], r["path"]) for r in read_jsonl(tmp_path / "out3" /
                                                                                           "manifest.jsonl")}


def test_killed_run_resumes_without_redownloading(fake: FakeGitHub, repo_root: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    params = scrape_params(repo_root, tmp_path, fake)
    total = run(dict(params, cache_dir=str(tmp_path / "reference_cache")), tmp_path / "reference")["downloads"]
    real_write = github_mod.write_cached_file
    written: list[str] = []

    def dying_write(folder: Path, path: str, data: bytes) -> None:
        if len(written) >= 9:
            raise KeyboardInterrupt("killed mid-scrape")
        real_write(folder, path, data)
        written.append(path)

    monkeypatch.setattr(github_mod, "write_cached_file", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run(params, tmp_path / "out")
    monkeypatch.setattr(github_mod, "write_cached_file", real_write)
    finished = len(list((tmp_path / "cache" / "github").glob("*/meta.json")))
    assert finished >= 1
    fake.requests.clear()
    resumed = run(params, tmp_path / "out")
    assert resumed["downloads"] == total - 9  # nothing that reached the cache is downloaded again
    assert resumed["cache_hits"] == finished  # finished repos: one commit lookup each, no tree, no files
    assert (tmp_path / "out" / "manifest.jsonl").read_bytes() == (tmp_path / "reference" / "manifest.jsonl").read_bytes()


def test_long_rate_limit_stops_the_api_calls(fake: FakeGitHub, repo_root: Path, tmp_path: Path) -> None:
    params = scrape_params(repo_root, tmp_path, fake)
    params["github"]["max_rate_limit_wait"] = 60
    params["discover_docs_repos"] = False
    fake.add_fault(r"/commits/HEAD", "403", times=99, reset_in=3600)
    metrics = run(params, tmp_path / "out")
    assert fake.count(r"/commits/HEAD") == 1  # the first refusal; no call per remaining repo
    assert metrics["errors"]["repo_rate_limit"] == 1
    assert metrics["repos"]["failed"] == metrics["errors"]["repo_rate_limit_skipped"] + 1 > 1
    assert (tmp_path / "out" / "manifest.jsonl").read_text() == ""


def assert_contained_and_clean(tmp_path: Path, records: list[dict], logs: str) -> None:
    """Nothing outside the output and cache folders; output == manifest; the token is nowhere."""
    assert {p.name for p in tmp_path.iterdir()} <= {"out", "out_metrics.json", "cache", "landscape.yml"}
    on_disk = {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out" / "files").rglob("*")
               if p.is_file()}
    assert on_disk == {r["local_path"] for r in records}
    assert not list(tmp_path.rglob("*passwd*"))
    assert TOKEN not in logs
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def truncated_tree(repos: dict[str, FakeRepo], fake: FakeGitHub) -> None:
    repos["kubernetes/website"].truncated = True


FAULTS = {  # name: (inject, check on metrics, a file that must still arrive)
    "429_retry_after": (lambda r, f: f.add_fault(r"/helm/helm-www/git/trees/", "429", retry_after=0),
                        lambda m: m["http"]["rate_limited"] == 1, ("helm/helm-www", "docs/intro.md")),
    "403_rate_limit_reset": (lambda r, f: f.add_fault(r"/prometheus/docs/commits/", "403", reset_in=0),
                             lambda m: m["http"]["rate_limited"] == 1, ("prometheus/docs", "docs/audit.pdf")),
    "500_then_ok": (lambda r, f: f.add_fault(r"^/raw/helm/helm/", "500", times=2),
                    lambda m: m["http"]["errors"]["http_500"] == 2, ("helm/helm", "README.md")),
    "500_gives_up": (lambda r, f: f.add_fault(r"/etcd-io/website/commits/", "500", times=10),
                     lambda m: m["repos"]["failed"] == 1 and m["errors"]["repo_retries"] == 1,
                     ("etcd-io/etcd", "README.md")),
    "slow_timeout": (lambda r, f: f.add_fault(r"^/raw/linkerd/website/", "slow", delay=1.6),
                     lambda m: m["http"]["errors"]["timeout"] == 1,
                     ("linkerd/website", "linkerd.io/content/2.19/overview.md")),
    "truncated_body": (lambda r, f: f.add_fault(r"^/raw/kubernetes/kubernetes/.*design\.md", "truncate"),
                       lambda m: m["http"]["errors"]["truncated"] == 1, ("kubernetes/kubernetes", "docs/design.md")),
    "truncated_tree": (truncated_tree, lambda m: m["truncated_trees"] == 1,
                       ("kubernetes/website", "content/en/docs/tasks/debug.md")),
    "unsafe_tree_entry": (lambda r, f: None, lambda m: m["skipped"]["unsafe_path"] == 1,
                          ("kubernetes/kubernetes", "README.md")),
    "200mb_file_in_tree": (lambda r, f: None, lambda m: m["skipped"]["too_large"] == 1,
                           ("kubernetes/kubernetes", "docs/design.md")),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_is_survived_and_counted(fault: str, repo_root: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    inject, check, must_have = FAULTS[fault]
    repos = make_repos()
    with FakeGitHub(repos, users={"k8sgpt-ai"}) as fake:
        inject(repos, fake)
        metrics = run(scrape_params(repo_root, tmp_path, fake), tmp_path / "out")
        assert set(fake.auth_headers) == {f"Bearer {TOKEN}"}
        assert fake.count(r"huge\.pdf") == 0 and fake.count(r"passwd") == 0
    assert check(metrics), metrics
    records = list(read_jsonl(tmp_path / "out" / "manifest.jsonl"))
    by_path = {(r["repo"], r["path"]): r for r in records}
    assert must_have in by_path
    got = (tmp_path / "out" / by_path[must_have]["local_path"]).read_bytes()
    assert got == repos[must_have[0]].files[must_have[1]]
    captured = capsys.readouterr()
    assert_contained_and_clean(tmp_path, records, caplog.text + captured.out + captured.err)


def test_all_faults_at_once(repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    repos = make_repos()
    with FakeGitHub(repos, users={"k8sgpt-ai"}) as fake:
        for inject, _, _ in FAULTS.values():
            inject(repos, fake)
        metrics = run(scrape_params(repo_root, tmp_path, fake), tmp_path / "out")
    for name, (_, check, _) in FAULTS.items():
        if name not in ("500_then_ok", "429_retry_after", "403_rate_limit_reset"):  # shared counters: below
            assert check(metrics), name
    assert metrics["http"]["errors"]["http_500"] == 2 + 4
    assert metrics["http"]["rate_limited"] == 2
    records = list(read_jsonl(tmp_path / "out" / "manifest.jsonl"))
    assert {p for repo, p in ((r["repo"], r["path"]) for r in records) if repo == "kubernetes/website"} == {
        "README.md", "content/en/docs/concepts/pods.md", "content/en/docs/concepts/nodes.md",
        "content/en/examples/pod.yaml", "content/en/examples/ns.json", "content/en/docs/tasks/run.md",
        "content/en/docs/tasks/debug.md"}
    assert not any(r["repo"] == "etcd-io/website" for r in records)
    captured = capsys.readouterr()
    assert_contained_and_clean(tmp_path, records, caplog.text + captured.out + captured.err)


@pytest.mark.parametrize("unreachable", ["landscape", "github_api"])
def test_offline_stops_fast_with_one_line(unreachable: str, repo_root: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    landscape = f"http://127.0.0.1:{port}/landscape.yml"
    if unreachable == "github_api":
        landscape = str(tmp_path / "landscape.yml")
        (tmp_path / "landscape.yml").write_text(LANDSCAPE)
    params["scrape"].update(source="github", landscape_url=landscape, cache_dir=str(tmp_path / "c"))
    params["scrape"]["github"]["api_url"] = f"http://127.0.0.1:{port}"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "stages.scrape", "--params", str(params_file), "--out-dir",
                           str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json"), "--log-level", "WARNING"],
                          cwd=repo_root, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GITHUB_TOKEN": TOKEN})
    assert proc.returncode == 1
    assert time.monotonic() - start < 20
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and TOKEN not in proc.stderr
    assert "scrape.source=mirror" in lines[0] and "scrape.landscape_url" in lines[0]
    assert f"127.0.0.1:{port}" in lines[0]
    assert json.loads((tmp_path / "m.json").read_text())["wall_seconds"] >= 0


def test_github_and_mirror_agree_on_corpus_trees(corpus: Path, repo_root: Path, tmp_path: Path) -> None:
    """The same trees served as GitHub repos and read as a mirror give the same files and bytes."""
    names = ["prometheus__docs", "helm__helm-www", "etcd-io__website"]
    fake_repos = FakeGitHub.from_dir(corpus / "repos", names=names).repos
    fake_repos["prometheus/prometheus"] = FakeRepo({"README.md": md("Prometheus")})
    fake_repos["helm/helm"] = FakeRepo({"README.md": md("Helm")})
    fake_repos["etcd-io/etcd"] = FakeRepo({"README.md": md("etcd")})
    with FakeGitHub(fake_repos) as fake:
        params = scrape_params(repo_root, tmp_path, fake)
        run(params, tmp_path / "gh")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in names:  # copied: a mirror tree that is a symlink is refused (it could point anywhere)
        shutil.copytree(corpus / "repos" / name, mirror / name, symlinks=True)
    run(dict(params, source="mirror", mirror_dir=str(mirror)), tmp_path / "mi")
    gh = {(r["repo"], r["path"]): r["sha256"] for r in read_jsonl(tmp_path / "gh" / "manifest.jsonl")
          if r["repo"].replace("/", "__") in names}
    mi = {(r["repo"], r["path"]): r["sha256"] for r in read_jsonl(tmp_path / "mi" / "manifest.jsonl")}
    assert len(mi) > 300 and gh == mi

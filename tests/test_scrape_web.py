"""Website crawl (scrapy in a subprocess) against a local http.server serving tests/fakes/website."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from stages.common.jsonl import read_jsonl
from stages.common.metrics import StageMetrics
from stages.scrape.__main__ import run_scrape
from stages.scrape.web import crawl_sites, plan_sites
from stages.scrape.web_crawl import url_to_path
from tests.pinned_params import pinned

SITE = Path(__file__).parent / "fakes" / "website"


class RecordingHandler(http.server.SimpleHTTPRequestHandler):
    seen: list[str]

    def log_message(self, *args: object) -> None:
        return

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append(self.path)
        super().do_GET()


@pytest.fixture()
def site() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (RecordingHandler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(SITE)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", seen
    finally:
        server.shutdown()
        server.server_close()


def web_params(**web: object) -> dict:
    defaults = {"enabled": True, "max_depth": 2, "max_pages": 50, "download_delay": 0, "autothrottle": False,
                "http_cache": True, "timeout": 30, "crawl_timeout": 600}
    return {"web": {**defaults, **web}}


def project(url: str) -> dict:
    return {"project": "Fakeproj", "docs_url": url, "homepage_url": "https://fakeproj.example/", "license": ""}


def test_url_to_path_is_safe() -> None:
    assert url_to_path("http://h/", True) == "index.html"
    assert url_to_path("http://h/docs/", True) == "docs/index.html"
    assert url_to_path("http://h/docs/intro", True) == "docs/intro.html"
    assert url_to_path("http://h/a.pdf", False) == "a.pdf"
    assert url_to_path("http://h/../../etc/passwd", True) == "etc/passwd.html"
    assert url_to_path("http://h/p?page=2", True).startswith("p__")


def test_plan_sites_prefers_docs_url_and_dedups_hosts() -> None:
    sites = plan_sites([project("https://docs.x/"), {"project": "Zed", "docs_url": "", "homepage_url": "https://docs.x/b"},
                        {"project": "C", "docs_url": "", "homepage_url": ""}])
    assert [(s["host"], s["project"]) for s in sites] == [("docs.x", "Fakeproj")]


def test_crawl_respects_host_depth_robots_and_caches(site: tuple[str, list[str]], tmp_path: Path) -> None:
    url, seen = site
    metrics = StageMetrics("scrape")
    snapshots = crawl_sites([project(url)], web_params(), tmp_path / "cache", metrics)
    assert len(snapshots) == 1
    snap = snapshots[0]
    assert snap.source == "web" and snap.project == "Fakeproj" and snap.repo == url.split("/")[2]
    assert set(snap.paths) == {"index.html", "docs/index.html", "docs/intro.html", "docs/deep/a.html", "guide.md",
                               "whitepaper.pdf"}
    assert "/robots.txt" in seen
    assert not any(p.startswith("/private/") for p in seen)  # disallowed by robots.txt, never requested
    assert "/docs/deep/b.html" not in seen  # depth 3 > max_depth 2
    assert "/logo.png" not in seen
    assert snap.url("docs/intro.html") == f"{url}docs/intro.html"
    assert (snap.root / "whitepaper.pdf").read_bytes() == (SITE / "whitepaper.pdf").read_bytes()
    counts = metrics.as_dict()["web"]
    assert counts["pages"] == 6 and counts["robotstxt_forbidden"] == 1 and counts["off_host"] >= 1
    # The HTTP cache answers a second crawl without touching the site.
    seen.clear()
    again = crawl_sites([project(url)], web_params(), tmp_path / "cache", StageMetrics("scrape"))
    assert again[0].paths == snap.paths and again[0].commit == snap.commit
    assert seen == []


def test_stage_with_web_writes_manifest(site: tuple[str, list[str]], tmp_path: Path) -> None:
    url, _ = site
    landscape = tmp_path / "landscape.yml"
    landscape.write_text(f"""
landscape:
  - category:
    name: Cat
    subcategories:
      - subcategory:
        name: Sub
        items:
          - item:
            name: Fakeproj
            homepage_url: https://fakeproj.example/
            project: graduated
            extra:
              documentation_url: {url}
""")
    (tmp_path / "mirror").mkdir()
    params = {**pinned("scrape"), "source": "mirror", "mirror_dir": str(tmp_path / "mirror"),
              "landscape_url": str(landscape), "cache_dir": str(tmp_path / "cache"), "maturity": ["graduated"],
              "repo_projects": {}, "licenses": {}, "extensions": ["md"], "exclude_dirs": [],
              "max_file_bytes": 1000000, **web_params(max_pages=3, http_cache=False)}
    metrics = StageMetrics("scrape")
    records = run_scrape(params, tmp_path / "out", metrics)
    assert len(records) == 3  # max_pages
    for r in records:
        assert r["source"] == "web" and r["url"].startswith(url) and r["license"] == "unknown"
        assert r["local_path"].startswith("files/web/127.0.0.1_") and ":" not in r["local_path"]
        assert (tmp_path / "out" / r["local_path"]).stat().st_size == r["bytes"]
    assert {r["kind"] for r in records} <= {"html", "markdown", "pdf"}
    assert [r["local_path"] for r in read_jsonl(tmp_path / "out" / "manifest.jsonl")] == [
        r["local_path"] for r in records]
    assert next(read_jsonl(tmp_path / "out" / "projects.jsonl"))["docs_url"] == url

"""The scrapy side of the website crawl, run as `python -m stages.scrape.web_crawl job.json` in a subprocess.

Scrapy's Twisted reactor cannot be restarted inside one process, so the stage (and each test) starts this
module fresh. One spider per site, bounded to the site's host, depth and page budget; robots.txt obeyed.
Every saved page is written under the job's pages_dir and listed in index.jsonl; crawl stats go to stats.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag, urlparse

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.exceptions import CloseSpider

log = logging.getLogger(__name__)

SAVED_EXTENSIONS = {"pdf": "pdf", "md": "markdown", "markdown": "markdown"}
SKIP_EXTENSIONS = {"png", "jpg", "jpeg", "gif", "svg", "ico", "css", "js", "zip", "gz", "tgz", "mp4", "webp",
                   "woff", "woff2", "ttf", "xml", "json", "txt"}


def url_to_path(url: str, is_html: bool) -> str:
    """A safe relative file path for a URL: `/` -> index.html, `/a/b` -> a/b.html, a query -> a hash suffix."""
    parsed = urlparse(url)
    parts = [re.sub(r"[^A-Za-z0-9._-]", "_", unquote(p)) for p in parsed.path.split("/") if p]
    parts = [p for p in parts if p not in ("", ".", "..")]
    if not parts or parsed.path.endswith("/"):
        parts.append("index.html")
    elif is_html and not parts[-1].lower().endswith((".html", ".htm")):
        parts[-1] += ".html"
    if parsed.query:
        stem, dot, ext = parts[-1].rpartition(".")
        digest = hashlib.sha256(parsed.query.encode()).hexdigest()[:8]
        parts[-1] = f"{stem}__{digest}{dot}{ext}" if dot else f"{parts[-1]}__{digest}"
    return "/".join(parts)


def link_extension(url: str) -> str:
    name = urlparse(url).path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


class DocsSpider(scrapy.Spider):
    """Saves HTML pages (and PDF/markdown files) of one host, following only links on that host."""

    name = "docs"

    def __init__(self, site: dict[str, Any], pages_dir: str, max_pages: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.site = site
        self.netloc = urlparse(site["start_url"]).netloc.lower()
        self.allowed_domains = [urlparse(site["start_url"]).hostname or ""]
        self.start_urls = [site["start_url"]]
        self.pages_dir = Path(pages_dir) / site["host"]
        self.max_pages = max_pages
        self.saved: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}

    def count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def parse(self, response: scrapy.http.Response, **kwargs: Any) -> Any:
        if urlparse(response.url).netloc.lower() != self.netloc:  # a redirect off the host
            self.count("off_host")
            return
        if len(self.saved) >= self.max_pages:
            self.count("over_budget")
            return
        content_type = response.headers.get(b"Content-Type", b"").decode("latin-1").lower()
        ext = link_extension(response.url)
        is_html = "html" in content_type and ext not in SAVED_EXTENSIONS
        if is_html:
            kind = "html"
        elif ext in SAVED_EXTENSIONS or "pdf" in content_type:
            kind = SAVED_EXTENSIONS.get(ext, "pdf")
        else:
            self.count("unsupported_type")
            return
        path = url_to_path(response.url, is_html)
        if kind == "pdf" and not path.lower().endswith(".pdf"):
            path += ".pdf"
        if any(s["path"] == path for s in self.saved):
            return
        target = self.pages_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(response.body)
        self.saved.append({"url": urldefrag(response.url)[0], "path": path, "kind": kind,
                           "project": self.site["project"], "host": self.site["host"]})
        if len(self.saved) >= self.max_pages:
            raise CloseSpider("max_pages")  # stop fetching, not just stop saving
        if not is_html:
            return
        for href in response.css("a::attr(href)").getall():
            url = urldefrag(response.urljoin(href))[0]
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https"):
                continue
            if parsed.netloc.lower() != self.netloc:
                self.count("off_host")
                continue
            if link_extension(url) in SKIP_EXTENSIONS:
                self.count("skipped_extension")
                continue
            yield response.follow(url, callback=self.parse)

    def closed(self, reason: str) -> None:
        stats = self.crawler.stats.get_stats() if self.crawler.stats else {}
        for key in ("robotstxt/forbidden", "downloader/response_count", "log_count/ERROR"):
            if stats.get(key):
                self.counts[key.replace("/", "_")] = int(stats[key])
        self.counts["close_reason_" + reason] = 1


def run_job(job: dict[str, Any]) -> None:
    web = job["web"]
    settings = {
        "ROBOTSTXT_OBEY": True,
        "DEPTH_LIMIT": int(web["max_depth"]),
        "DOWNLOAD_DELAY": float(web["download_delay"]),
        "AUTOTHROTTLE_ENABLED": bool(web["autothrottle"]),
        "HTTPCACHE_ENABLED": bool(web["http_cache"]),
        "HTTPCACHE_DIR": str(Path(job["http_cache_dir"]).resolve()),
        "CONCURRENT_REQUESTS_PER_DOMAIN": 1,  # one site's pages in a fixed order: reproducible page budgets
        "USER_AGENT": "cncf-llm/0.1 (+https://github.com/cncf/landscape)",
        "TELNETCONSOLE_ENABLED": False,
        "LOG_LEVEL": job.get("log_level", "WARNING"),
        "RETRY_TIMES": 2,
        "DOWNLOAD_TIMEOUT": float(web["timeout"]),
    }
    process = CrawlerProcess(settings=settings)
    crawlers = []
    for site in job["sites"]:
        crawler = process.create_crawler(DocsSpider)
        crawlers.append(crawler)
        process.crawl(crawler, site=site, pages_dir=job["pages_dir"], max_pages=int(web["max_pages"]))
    process.start()
    index, stats = [], {}
    for crawler in crawlers:
        spider = crawler.spider
        index += spider.saved
        stats[spider.site["host"]] = spider.counts
    out = Path(job["pages_dir"])
    (out / "index.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in index), encoding="utf-8")
    (out / "stats.json").write_text(json.dumps(stats, sort_keys=True, indent=2), encoding="utf-8")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_job(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))

"""Scrape stage: pick CNCF projects from landscape.yml and collect their documentation files.

Writes data/scrape/projects.jsonl, data/scrape/landscape.yml, data/scrape/files/ + manifest.jsonl and
metrics/scrape.json. Sources: `github` (live API, cached per repo@commit under scrape.cache_dir, resumable),
`mirror` (local <owner>__<repo> trees, offline) and, with scrape.web.enabled, the projects' docs websites.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.common.cli import StageError, run_cli, setup_logging, stage_parser
from stages.common.jsonl import dumps
from stages.common.metrics import StageMetrics, recorded_failure
from stages.common.schema import ScrapeParams, load_stage_params
from stages.scrape.landscape import is_url, load_landscape_bytes, make_client, parse_items, select_projects
from stages.scrape.store import RepoSnapshot, materialize, publish

log = logging.getLogger(__name__)

SOURCES = ("github", "mirror")


def run_scrape(params: dict[str, Any], out_dir: Path, metrics: StageMetrics) -> list[dict[str, Any]]:
    """The whole stage as one call: returns the manifest records it wrote."""
    source = params["source"]
    if source not in SOURCES:
        raise StageError(f"scrape.source must be one of {', '.join(SOURCES)}, not {source!r}")
    out_dir = Path(out_dir)
    location = str(params["landscape_url"])
    landscape = load_landscape_bytes(location, make_client(params) if is_url(location) else None)
    projects = select_projects(parse_items(landscape), params)
    metrics.inc("projects.selected", len(projects))
    log.info("selected %d projects from %s", len(projects), location)

    cache_dir = Path(params["cache_dir"])
    snapshots: list[RepoSnapshot] = []
    if source == "mirror":
        from stages.scrape.mirror import mirror_snapshots

        snapshots += mirror_snapshots(str(params["mirror_dir"]), projects, params, metrics)
    else:
        from stages.scrape.github import scrape_github

        snapshots += scrape_github(projects, params, cache_dir, metrics)
    if params["web"]["enabled"]:
        from stages.scrape.web import crawl_sites

        snapshots += crawl_sites(projects, params, cache_dir, metrics)

    for key in ("api_calls", "downloads", "repos.ok", "repos.failed"):
        metrics.inc(key, 0)  # present even when zero, so runs compare key by key
    skipped: Counter[str] = Counter()
    records = materialize(snapshots, out_dir, skipped)
    for reason, n in sorted(skipped.items()):
        metrics.inc(f"skipped.{reason}", n)
    publish(out_dir, {"projects.jsonl": jsonl_bytes(projects), "landscape.yml": landscape,
                      "manifest.jsonl": jsonl_bytes(records)})
    for record in records:
        metrics.inc(f"files.{record['kind']}")
        metrics.inc("bytes", record["bytes"])
    metrics.inc("files.total", len(records))
    metrics.set("throughput.files_per_second", round(len(records) / max(metrics.elapsed, 1e-9), 1))
    log.info("wrote %d files (%d repos) to %s", len(records), len(snapshots), out_dir)
    return records


def jsonl_bytes(records: list[dict[str, Any]]) -> bytes:
    return "".join(dumps(r) + "\n" for r in records).encode("utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out-dir", default="data/scrape", help="output folder (default: data/scrape)")
    parser.add_argument("--metrics", default="metrics/scrape.json", help="metrics file (default: metrics/scrape.json)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    params = load_stage_params("scrape", ScrapeParams, args.params).model_dump()
    metrics = StageMetrics("scrape")
    with recorded_failure(metrics, args.metrics):
        run_scrape(params, Path(args.out_dir), metrics)
    metrics.write(args.metrics)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

"""StackExchange as it really behaves: errors as HTTP 400 bodies, throttling, resumable live runs, and replay
pages that are broken in every way the issue lists (items null, error pages, non-object items, null ids)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stages import stackoverflow as S
from stages.common.jsonl import write_jsonl
from stages.common.metrics import StageMetrics
from tests.fakes.stackexchange_server import FakeStackExchange
from tests.test_stackoverflow import EXPECTED_QUESTIONS, PROJECTS, Clock, base_cfg, question_id, run_api


@pytest.fixture
def fake(corpus: Path) -> Iterator[FakeStackExchange]:
    with FakeStackExchange(corpus / "stackexchange", max_pages=1) as api:
        yield api


def throttle(seconds: int) -> dict:
    return {"error_id": 502, "error_name": "throttle_violation",
            "error_message": f"too many requests from this IP, more requests available in {seconds} seconds"}


def test_throttle_body_is_read_waited_out_and_resumed(fake: FakeStackExchange, tmp_path: Path,
                                                      repo_root: Path) -> None:
    fake.api_errors["questions"] = [throttle(7), {"error_id": 503, "error_name": "temporarily_unavailable",
                                                  "error_message": "try again"}]
    clock = Clock()
    pairs, m = run_api(fake, tmp_path, base_cfg(repo_root), clock=clock)
    assert 7.0 in clock.sleeps  # the wait the API asked for, read from the error body
    assert m["errors"]["api_throttle_violation"] == 1 and m["errors"]["api_temporarily_unavailable"] == 1
    assert m["throttle"]["waits"] == 2
    assert {question_id(p) for p in pairs} == EXPECTED_QUESTIONS  # nothing lost to the throttling


def test_long_throttle_stops_cleanly_and_a_client_error_is_named(fake: FakeStackExchange, tmp_path: Path,
                                                                  repo_root: Path) -> None:
    fake.api_errors["questions"] = [throttle(80_000)]
    clock = Clock()
    pairs, m = run_api(fake, tmp_path, base_cfg(repo_root), clock=clock)
    assert pairs == [] and m["stopped"]["throttle_violation"] == 1 and max(clock.sleeps, default=0) < 1000
    fake.api_errors["questions"] = [{"error_id": 400, "error_name": "bad_parameter", "error_message": "tagged"}]
    before = len(fake.calls("questions"))
    pairs, m = run_api(fake, tmp_path / "again", base_cfg(repo_root))
    assert m["errors"]["api_bad_parameter"] == 1 and len(fake.calls("questions")) == before + 1


def test_a_live_run_saves_pages_and_a_rerun_resumes_from_them(corpus: Path, tmp_path: Path,
                                                               repo_root: Path) -> None:
    save = tmp_path / "saved"
    cfg = base_cfg(repo_root, save_dir=str(save))
    # First run: the quota runs out after page 1 of /questions (a run cut short).
    with FakeStackExchange(corpus / "stackexchange", max_pages=1, quota=3) as api:
        first, m1 = run_api(api, tmp_path / "one", cfg)
    assert m1["stopped"]["quota_exhausted"] == 1 and (save / "questions_kubernetes_page_001.json").is_file()
    # The rerun reads page 1 from disk and asks the API only for what is missing.
    with FakeStackExchange(corpus / "stackexchange", max_pages=1) as api:
        second, m2 = run_api(api, tmp_path / "two", cfg)
        assert [c["page"] for c in api.calls("questions")] == ["2"]
    assert m2["pages"]["resumed"] >= 1
    assert {question_id(p) for p in second} == EXPECTED_QUESTIONS
    assert {question_id(p) for p in first} < EXPECTED_QUESTIONS


def hostile_replay(corpus: Path, replay: Path) -> None:
    """Page 1 items null, 2 an error page, 3 good but with a non-object item and a null id, 4 items a string,
    5 good; answers pages with the same faults."""
    replay.mkdir()
    good = json.loads((corpus / "stackexchange" / "questions_kubernetes_page_003.json").read_text())
    pages = {
        1: {"items": None, "has_more": True},
        2: {"error_id": 502, "error_name": "throttle_violation", "error_message": "later"},
        3: {**good, "items": [*good["items"][:10], "not an object", {**good["items"][10], "question_id": None},
                              {**good["items"][11], "score": "lots"}]},
        4: {"items": "nope", "has_more": True},
        5: json.loads((corpus / "stackexchange" / "questions_kubernetes_page_004.json").read_text()),
    }
    for n, page in pages.items():
        (replay / f"questions_kubernetes_page_{n:03d}.json").write_text(json.dumps(page))
    (replay / "answers_kubernetes_page_003.json").write_text(json.dumps(
        {"items": [None, {"question_id": None}, {"question_id": "x"}, 5]}))


def test_replay_counts_every_malformed_page_and_item_and_goes_on(corpus: Path, tmp_path: Path,
                                                                   repo_root: Path) -> None:
    hostile_replay(corpus, tmp_path / "replay")
    write_jsonl(tmp_path / "projects.jsonl", PROJECTS[:1])
    metrics = StageMetrics("stackoverflow")
    S.run(tmp_path / "projects.jsonl", tmp_path / "qa.jsonl",
          base_cfg(repo_root, source="dir", dir=str(tmp_path / "replay"), max_questions_per_tag=1000), metrics)
    counts = metrics.counts
    assert counts["malformed.items_null"] == 1 and counts["malformed.error_page"] == 1
    assert counts["malformed.items_not_list"] == 1
    assert counts["malformed.question_not_object"] == 1 and counts["malformed.question_bad_id"] == 1
    assert counts["malformed.answer_page_not_object"] == 2 and counts["malformed.answer_page_bad_id"] == 2
    assert counts["questions.seen"] == 11 + 100  # page 3's good items and all of page 5: later pages not lost


def test_a_failing_stage_writes_its_metrics_and_keeps_outputs(tmp_path: Path, repo_root: Path) -> None:
    """No projects file: exit 1 with one line, metrics/stackoverflow.json names the error, old qa.jsonl stays."""
    import yaml

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["stackoverflow"].update(source="dir", dir=str(tmp_path))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "data" / "stackoverflow" / "qa.jsonl"
    out.parent.mkdir(parents=True)
    out.write_text('{"previous": true}\n')
    done = subprocess.run([sys.executable, "-m", "stages.stackoverflow"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(repo_root), "PATH": "/usr/bin:/bin",
                                                       "HOME": str(tmp_path)})
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    metrics = json.loads((tmp_path / "metrics" / "stackoverflow.json").read_text())
    assert metrics["failed"]["error"] == "StageError" and "projects" in metrics["failed"]["message"]
    assert out.read_text() == '{"previous": true}\n'

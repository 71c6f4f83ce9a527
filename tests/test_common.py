"""The shared plumbing every stage relies on: atomic JSONL, metrics nesting, one-line CLI errors."""

from __future__ import annotations

import json
import logging

import pytest

from stages.common.cli import StageError, run_cli
from stages.common.jsonl import atomic_write, read_jsonl, stable_id, write_jsonl
from stages.common.metrics import StageMetrics
from stages.common.params import ParamsError, load_params


def test_write_jsonl_is_canonical_and_roundtrips(tmp_path):
    path = tmp_path / "out" / "x.jsonl"
    n = write_jsonl(path, [{"b": 1, "a": "é"}, {"z": [1, 2]}])
    assert n == 2
    assert path.read_text(encoding="utf-8") == '{"a":"é","b":1}\n{"z":[1,2]}\n'
    assert list(read_jsonl(path)) == [{"a": "é", "b": 1}, {"z": [1, 2]}]


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"keep": True}])

    def broken():
        yield {"partial": 1}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert list(read_jsonl(path)) == [{"keep": True}]
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]  # no temp file left behind


def test_atomic_write_binary(tmp_path):
    with atomic_write(tmp_path / "b.bin", "wb") as fh:
        fh.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_stable_id_depends_only_on_parts():
    assert stable_id("a", "b") == stable_id("a", "b")
    assert stable_id("a", "b") != stable_id("ab")
    assert len(stable_id("x", length=8)) == 8


def test_metrics_nest_dotted_counters(tmp_path):
    m = StageMetrics("demo")
    m.inc("files")
    m.inc("dropped.too_large", 2)
    m.inc("dropped")  # a group and a counter share a name: both survive
    m.set("speed.mb_per_s", 1.5)
    path = m.write(tmp_path / "demo.json")
    data = json.loads(path.read_text())
    assert data["files"] == 1
    assert data["dropped"] == {"too_large": 2, "total": 1}
    assert data["speed"]["mb_per_s"] == 1.5
    assert data["wall_seconds"] >= 0


def test_load_params_section_and_errors(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("a:\n  x: 1\n")
    assert load_params("a", p) == {"x": 1}
    with pytest.raises(ParamsError, match="section 'b'"):
        load_params("b", p)
    with pytest.raises(ParamsError, match="not found"):
        load_params("a", tmp_path / "missing.yaml")


def test_run_cli_turns_stage_errors_into_one_line(caplog):
    def main(argv):
        raise StageError("cannot reach api.github.com; use -S scrape.source=mirror")

    with caplog.at_level(logging.ERROR):
        assert run_cli(main, []) == 1
    assert "scrape.source=mirror" in caplog.text
    assert "Traceback" not in caplog.text


def _sigterm_disposition(_: int) -> str:
    import signal

    handler = signal.getsignal(signal.SIGTERM)
    return "default" if handler == signal.SIG_DFL else repr(handler)


def test_pool_workers_take_sigterm_default_action() -> None:
    """A forked worker must not inherit run_cli's Python-level SIGTERM handler: Pool.terminate() SIGTERMs idle
    workers blocked on the task queue's lock, and a Python handler can miss that signal (a hung `dvc repro`)."""
    import multiprocessing
    import signal

    from stages.common.cli import _raise_interrupt
    from stages.common.workers import die_with_parent

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # what run_cli installs in a stage's process
    try:
        with multiprocessing.get_context("fork").Pool(2, initializer=die_with_parent) as pool:
            assert set(pool.map(_sigterm_disposition, range(4))) == {"default"}
    finally:
        signal.signal(signal.SIGTERM, previous)

"""Bad params are refused with one line naming the param, before any output is touched (issue 10).

Each case runs the stage's real entry point as a subprocess on a copy of params.yaml with one value broken,
in a folder whose data/ and metrics/ already hold "previous outputs": the exit code must be 1, stderr one
line naming the param, and every previous output byte-identical afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.common import schema
from stages.common.params import ParamsError
from tests.pinned_params import broken

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
MODULES = {"scrape": "stages.scrape", "unify": "stages.unify", "langfilter": "stages.langfilter",
           "ner": "stages.ner", "qa_gen": "stages.qa_gen", "stackoverflow": "stages.stackoverflow",
           "merge": "stages.merge"}
MODELS = {"scrape": schema.ScrapeParams, "unify": schema.UnifyParams, "langfilter": schema.LangfilterParams,
          "ner": schema.NerParams, "qa_gen": schema.QaGenParams, "stackoverflow": schema.StackOverflowParams,
          "merge": schema.MergeParams}

# (stage, dotted key, bad value or DELETE/RENAME marker, text the error line must contain)
CASES = [
    ("unify", "chunk_max_words", -5, "unify.chunk_max_words: -5 — must be an integer ≥ 10"),
    ("unify", "chunk_max_words", 0, "unify.chunk_max_words: 0 — must be an integer ≥ 10"),
    ("unify", "chunk_max_words", "lots", "unify.chunk_max_words: 'lots' — must be an integer"),
    ("unify", "chunk_max_words", ("RENAME", "chunk_max_wrds"), "unify.chunk_max_wrds: unknown param"),
    ("unify", "chunk_min_words", 5000, "unify.chunk_min_words: 5000 — must be ≤ unify.chunk_max_words"),
    ("unify", "file_timeout_s", 0, "unify.file_timeout_s: 0 — must be a number > 0"),
    ("scrape", "mirror_dir", "", "scrape.mirror_dir: '' — must name a folder"),  # params.yaml: source mirror
    ("scrape", "maturity", "graduated", "scrape.maturity: 'graduated' — must be a list"),
    ("scrape", "max_file_bytes", -1, "scrape.max_file_bytes: -1 — must be an integer ≥ 0"),
    ("scrape", "github.max_retries", -2, "scrape.github.max_retries: -2 — must be an integer ≥ 0"),
    ("scrape", "source", "gitlab", "scrape.source: 'gitlab' — must be 'github' or 'mirror'"),
    ("langfilter", "min_confidence", 1.5, "langfilter.min_confidence: 1.5 — must be a number ≤ 1.0"),
    ("langfilter", "languages", [], "langfilter.languages: [] —"),
    ("ner", "batch_size", 0, "ner.batch_size: 0 — must be an integer ≥ 1"),
    ("ner", "min_cooccurrence", "three", "ner.min_cooccurrence: 'three' — must be an integer"),
    ("qa_gen", "generators", ["structral"], "qa_gen.generators.0: 'structral' — must be"),
    ("qa_gen", "max_pairs_per_chunk", -1, "qa_gen.max_pairs_per_chunk: -1 — must be an integer ≥ 1"),
    ("stackoverflow", "max_retries", -1, "stackoverflow.max_retries: -1 — must be an integer ≥ 0"),
    ("stackoverflow", "dir", "", "stackoverflow.dir: '' — must name a folder"),  # params.yaml: source dir
    ("stackoverflow", "page_size", 500, "stackoverflow.page_size: 500 — must be an integer ≤ 100"),
    ("merge", "decontam_ngram", "x", "merge.decontam_ngram: 'x' — must be an integer"),
    ("merge", "validation_fraction", -0.1, "merge.validation_fraction: -0.1 — must be a number ≥ 0.0"),
    ("merge", "seed", ("DELETE",), "merge.seed: missing — required"),
]


def test_repo_params_are_valid() -> None:
    for stage, model in MODELS.items():
        schema.validate_params(stage, model, PARAMS[stage])


@pytest.mark.parametrize(("stage", "key", "value", "expected"), CASES)
def test_bad_param_is_one_line(stage: str, key: str, value: object, expected: str) -> None:
    with pytest.raises(ParamsError) as err:
        schema.validate_params(stage, MODELS[stage], broken(stage, key, value)[stage])
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("stage", sorted(MODULES))
def test_stage_refuses_bad_params_before_touching_outputs(stage: str, tmp_path: Path) -> None:
    """One bad value per stage through the real CLI: exit 1, one line, previous outputs untouched."""
    case = next(c for c in CASES if c[0] == stage)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(broken(stage, case[1], case[2])), encoding="utf-8")
    previous = {}
    for folder in ("data/scrape", "data/unify", "data/langfilter", "data/ner", "data/qa_gen", "data/stackoverflow",
                   "data/merge", "metrics"):
        path = tmp_path / folder / "previous.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"kept": true}\n')
        previous[path] = path.read_bytes()
    (tmp_path / "metrics" / f"{stage}.json").write_text('{"previous": 1}\n')
    previous[tmp_path / "metrics" / f"{stage}.json"] = b'{"previous": 1}\n'
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    done = subprocess.run([sys.executable, "-m", MODULES[stage], "--params", "params.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and case[3] in lines[0], done.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    for path, data in previous.items():
        assert path.read_bytes() == data

"""qa_gen llm generator: JSON repair on literal strings, batching, the resumable cache, offline errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stages.common.cli import StageError
from stages.common.metrics import StageMetrics
from stages.qa_gen import finalize_pairs
from stages.qa_gen.llm import (
    GenerationCache,
    TransformersGenerator,
    build_messages,
    generate_llm,
    length_sorted_batches,
    parse_pairs,
    render_prompt,
    resolve_model,
)

TEXT = (
    "Prometheus scrapes metrics from instrumented jobs, either directly or via an intermediary push gateway "
    "for short-lived jobs. It stores all scraped samples locally and runs rules over this data."
)


def _chunks(n: int) -> list[dict[str, Any]]:
    return [
        {
            "chunk_id": f"c{i:02d}",
            "doc_id": "d1",
            "project": "Prometheus",
            "kind": "markdown",
            "title": "Overview",
            "url": "https://prometheus.io/docs/",
            "path": "docs/overview.md",
            "license": "Apache-2.0",
            "heading_path": ["Overview", f"Part {i}"],
            "text": TEXT + " Extra words." * i,
            "n_words": 30 + 2 * i,
        }
        for i in range(n)
    ]


def _params(cache_dir: Path, model: str = "tiny", **kw: Any) -> dict[str, Any]:
    return {
        "model": model,
        "backend": "transformers",
        "pairs_per_chunk": 2,
        "batch_size": 2,
        "max_new_tokens": 6,
        "cache_dir": str(cache_dir),
        **kw,
    }


# ---------------------------------------------------------------- parser on literal strings


@pytest.mark.parametrize(
    ("raw", "questions"),
    [
        (
            '[{"question": "What does Prometheus scrape?", "answer": "Metrics."}]',
            ["What does Prometheus scrape?"],
        ),
        (
            'Sure! Here you go:\n```json\n[{"question": "Q1 Prometheus?", "answer": "A1",},]\n```',
            ["Q1 Prometheus?"],
        ),
        ("[{'question': 'What is Helm', 'answer': 'A package manager.'}]", ["What is Helm?"]),
        ('{"pairs": [{"Question": "Q2 about etcd?", "Answer": "A2"}]}', ["Q2 about etcd?"]),
        ('{"question": "Single object about Linkerd?", "answer": "yes"}', ["Single object about Linkerd?"]),
        ('[{"question": "Kept about Jaeger?", "answer": "A"}, {"question": "Cut off', ["Kept about Jaeger?"]),
        (
            "[{\u201cquestion\u201d: \u201cSmart quotes in Argo?\u201d, \u201canswer\u201d: \u201cOK\u201d}]",
            ["Smart quotes in Argo?"],
        ),
        ('[{"question": "No answer about Helm?", "answer": ""}, {"question": "", "answer": "x"}]', []),
        (
            '[{"question": "Brackets ] in a string about Helm?", "answer": "A [b]"}]',
            ["Brackets ] in a string about Helm?"],
        ),
    ],
)
def test_parse_pairs_repairs_what_it_can(raw: str, questions: list[str]) -> None:
    pairs = parse_pairs(raw)
    assert pairs is not None
    assert [p["question"] for p in pairs] == questions
    assert all(p["answer"] for p in pairs)


@pytest.mark.parametrize("raw", ["", "I cannot help with that.", "question: what? answer: no", "[[[", "{,,}"])
def test_parse_pairs_gives_up_on_garbage(raw: str) -> None:
    assert parse_pairs(raw) is None


def test_length_sorted_batches() -> None:
    assert length_sorted_batches([5, 1, 4, 2, 3], 2) == [[1, 3], [4, 2], [0]]


def test_cache_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    cache = GenerationCache(path)
    cache.append([{"key": "a", "output": "x"}, {"key": "b", "output": "y"}])
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"key": "c", "outp')
    reloaded = GenerationCache(path)
    assert reloaded.get("a") == "x" and "b" in reloaded and "c" not in reloaded


def test_llm_module_import_is_light(repo_root: Path) -> None:
    code = "import sys, stages.qa_gen.llm, stages.qa_gen.qag; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=repo_root, check=True, timeout=60)


def test_offline_hf_id_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(StageError, match="local directory"):
        resolve_model("some-org/some-instruct-model", "qa_gen.llm.model")
    with pytest.raises(StageError, match="does not exist"):
        resolve_model(str(tmp_path / "no" / "such" / "model"), "qa_gen.llm.model")


def test_backend_choice_without_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from stages.qa_gen import llm

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        llm.importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a)
    )
    assert llm.choose_backend("auto") == "transformers"
    assert llm.choose_backend("transformers") == "transformers"
    with pytest.raises(StageError, match="vllm package is not installed"):
        llm.choose_backend("vllm")
    with pytest.raises(StageError, match="must be auto"):
        llm.choose_backend("tgi")


# ---------------------------------------------------------------- the tiny model


class CountingGenerator:
    """Wraps the real generator: counts prompts, can fail after N batches (a run killed mid-way)."""

    def __init__(self, inner: Any, fail_after_batches: int | None = None, outputs: list[str] | None = None):
        self.inner, self.tokenizer = inner, inner.tokenizer
        self.fail_after, self.outputs = fail_after_batches, outputs
        self.prompts: list[str] = []
        self.batches = 0
        self.new_tokens = 0

    def n_tokens(self, prompt: str) -> int:
        return self.inner.n_tokens(prompt)

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.batches += 1
        self.prompts.extend(prompts)
        if self.outputs is not None:
            return [self.outputs[len(self.prompts) - len(prompts) + i] for i in range(len(prompts))]
        return self.inner.generate(prompts, max_new_tokens)


@pytest.fixture(scope="module")
def tiny_gen(tiny_model_dir: Path) -> TransformersGenerator:
    import torch

    torch.set_num_threads(1)
    return TransformersGenerator(str(tiny_model_dir))


def test_prompt_uses_the_chat_template(tiny_gen: TransformersGenerator) -> None:
    prompt = render_prompt(tiny_gen.tokenizer, build_messages(_chunks(1)[0], 2))
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert "Project: Prometheus" in prompt and "JSON array of 2 objects" in prompt


@pytest.mark.parametrize("separate_prefill", [True, False])
def test_batched_generation_is_left_padded_and_matches_one_by_one(
    tiny_gen: TransformersGenerator, separate_prefill: bool
) -> None:
    prompts = [render_prompt(tiny_gen.tokenizer, build_messages(c, 2)) for c in _chunks(3)]
    assert tiny_gen.tokenizer.padding_side == "left"
    assert len({tiny_gen.n_tokens(p) for p in prompts}) == 3  # really padded
    tiny_gen.separate_prefill = separate_prefill
    try:
        batched = tiny_gen.generate(prompts, 6)
    finally:
        tiny_gen.separate_prefill = True
    single = [tiny_gen.generate([p], 6)[0] for p in prompts]
    assert batched == single and all(batched)


def test_generate_llm_plumbing_and_resume(tiny_gen: TransformersGenerator, tmp_path: Path) -> None:
    chunks = _chunks(5)
    first = CountingGenerator(tiny_gen)
    metrics = StageMetrics("t")
    pairs = list(generate_llm(chunks, _params(tmp_path), metrics, generator_factory=lambda: first))
    assert len(first.prompts) == 5 and first.batches == 3
    assert metrics.counts["llm.generated"] == 5 and metrics.counts["llm.batches"] == 3
    cache_lines = (tmp_path / "llm-tiny.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(cache_lines) == 5 and all(json.loads(line)["model"] == "tiny" for line in cache_lines)
    # a random model writes no JSON: every chunk is dropped and counted, no empty pair comes out
    assert all(p["question"] and p["answer"] for p in pairs)
    assert (
        metrics.counts["dropped.llm_unparseable"]
        + metrics.counts["dropped.llm_no_valid_pairs"]
        + len({p["chunk_id"] for p in pairs})
        == 5
    )

    again = CountingGenerator(tiny_gen)
    metrics2 = StageMetrics("t")
    list(generate_llm(chunks, _params(tmp_path), metrics2, generator_factory=lambda: again))
    assert (
        again.prompts == [] and metrics2.counts["llm.cached"] == 5 and metrics2.counts["llm.generated"] == 0
    )


def test_killed_run_resumes_with_only_the_rest(tiny_gen: TransformersGenerator, tmp_path: Path) -> None:
    chunks = _chunks(6)
    dying = CountingGenerator(tiny_gen, fail_after_batches=1)
    with pytest.raises(KeyboardInterrupt):
        list(generate_llm(chunks, _params(tmp_path), StageMetrics("t"), generator_factory=lambda: dying))
    assert len((tmp_path / "llm-tiny.jsonl").read_text(encoding="utf-8").splitlines()) == 2
    rest = CountingGenerator(tiny_gen)
    metrics = StageMetrics("t")
    list(generate_llm(chunks, _params(tmp_path), metrics, generator_factory=lambda: rest))
    assert len(rest.prompts) == 4 and metrics.counts["llm.cached"] == 2
    assert set(rest.prompts).isdisjoint(dying.prompts)


def test_a_new_prompt_or_chunk_text_is_not_served_from_cache(
    tiny_gen: TransformersGenerator, tmp_path: Path
) -> None:
    chunks = _chunks(2)
    list(generate_llm(chunks, _params(tmp_path), StageMetrics("t"), generator_factory=lambda: tiny_gen))
    other = CountingGenerator(tiny_gen)
    list(
        generate_llm(
            chunks, _params(tmp_path, pairs_per_chunk=3), StageMetrics("t"), generator_factory=lambda: other
        )
    )
    assert len(other.prompts) == 2
    edited = CountingGenerator(tiny_gen)
    changed = [chunks[0], {**chunks[1], "text": chunks[1]["text"] + " Edited upstream."}]
    list(generate_llm(changed, _params(tmp_path), StageMetrics("t"), generator_factory=lambda: edited))
    assert len(edited.prompts) == 1 and "Edited upstream." in edited.prompts[0]


def test_model_pairs_go_through_grounding(tiny_gen: TransformersGenerator, tmp_path: Path) -> None:
    chunks = _chunks(1)
    canned = [
        '```json\n[{"question": "How does Prometheus collect metrics from short-lived jobs?", '
        '"answer": "Prometheus scrapes metrics via an intermediary push gateway for short-lived jobs."},\n'
        '{"question": "Who founded Prometheus?", "answer": "Three astronauts founded it on Mars in 1850."},]\n```'
    ]
    fake = CountingGenerator(tiny_gen, outputs=canned)
    metrics = StageMetrics("t")
    candidates = list(generate_llm(chunks, _params(tmp_path), metrics, generator_factory=lambda: fake))
    assert len(candidates) == 2
    out = finalize_pairs(
        candidates, {c["chunk_id"]: c for c in chunks}, {"min_grounding": 0.6}, metrics, ["Prometheus"]
    )
    assert [r["question"] for r in out] == ["How does Prometheus collect metrics from short-lived jobs?"]
    assert out[0]["generator"] == "llm" and out[0]["grounding"] >= 0.6
    assert metrics.counts["dropped.low_grounding"] == 1


def test_stage_runs_llm_generator_with_a_local_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    from stages.qa_gen import generate_pairs

    params = {
        "generators": ["llm"],
        "min_grounding": 0.6,
        "min_answer_words": 8,
        "max_answer_words": 180,
        "seed": 1,
        "llm": {**_params(tmp_path, model=str(tiny_model_dir)), "max_chunks": 3},
    }
    metrics = StageMetrics("t")
    chunks = [{**c, "text": c["text"] + " " + TEXT, "n_words": 60} for c in _chunks(5)]
    out = generate_pairs(chunks, [], [], [], params, metrics)
    assert metrics.counts["llm.generated"] == 3 and metrics.counts["llm.chunks"] == 3
    assert all(r["question"] and r["answer"] for r in out)

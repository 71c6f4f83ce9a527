"""qa_gen llm generator: JSON repair on literal strings, batching, the resumable cache, offline errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stages.common.cli import StageError
from stages.common.metrics import StageMetrics
from stages.common.params import ParamsError
from stages.common.schema import QaGenLlmParams
from stages.qa_gen import finalize_pairs
from stages.qa_gen.llm import (
    GenerationCache,
    TransformersGenerator,
    build_messages,
    generate_llm,
    parse_pairs,
    render_prompt,
    resolve_model,
)
from tests.test_qa_gen_helpers import qa_gen_params

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


def _llm_settings(cache_dir: Path, model: str = "tiny", **kw: Any) -> dict[str, Any]:
    return {
        "model": model,
        "backend": "transformers",
        "pairs_per_chunk": 2,
        "batch_size": 2,
        "max_new_tokens": 6,
        "cache_dir": str(cache_dir),
        **kw,
    }


def _params(cache_dir: Path, model: str = "tiny", **kw: Any) -> QaGenLlmParams:
    """The pinned qa_gen.llm section with a tiny model's settings, validated as the stage validates it."""
    return qa_gen_params(llm=_llm_settings(cache_dir, model, **kw)).llm


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
    from stages.common.modeling import length_sorted_batches

    assert length_sorted_batches([5, 1, 4, 2, 3], 2) == [[0, 2], [4, 3], [1]]
    assert length_sorted_batches([2, 2, 2], 0) == [[0], [1], [2]]  # ties keep input order; batch size at least 1


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
        candidates, {c["chunk_id"]: c for c in chunks}, qa_gen_params(min_grounding=0.6), metrics, ["Prometheus"]
    )
    assert [r["question"] for r in out] == ["How does Prometheus collect metrics from short-lived jobs?"]
    assert out[0]["generator"] == "llm" and out[0]["grounding"] >= 0.6
    assert metrics.counts["dropped.low_grounding"] == 1


def test_stage_runs_llm_generator_with_a_local_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    from stages.qa_gen import generate_pairs

    params = qa_gen_params(
        generators=["llm"],
        min_grounding=0.6,
        min_answer_words=8,
        max_answer_words=180,
        seed=1,
        llm=_llm_settings(tmp_path, model=str(tiny_model_dir), max_chunks=3),
    )
    metrics = StageMetrics("t")
    chunks = [{**c, "text": c["text"] + " " + TEXT, "n_words": 60} for c in _chunks(5)]
    out = generate_pairs(chunks, [], [], [], params, metrics)
    assert metrics.counts["llm.generated"] == 3 and metrics.counts["llm.chunks"] == 3
    assert all(r["question"] and r["answer"] for r in out)


# ---------------------------------------------------------------- vLLM through its interface (vLLM absent here)


class FakeSamplingParams:
    """vllm.SamplingParams stand-in: records its settings."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings


class StructuredOutputsParams:  # same name as vLLM's, so the generator picks the `structured_outputs` field
    def __init__(self, json: dict) -> None:  # noqa: A002 - vLLM's keyword
        self.json = json


class FakeLLM:
    """vllm.LLM stand-in: a real tokenizer (with its real chat template); records every `chat` call and refuses
    `generate`, the text path that re-adds special tokens."""

    def __init__(self, tokenizer: Any, replies: list[str]) -> None:
        self.tokenizer, self.replies = tokenizer, replies
        self.chat_calls: list[dict[str, Any]] = []

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def chat(self, messages: list, sampling_params: Any = None, **kwargs: Any) -> list:
        self.chat_calls.append({"messages": messages, "sampling_params": sampling_params, **kwargs})
        outs = []
        for conversation in messages:
            text = self.replies[len(outs) % len(self.replies)]
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            assert conversation[-1]["role"] == "user"
            outs.append(type("Out", (), {"outputs": [type("C", (), {"text": text, "token_ids": ids})()]})())
        return outs

    def generate(self, *args: Any, **kwargs: Any) -> list:
        raise AssertionError("re-templated text passed to LLM.generate (double BOS)")


GROUNDED = ('[{"question": "How does Prometheus collect metrics from short-lived jobs?", '
            '"answer": "Prometheus scrapes metrics via an intermediary push gateway for short-lived jobs."}]')


@pytest.fixture(scope="module")
def gemma2_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    from tests.fakes.tiny_model import build_tiny_arch

    return AutoTokenizer.from_pretrained(str(build_tiny_arch(tmp_path_factory.mktemp("g2"), "gemma2")))


def test_vllm_gets_messages_through_chat_with_a_json_schema(gemma2_tokenizer: Any, tmp_path: Path) -> None:
    from stages.qa_gen.llm import VllmGenerator, pairs_json_schema

    fake = FakeLLM(gemma2_tokenizer, [GROUNDED])
    gen = VllmGenerator(fake, FakeSamplingParams, StructuredOutputsParams, pairs_json_schema(2))
    chunks = _chunks(3)
    metrics = StageMetrics("t")
    candidates = list(generate_llm(chunks, _params(tmp_path, batch_size=8), metrics, generator_factory=lambda: gen))

    (call,) = fake.chat_calls
    assert call["add_generation_prompt"] is True
    conversations = call["messages"]
    assert len(conversations) == 3 and all(isinstance(c, list) for c in conversations)
    # Gemma-2's template has no system role: the instructions arrive folded into the first user turn, as messages
    assert all([m["role"] for m in c] == ["user"] for c in conversations)
    assert conversations[0][0]["content"].startswith("You write question-answer pairs")
    settings = call["sampling_params"].settings
    assert settings["temperature"] == 0.0 and settings["max_tokens"] == 6
    schema = settings["structured_outputs"].json
    assert schema["items"]["required"] == ["question", "answer"] and schema["maxItems"] == 2
    assert metrics.counts["llm.new_tokens"] > 0
    out = finalize_pairs(candidates, {c["chunk_id"]: c for c in chunks}, qa_gen_params(min_grounding=0.6),
                         metrics, ["Prometheus"])
    assert len(candidates) == 3  # the same canned pair for 3 chunks: kept once, grounded
    assert len(out) == 1 and out[0]["generator"] == "llm" and out[0]["grounding"] >= 0.6


def test_vllm_prompt_is_templated_once(gemma2_tokenizer: Any) -> None:
    """What vLLM's chat path tokenizes: one <bos>, from the template; the old text path gave two."""
    from stages.qa_gen.llm import VllmGenerator

    gen = VllmGenerator(FakeLLM(gemma2_tokenizer, [GROUNDED]), FakeSamplingParams, None, None)
    conversation = gen.prepare(build_messages(_chunks(1)[0], 2))
    ids = gemma2_tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
    assert ids.count(gemma2_tokenizer.bos_token_id) == 1 and gen.n_tokens(conversation) == len(ids)
    text = gemma2_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert gemma2_tokenizer(text)["input_ids"].count(gemma2_tokenizer.bos_token_id) == 2  # the bug, for contrast
    assert "structured_outputs" not in gen.sampling_params(8).settings  # guided_json: false


@pytest.mark.parametrize(("params", "expected"), [
    ({}, (4096, 1, 0.85)),  # the pinned params.yaml
    ({"max_model_len": 8192, "tensor_parallel_size": 2, "gpu_memory_utilization": 0.9}, (8192, 2, 0.9)),
    ({"tensor_parallel_size": 0}, "qa_gen.llm.tensor_parallel_size: 0"),
    ({"gpu_memory_utilization": 1.5}, "qa_gen.llm.gpu_memory_utilization: 1.5"),
    ({"max_model_len": 128}, "qa_gen.llm.max_model_len: 128"),
    ({"max_model_len": "long"}, "qa_gen.llm.max_model_len: 'long'"),
])
def test_vllm_engine_params(params: dict[str, Any], expected: tuple[int, int, float] | str) -> None:
    """The engine gets the params as given; a bad one is refused with one line naming it when params.yaml is
    loaded, before any download or the minutes-long engine start."""
    from stages.qa_gen.llm import vllm_engine_kwargs

    if isinstance(expected, tuple):
        kwargs = vllm_engine_kwargs("/models/x", qa_gen_params(llm=params).llm)
        assert kwargs == {"model": "/models/x", "dtype": "auto", "seed": 0, "max_model_len": expected[0],
                          "tensor_parallel_size": expected[1], "gpu_memory_utilization": expected[2]}
    else:
        with pytest.raises(ParamsError, match=re.escape(expected)):
            qa_gen_params(llm=params)


def test_vllm_backend_without_vllm_is_one_clear_error(monkeypatch) -> None:
    import importlib.util

    from stages.qa_gen.llm import choose_backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(StageError, match="vllm package is not installed"):
        choose_backend("vllm")
    assert choose_backend("auto") == "transformers"


@pytest.mark.parametrize(("files", "weights"), [
    (["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5"], "*.safetensors"),
    (["config.json", "pytorch_model.bin", "spiece.model", "tf_model.h5"], "pytorch_model*.bin"),
    (["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"], "pytorch_model*.bin"),
])
def test_download_keeps_the_weight_format_the_checkpoint_ships(files: list[str], weights: str) -> None:
    from stages.qa_gen.llm import download_patterns

    patterns = download_patterns(files)
    assert weights in patterns and "*.model" in patterns
    assert not {"*.safetensors", "pytorch_model*.bin"} <= set(patterns)  # one format, never both
    with pytest.raises(StageError, match="neither"):
        download_patterns(["config.json", "tf_model.h5"])

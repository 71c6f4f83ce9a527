"""Shared fixtures: where the shared corpus lives, a repo-root working directory, the tiny eval workspace."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("CNCF_CORPUS", REPO_ROOT.parent / "shared" / "corpus")).resolve()
MCQ_FIXTURE = Path(__file__).parent / "data" / "eval_mcq_fixture.jsonl"
SYSTEM = "You are an expert on the CNCF cloud-native landscape."


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The real development corpus (../shared/corpus), read in place and never copied into the project."""
    if not (CORPUS / "repos").is_dir():
        message = f"shared corpus not found at {CORPUS} (set CNCF_CORPUS)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI always has it: a missing corpus there is a broken setup, not a skip
        pytest.skip(message)
    return CORPUS


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama + corpus-trained BPE tokenizer, built once per test session (~seconds)."""
    from tests.fakes.tiny_model import build_tiny_model, corpus_text

    corpus_repos = CORPUS / "repos" / "prometheus__docs"
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"), corpus_text(corpus_repos))


@pytest.fixture(scope="module")
def gradio_safe_abc():
    """Importing scrapy (tests/test_scrape_web.py, collected in the same process) leaves a zope.interface
    `__provides__` descriptor on abc.ABC; gradio's Component.__init__ reads every attribute named by dir() of its
    class and trips over it. The app never imports scrapy; the tests that build it take this declaration away
    while they run and put it back."""
    import abc

    saved = abc.ABC.__dict__.get("__provides__")
    if saved is not None:
        delattr(abc.ABC, "__provides__")
    yield
    if saved is not None:
        abc.ABC.__provides__ = saved


# ---------------------------------------------------------------- eval on the tiny model (test_eval, test_competitors)

@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny model with random B weights, so tuned != base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * 0.5)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def _merge_record(i: int, project: str, question: str, answer: str) -> dict[str, Any]:
    return {"qa_id": f"q{i:03d}", "project": project, "source": "docs", "generator": "structural",
            "doc_id": f"d{i}", "url": f"https://example.org/{i}", "license": "Apache-2.0",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


TEST_ROWS = [
    ("Prometheus", "How does Prometheus collect metrics?", "It scrapes HTTP endpoints of instrumented jobs."),
    ("Prometheus", "What is a recording rule?", "A rule that precomputes an expression into a new series."),
    ("Helm", "What is a Helm chart?", "A package of templated Kubernetes resources."),
    ("Kubernetes", "What does kubectl apply do?", "It creates or updates resources from a manifest file."),
    ("etcd", "What is etcd?", "A distributed, reliable key-value store."),
]
LEAK = "a chart describes a set of kubernetes resources that helm installs into one cluster as a release"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_adapter: Path) -> Path:
    """merge splits, a tiny index and a hand-written set (one item names its page by `checked_against`)."""
    from stages.common.jsonl import write_jsonl

    root = tmp_path_factory.mktemp("eval_ws")
    write_jsonl(root / "data/merge/test.jsonl", [_merge_record(i, *row) for i, row in enumerate(TEST_ROWS)])
    write_jsonl(root / "data/merge/train.jsonl", [
        _merge_record(100, "Helm", "Explain charts.", f"Simply put, {LEAK}."),
        _merge_record(101, "Kubernetes", "What is a Pod?", "The smallest deployable unit of computing."),
    ])
    from tests.fakes.tiny_index import build_tiny_index, make_chunk

    chunks = [make_chunk(i, project, question.rstrip("?"), f"{answer} See the reference pages for details.", doc=f"d{i}")
              for i, (project, question, answer) in enumerate(TEST_ROWS)]
    chunks.append(make_chunk(9, "CoreDNS", "Corefile", "CoreDNS is configured by a Corefile.", doc="coredns-doc"))
    index = build_tiny_index(root / "build", chunks)
    index.rename(root / "data/index")
    write_jsonl(root / "evalsets/qa.jsonl", [
        {"id": "h1", "project": "Helm", "question": "What is a release?", "answer": f"Roughly: {LEAK}."},
        {"id": "h2", "project": "CoreDNS", "question": "What configures CoreDNS?", "answer": "A Corefile.",
         "checked_against": "o__coredns/docs/coredns-doc.md"},
        {"project": "Helm", "question": ""},  # invalid: skipped with a warning
    ])
    return root


def tiny_settings(system: str = "") -> Any:
    """The pinned `inference:` settings with the tiny workspace's system prompt (as eval's CLI builds them)."""
    from stages.common.inference import InferenceSettings
    from tests.pinned_params import params_file

    return InferenceSettings.from_params(params_file(merge={"system_prompt": system}))


def tiny_eval_params(root: Path, **overrides: Any) -> Any:
    """The pinned `eval:` section, validated, sized for the tiny workspace at `root` (a helper, not a fixture: tests
    call it with their own root); `overrides` replace whole keys."""
    from stages.common.schema import EvalParams
    from tests.pinned_params import pinned

    tiny = {"sets": [{"name": "cncf-qa", "path": str(root / "evalsets/qa.jsonl"), "format": "qa"},
                     {"name": "cncf-mcq", "path": str(MCQ_FIXTURE), "format": "mcq"},
                     {"name": "absent", "path": str(root / "nope.jsonl"), "format": "qa"}],
            "max_examples": 4, "max_new_tokens": 8, "batch_size": 3, "repetition_penalty": 1.2,
            "bootstrap_samples": 200, "seed": 42, "threads": 1}
    return EvalParams.model_validate(pinned("eval", **{**tiny, **overrides}))

"""qa_gen qag generator: lmqg output parser on literal strings, plumbing with a tiny random T5."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.common.metrics import StageMetrics
from stages.qa_gen import finalize_pairs
from stages.qa_gen.qag import QAG_PREFIX, T5Generator, generate_qag, name_project, parse_qag_output, qag_input
from tests.test_qa_gen_helpers import qa_gen_params

TEXT = (
    "The kubelet is the primary node agent that runs on each node. It registers the node with the "
    "API server using the hostname.\n\n```shell\nkubelet --help\n```\n\nThe kubelet works in terms of a PodSpec."
)
CHUNK = {
    "chunk_id": "k1",
    "doc_id": "d1",
    "project": "Kubernetes",
    "kind": "markdown",
    "title": "kubelet",
    "url": "https://kubernetes.io/docs/kubelet/",
    "path": "docs/kubelet.md",
    "license": "CC-BY-4.0",
    "heading_path": ["kubelet"],
    "text": TEXT,
    "n_words": 40,
}


def test_parse_qag_output_on_lmqg_strings() -> None:
    out = parse_qag_output(
        "question: What is the primary node agent?, answer: the kubelet | "
        "question: What does the kubelet work in terms of, answer: a PodSpec | garbage | "
        "question: , answer: nothing"
    )
    assert out == [
        {"question": "What is the primary node agent?", "answer": "the kubelet"},
        {"question": "What does the kubelet work in terms of?", "answer": "a PodSpec"},
    ]
    assert parse_qag_output("") == [] and parse_qag_output("no pairs here") == []


def test_qag_input_is_prefix_plus_plain_paragraph() -> None:
    text = qag_input(CHUNK)
    assert text.startswith(QAG_PREFIX) and "kubelet --help" not in text and "\n" not in text


def test_name_project() -> None:
    assert (
        name_project("What is the primary node agent?", "Kubernetes")
        == "What is the primary node agent in Kubernetes?"
    )
    assert (
        name_project("How does Kubernetes schedule Pods?", "Kubernetes")
        == "How does Kubernetes schedule Pods?"
    )


@pytest.fixture(scope="module")
def tiny_t5_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer T5 sharing the tiny test tokenizer: real seq2seq plumbing in milliseconds."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny_t5")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_ff=64,
        d_kv=8,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    T5ForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_tiny_t5_plumbing_and_cache(tiny_t5_dir: Path, tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    params = qa_gen_params(
        qag={"model": str(tiny_t5_dir), "batch_size": 2, "max_new_tokens": 8, "cache_dir": str(tmp_path)}
    ).qag
    chunks = [{**CHUNK, "chunk_id": f"k{i}"} for i in range(3)]
    metrics = StageMetrics("t")
    pairs = list(generate_qag(chunks, params, metrics))
    assert metrics.counts["qag.generated"] == 3 and metrics.counts["qag.batches"] == 2
    assert metrics.counts["qag.new_tokens"] > 0
    assert all(
        p["question"] and p["answer"] for p in pairs
    )  # random output: parsed pairs or dropped, never empty
    metrics2 = StageMetrics("t")
    list(generate_qag(chunks, params, metrics2))
    assert metrics2.counts["qag.cached"] == 3 and metrics2.counts["qag.generated"] == 0
    gen = T5Generator(str(tiny_t5_dir))
    assert len(gen.generate([qag_input(CHUNK), qag_input(chunks[1])], 4)) == 2


def test_qag_pairs_are_widened_named_and_grounded(tiny_t5_dir: Path, tmp_path: Path) -> None:
    class Canned:
        tokenizer = None
        new_tokens = 0

        def n_tokens(self, prompt: str) -> int:
            return len(prompt)

        def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
            return [
                "question: What is the primary node agent?, answer: the primary node agent | "
                "question: Who invented bananas?, answer: purple elephants"
            ] * len(prompts)

    params = qa_gen_params(
        qag={"model": "canned", "batch_size": 4, "max_new_tokens": 8, "cache_dir": str(tmp_path)}
    ).qag
    metrics = StageMetrics("t")
    candidates = list(generate_qag([CHUNK], params, metrics, generator_factory=Canned))
    assert candidates[0]["question"] == "What is the primary node agent in Kubernetes?"
    assert candidates[0]["answer"] == "The kubelet is the primary node agent that runs on each node."
    # min_answer_words=1: the two-word made-up answer must reach (and fail) the grounding check, not the length one
    cfg = qa_gen_params(min_grounding=0.6, min_answer_words=1)
    out = finalize_pairs(candidates, {"k1": CHUNK}, cfg, metrics, ["Kubernetes"])
    assert [r["generator"] for r in out] == ["qag"]
    assert metrics.counts["dropped.low_grounding"] == 1


def test_qag_loads_pytorch_model_bin_checkpoints(tiny_t5_dir: Path, tmp_path: Path) -> None:
    """The published lmqg checkpoints ship pytorch_model.bin, not safetensors."""
    import shutil

    import torch
    from safetensors.torch import load_file

    bin_dir = tmp_path / "lmqg-like"
    shutil.copytree(tiny_t5_dir, bin_dir)
    weights = load_file(str(bin_dir / "model.safetensors"))
    (bin_dir / "model.safetensors").unlink()
    torch.save(weights, bin_dir / "pytorch_model.bin")
    gen = T5Generator(str(bin_dir))
    reference = T5Generator(str(tiny_t5_dir))
    prompts = [qag_input(CHUNK)]
    assert gen.generate(prompts, 6) == reference.generate(prompts, 6)

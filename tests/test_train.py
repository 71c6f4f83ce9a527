"""train stage on the tiny model: end-to-end LoRA, assistant-only masking, packing on/off, resume, QLoRA."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from stages.common.cli import StageError
from stages.common.jsonl import write_jsonl
from stages.common.metrics import StageMetrics
from stages.common.schema import TrainParams
from stages.train import (
    StopTraining,
    TrainPaths,
    cap_examples,
    choose_collator,
    load_chat_split,
    lora_config,
    prepare_checkpoints,
    run_fingerprint,
    sft_config,
    train,
)
from tests.pinned_params import pinned

WORDS = ["Prometheus", "scrapes", "metrics", "from", "instrumented", "jobs", "and", "stores", "them", "as", "time", "series", "with", "labels"]
# The tiny-model run: closed-book (no index), fp32 on CPU; the rest of the section is the pinned params.yaml's.
TINY_VALUES: dict[str, Any] = {
    "base_model": "tiny", "quantization": "none", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
    "target_modules": "all-linear", "context": "none", "max_length": 128, "packing": True, "packing_layout": "rows",
    "learning_rate": 0.002, "lr_scheduler": "cosine", "warmup_ratio": 0.1, "epochs": 1, "max_steps": 4,
    "batch_size": 4, "eval_batch_size": 4, "grad_accum": 1, "weight_decay": 0.0, "max_grad_norm": 1.0,
    "max_train_examples": 0, "max_eval_examples": 8, "eval_before_train": True, "seed": 42, "save_steps": 2,
    "logging_steps": 1, "merge": False, "gradient_checkpointing": False, "autocast": "none",
}


def train_params(**overrides: Any) -> TrainParams:
    """The validated train section the tests run: pinned params.yaml < TINY_VALUES < `overrides`."""
    return TrainParams.model_validate(pinned("train", **{**TINY_VALUES, **overrides}))


PARAMS = train_params()


def chat(i: int, rng: random.Random) -> dict[str, Any]:
    answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40)))
    return {"messages": [{"role": "system", "content": "You are a CNCF expert."},
                         {"role": "user", "content": f"Question number {i}: what does the scraper do?"},
                         {"role": "assistant", "content": answer}],
            "qa_id": f"q{i}", "project": "Prometheus", "source": "docs"}


def make_data(data_dir: Path, n_train: int = 48, n_val: int = 8) -> None:
    rng = random.Random(0)
    write_jsonl(data_dir / "train.jsonl", [chat(i, rng) for i in range(n_train)])
    write_jsonl(data_dir / "validation.jsonl", [chat(1000 + i, rng) for i in range(n_val)])


def make_paths(root: Path, base_dir: Path, data_dir: Path) -> TrainPaths:
    return TrainPaths(data_dir=data_dir, base_dir=base_dir, adapter_dir=root / "models" / "adapter",
                      checkpoint_dir=root / "models" / "checkpoints", merged_dir=root / "models" / "merged",
                      metrics_path=root / "metrics" / "train.json", live_dir=root / "metrics" / "train_live")


@pytest.fixture(scope="module")
def base_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stages.base_model import build_base_model

    out = tmp_path_factory.mktemp("base") / "base"
    build_base_model(str(tiny_model_dir), out)
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("merge")
    make_data(out)
    return out


@pytest.fixture(scope="module")
def trained(base_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainPaths, dict]:
    """One packed LoRA run shared by the output tests (trl/peft imports dominate the cost)."""
    paths = make_paths(tmp_path_factory.mktemp("run"), base_dir, data_dir)
    return paths, train(train_params(merge=True), paths)


# ------------------------------------------------------------------------------------------- end to end
def test_adapter_loads_with_peft_and_was_trained(trained: tuple[TrainPaths, dict]) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    paths, _ = trained
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "training_args.json"):
        assert (paths.adapter_dir / name).is_file(), name
    weights = load_file(str(paths.adapter_dir / "adapter_model.safetensors"))
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b)  # B starts at zero: nonzero means it learned
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(paths.base_dir)), str(paths.adapter_dir))
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    resolved = json.loads((paths.adapter_dir / "training_args.json").read_text())
    sft = resolved["sft_config"]
    assert sft["assistant_only_loss"] is True and sft["packing"] is True
    assert sft["bf16"] is False and sft["use_cpu"] is True and sft["activation_checkpointing"] is False
    assert resolved["lora_config"]["r"] == 8 and resolved["n_train_examples"] == 48
    merged = AutoModelForCausalLM.from_pretrained(str(paths.merged_dir))  # train.merge: true
    assert merged.num_parameters() == AutoModelForCausalLM.from_pretrained(str(paths.base_dir)).num_parameters()


def test_metrics_and_dvclive_logs(trained: tuple[TrainPaths, dict]) -> None:
    paths, metrics = trained
    written = json.loads(paths.metrics_path.read_text())
    assert written["steps"] == 4 and written["resumed_from_step"] == 0
    for key in ("train_loss", "eval_loss", "eval_loss_before", "train_tokens_per_second", "peak_rss_mb"):
        assert math.isfinite(written[key]) and written[key] > 0, key
    assert written["n_train_examples"] == 48 and written["n_validation_examples"] == 8
    assert written["in"]["train"] == 48 and metrics["steps"] == 4
    loss_tsv = paths.live_dir / "plots" / "metrics" / "train" / "loss.tsv"
    rows = loss_tsv.read_text().splitlines()
    assert rows[0] == "step\tloss" and len(rows) == 1 + 4
    eval_rows = (paths.live_dir / "plots" / "metrics" / "eval" / "loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in eval_rows[1:]] == ["0", "4"]  # before and after training
    assert (paths.live_dir / "plots" / "metrics" / "train" / "tokens_per_second.tsv").is_file()
    assert not (paths.live_dir / "dvc.yaml").exists()


# ------------------------------------------------------------------------------------------- masking, packing
@pytest.mark.parametrize(("packing", "layout"), [(False, "rows"), (True, "rows"), (True, "flat")])
def test_collated_labels_cover_only_assistant_tokens(base_dir: Path, tmp_path: Path, packing: bool,
                                                     layout: str) -> None:
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from stages.common.modeling import load_causal_lm, load_tokenizer

    rng = random.Random(1)
    records = [{"messages": chat(i, rng)["messages"]} for i in range(6)]
    params = train_params(packing=packing, packing_layout=layout, max_length=512)  # no example is truncated
    tokenizer = load_tokenizer(base_dir)
    trainer = SFTTrainer(model=load_causal_lm(base_dir), args=sft_config(params, make_paths(tmp_path, base_dir, tmp_path), "cpu"),
                         train_dataset=Dataset.from_list(records), processing_class=tokenizer,
                         peft_config=lora_config(params))
    collator = choose_collator(params, tokenizer, trainer.data_collator)
    examples = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batch = collator(examples)
    labels, input_ids = batch["labels"], batch["input_ids"]
    if packing:  # BFD bins of whole examples; rows: one row per bin; flat: trl's single row
        assert "position_ids" in batch and "attention_mask" not in batch
        assert len(examples) < 6 and input_ids.shape[0] == (len(examples) if layout == "rows" else 1)
        starts = (batch["position_ids"] == 0) & (torch.arange(input_ids.shape[1]) < torch.tensor(
            [len(e["input_ids"]) for e in examples] if layout == "rows" else [input_ids.shape[1]])[:, None])
        assert int(starts.sum()) == 6  # positions restart at each of the 6 packed examples
    else:
        assert batch["attention_mask"].shape == input_ids.shape and input_ids.shape[0] == 6
        assert (labels[batch["attention_mask"] == 0] == -100).all()
    segments = []  # contiguous runs of trained positions
    for row_ids, row_labels in zip(input_ids.tolist(), labels.tolist(), strict=True):
        run: list[int] = []
        for tok, lab in zip(row_ids, row_labels, strict=True):
            if lab != -100:
                assert lab == tok
                run.append(tok)
            elif run:
                segments.append(tokenizer.decode(run))
                run = []
        if run:
            segments.append(tokenizer.decode(run))
    expected = sorted(r["messages"][-1]["content"] + "<|im_end|>" for r in records)
    assert sorted(segments) == expected
    assert not any("Question number" in s or "CNCF expert" in s for s in segments)


def test_row_packed_batch_computes_like_separate_examples(base_dir: Path) -> None:
    """No attention across packed examples: a packed row's logits equal each example's own logits."""
    import torch

    from stages.common.modeling import load_causal_lm
    from stages.train import RowPackedCollator

    model = load_causal_lm(base_dir).eval()
    a, b = [5, 9, 17, 33, 2], [7, 11, 13]
    batch = RowPackedCollator(pad_token_id=0)([{"input_ids": a + b, "labels": a + b, "seq_lengths": [5, 3]},
                                               {"input_ids": b, "labels": b, "seq_lengths": [3]}])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 0, 0, 0, 0, 0]]
    assert batch["labels"][0, 5] == -100 and batch["labels"][1, 3:].eq(-100).all()
    with torch.no_grad():  # use_cache=False as trl's compute_loss sets it: a cache disables the packed mask
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone_a = model(input_ids=torch.tensor([a])).logits[0]
        alone_b = model(input_ids=torch.tensor([b])).logits[0]
    torch.testing.assert_close(packed[0, :5], alone_a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[0, 5:8], alone_b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[1, :3], alone_b, atol=1e-5, rtol=1e-4)


def test_cli_trains_padded_batches(base_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """`python -m stages.train` shape: params file + path flags; outputs relative to the working directory."""
    import yaml

    from stages.common.cli import run_cli
    from stages.train import main
    from tests.pinned_params import params_file

    params = train_params(packing=False, max_steps=2, save_steps=10, max_eval_examples=4, eval_before_train=False)
    # the pinned params.yaml under the test's values (closed-book, fp32: what the other tests run)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_file(train=params.model_dump())))
    monkeypatch.chdir(tmp_path)
    args = ["--data-dir", str(data_dir), "--base-dir", str(base_dir)]
    assert run_cli(main, args) == 0
    metrics = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert metrics["steps"] == 2 and metrics["packing"] is False and metrics["packing_layout"] is None
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["eval_loss"])
    assert metrics["eval_loss_before"] is None
    assert (tmp_path / "models" / "adapter" / "adapter_model.safetensors").is_file()
    assert run_cli(main, ["--data-dir", str(tmp_path / "nowhere"), "--base-dir", str(base_dir)]) == 1


# ------------------------------------------------------------------------------------------- resume
def test_killed_run_resumes_from_last_checkpoint(base_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if state.global_step == 3:
                raise StopTraining("simulated kill")

    paths = make_paths(tmp_path, base_dir, data_dir)
    params = train_params(max_steps=5, eval_before_train=False, max_eval_examples=2)
    with pytest.raises(StopTraining):
        train(params, paths, callbacks=[Kill()])
    assert (paths.checkpoint_dir / "checkpoint-2" / "optimizer.pt").is_file()
    assert not paths.adapter_dir.exists()

    class Record(TrainerCallback):
        steps: list[int] = []

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.steps.append(state.global_step)

    resumed = train(params, paths, callbacks=[Record()])
    assert Record.steps == [3, 4, 5]  # optimizer steps run by the second process: none redone
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 5
    state = json.loads((paths.checkpoint_dir / "checkpoint-4" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4]  # steps 1-2 restored, 3-4 new

    adapter = (paths.adapter_dir / "adapter_model.safetensors").read_bytes()
    again = train(params, paths)  # a rerun of a finished run reuses its last checkpoint: no extra step
    assert again["steps"] == 5 and again["eval_loss"] == resumed["eval_loss"]
    assert (paths.adapter_dir / "adapter_model.safetensors").read_bytes() == adapter

    changed = train(train_params(max_steps=1, eval_before_train=False, max_eval_examples=2, learning_rate=0.0005),
                    paths)  # other params: start clean
    assert changed["resumed_from_step"] == 0 and changed["steps"] == 1
    assert sorted(p.name for p in paths.checkpoint_dir.glob("checkpoint-*")) == ["checkpoint-1"]


def test_cpu_autocast_follows_params(tmp_path: Path) -> None:
    """train.autocast: bf16 makes accelerate run CPU forwards under bf16 autocast; none keeps fp32."""
    paths = make_paths(tmp_path, tmp_path, tmp_path)
    assert sft_config(train_params(autocast="bf16"), paths, "cpu").bf16 is True
    assert sft_config(train_params(autocast="none"), paths, "cpu").bf16 is False


def test_prepare_checkpoints_keeps_matching_and_clears_others(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    assert prepare_checkpoints(ckpt, "aaa") is None
    for step in (2, 4, 6):
        (ckpt / f"checkpoint-{step}").mkdir()
    for step in (2, 4):  # checkpoint-6 was killed mid-save: no trainer_state.json
        (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert prepare_checkpoints(ckpt, "aaa") == ckpt / "checkpoint-4"
    assert prepare_checkpoints(ckpt, "bbb") is None
    assert not list(ckpt.glob("checkpoint-*"))


def test_fingerprint_follows_params_and_data_not_output_knobs(tmp_path: Path) -> None:
    records = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    base = run_fingerprint(PARAMS, records, [], tmp_path)
    assert run_fingerprint(train_params(merge=True, save_steps=99, logging_steps=7), records, [], tmp_path) == base
    assert run_fingerprint(train_params(learning_rate=0.1), records, [], tmp_path) != base
    assert run_fingerprint(train_params(weight_decay=0.01), records, [], tmp_path) != base
    assert run_fingerprint(train_params(max_grad_norm=0.5), records, [], tmp_path) != base
    assert run_fingerprint(PARAMS, records * 2, [], tmp_path) != base


# ------------------------------------------------------------------------------------------- data handling
def test_bad_records_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [good, {"messages": []}, {"messages": [{"role": "user", "content": "only a question"}]},
                       {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}])
    metrics = StageMetrics("train")
    with caplog.at_level("WARNING"):
        kept = load_chat_split(path, metrics, "train")
    assert [k["messages"] for k in kept] == [good["messages"]]  # ids ride along for RAFT (qa_id, doc_id, chunk_id)
    counts = metrics.as_dict()
    assert counts["in"]["train"] == 4 and counts["out"]["train"] == 1
    assert counts["dropped"]["train"] == {"no_messages": 1, "no_final_assistant_turn": 1, "bad_message": 1}
    assert sum(str(path) in r.getMessage() for r in caplog.records) == 3


def test_cap_is_seeded_and_keeps_order() -> None:
    records = [{"i": i} for i in range(100)]
    capped = cap_examples(records, 10, seed=7)
    assert capped == cap_examples(records, 10, seed=7) and len(capped) == 10
    assert [r["i"] for r in capped] == sorted(r["i"] for r in capped)
    assert cap_examples(records, 0, seed=7) is records


def test_missing_training_data_is_a_clear_error(base_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(StageError, match="run the merge stage"):
        train(PARAMS, make_paths(tmp_path, base_dir, tmp_path / "nowhere"))


# ------------------------------------------------------------------------------------------- QLoRA
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_lora_on_cpu(base_dir: Path, data_dir: Path, tmp_path: Path, quantization: str) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    from stages.common.modeling import load_causal_lm

    layer = bnb.nn.Linear4bit if quantization == "4bit" else bnb.nn.Linear8bitLt
    model = load_causal_lm(base_dir, quantization, "cpu")
    if not any(isinstance(m, layer) for m in model.modules()):
        pytest.skip(f"bitsandbytes did not quantize to {quantization} on this CPU")
    metrics = train(train_params(quantization=quantization, max_steps=2, save_steps=10, max_eval_examples=4,
                                 eval_before_train=False), make_paths(tmp_path, base_dir, data_dir))
    assert metrics["quantization"] == quantization and metrics["steps"] == 2
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["eval_loss"])

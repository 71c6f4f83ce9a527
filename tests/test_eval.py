"""eval stage: metrics, MCQ scoring, perplexity masking, contamination, and one end-to-end run on a tiny model."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from stages.common.jsonl import read_json, read_jsonl, write_jsonl
from stages.eval import contamination as contam
from stages.eval import metrics as tm
from stages.eval.mcq import McqItem, choose, item_correct, parse_item
from tests.conftest import MCQ_FIXTURE, SYSTEM, tiny_eval_params, tiny_settings
from tests.pinned_params import DECONTAM_NGRAM

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- model-free units

def test_rouge_bleu_chrf_sane() -> None:
    assert tm.rouge_l("Helm installs charts", "Helm installs charts") == pytest.approx(1.0)
    assert tm.rouge_l("completely unrelated words", "Helm installs charts") == 0.0
    assert tm.rouge_l("", "Helm installs charts") == 0.0
    # stemming: "installing" matches "installs"
    assert tm.rouge_l("Helm installing charts", "Helm installs charts") == pytest.approx(1.0)
    refs = ["etcd stores the cluster state in a key value store"]
    assert tm.corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert tm.corpus_chrf(["nothing alike here"], refs) < tm.corpus_chrf(refs, refs)


def test_repetition_and_length() -> None:
    assert tm.repeated_ngram_share("a b c d e f g") == 0.0
    loop = " ".join(["the pod restarts"] * 10)
    assert tm.repeated_ngram_share(loop) > 0.8
    stats = tm.length_stats(["one two three", "four five"])
    assert stats["answer_words_mean"] == pytest.approx(2.5)


def test_bootstrap_ci_brackets_mean_and_is_seeded() -> None:
    values = [0.1, 0.4, 0.35, 0.8, 0.0, 0.55, 0.2, 0.9, 0.3, 0.45]
    lo, hi = tm.bootstrap_ci(values, 500, seed=7)
    mean = sum(values) / len(values)
    assert lo < mean < hi
    assert hi - lo < 0.6
    assert tm.bootstrap_ci(values, 500, seed=7) == [lo, hi]
    row = tm.paired_with_ci(values, [v + 0.1 for v in values], 500, seed=3)
    assert row["delta"] == pytest.approx(0.1)
    d_lo, d_hi = row["ci95"]["delta"]
    assert d_lo == pytest.approx(0.1) and d_hi == pytest.approx(0.1)  # constant paired shift: no spread
    assert row["ci95"]["base"][0] <= row["base"] <= row["ci95"]["base"][1]


def test_choose_picks_much_likelier_option_and_normalises() -> None:
    # option 2 is far likelier under every normalisation
    assert choose([-40.0, -35.0, -3.0, -50.0], [4, 4, 4, 4], ["aaaa", "bbbb", "cccc", "dddd"], "sum") == 2
    # summed log-likelihood favours the short option; per-token and per-char favour the long, fluent one
    logprobs, n_tokens, texts = [-6.0, -10.0], [2, 10], ["ab", "a much longer option"]
    assert choose(logprobs, n_tokens, texts, "sum") == 0
    assert choose(logprobs, n_tokens, texts, "token") == 1
    assert choose(logprobs, n_tokens, texts, "char") == 1
    item = McqItem("x", "q?", [("b", "ab"), ("a", "a much longer option")], "a", "p")
    assert item_correct(item, list(zip(logprobs, n_tokens, strict=True))) == {"sum": 0, "token": 1, "char": 1}


def test_mcq_options_shuffled_with_seed() -> None:
    rows = list(read_jsonl(MCQ_FIXTURE))
    items = [parse_item(r, seed=42) for r in rows]
    assert [parse_item(r, seed=42) for r in rows] == items  # deterministic
    first_ids = [it.options[0][0] for it in items]
    assert len(set(first_ids)) > 1, "correct answer 'a' must not stay first everywhere"
    for row, it in zip(rows, items, strict=True):
        assert it.answer == row["answer"] and len(it.options) == 4
    assert any(parse_item(r, seed=1).options != it.options for r, it in zip(rows, items, strict=True))
    with pytest.raises(ValueError):
        parse_item({"id": "bad", "question": "q", "options": {"a": "x", "b": "y"}, "answer": "z"}, 42)


def test_contamination_on_constructed_overlap(tmp_path: Path) -> None:
    leaked = "the kubelet registers the node with the api server and then reports pod status every ten seconds"
    train = tmp_path / "train.jsonl"
    write_jsonl(train, [{"messages": [{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": "What does the kubelet do?"},
                                      {"role": "assistant", "content": f"In short: {leaked}."}]}])
    index = contam.train_index(train, 13)
    clean = "Prometheus stores samples in a local time series database on disk, compacted into two hour blocks."
    result = contam.contamination([f"Q? {leaked.upper()}", clean, "too short"], index, 13)
    assert result["n_contaminated"] == 1 and result["n_too_short"] == 1
    assert result["share"] == pytest.approx(1 / 3)
    assert contam.contamination([clean], contam.train_index(tmp_path / "missing.jsonl", 13), 13)["share"] == 0.0


# ---------------------------------------------------------------- tiny model

def _paths(root: Path, out: str, base: Path, adapter: Path) -> Any:
    from stages.eval.pipeline import EvalPaths

    return EvalPaths(base_dir=base, adapter_dir=adapter, index_dir=root / "data/index", train=root / "data/merge/train.jsonl",
                     test=root / "data/merge/test.jsonl", metrics=root / out / "metrics/eval.json",
                     predictions=root / out / "data/eval/predictions.jsonl", report=root / out / "metrics/report.md",
                     plots_dir=root / out / "metrics/eval_plots")


@pytest.fixture(scope="module")
def eval_run(workspace: Path, tiny_model_dir: Path, tiny_adapter: Path) -> dict[str, Any]:
    from stages.eval.pipeline import run_eval

    return run_eval(_paths(workspace, "run1", tiny_model_dir, tiny_adapter), tiny_eval_params(workspace), tiny_settings(),
                    DECONTAM_NGRAM)


ARMS = ("base_closed", "tuned_closed", "base_rag", "tuned_rag")


def test_end_to_end_metrics_finite_and_arms_differ(eval_run: dict[str, Any], workspace: Path) -> None:
    sets = eval_run["sets"]
    assert list(sets) == ["merge-test", "cncf-qa", "cncf-mcq"]  # the absent set is skipped, not fatal
    assert sets["merge-test"]["n"] == 4  # max_examples subset of 5
    assert sets["cncf-qa"]["n"] == 2
    assert eval_run["run"]["errors"]["missing_set"]["absent"] == 1
    for name in ("merge-test", "cncf-qa"):
        arms = sets[name]["arms"]
        assert list(arms) == [*ARMS, "retrieval_only", "question_only"]
        for arm in ARMS:
            for metric in ("bleu", "chrf", "perplexity", "answer_words_mean", "repeated_4gram_share"):
                assert math.isfinite(arms[arm][metric]), (name, arm, metric)
            lo, hi = arms[arm]["rouge_l"]["ci95"]
            assert lo <= arms[arm]["rouge_l"]["mean"] <= hi
            assert arms[arm]["perplexity"] > 1
        assert len({arms[arm]["perplexity"] for arm in ARMS}) == 4  # adapter and excerpts both change the scores
        for arm in ("base_rag", "tuned_rag"):
            assert 0.0 <= arms[arm]["citation_rate"] <= 1.0 and "abstain_when_missed" in arms[arm]
        assert "faithfulness" not in arms["base_closed"]
        assert set(sets[name]["deltas"]) >= {"tuned_rag-vs-base_closed", "tuned_rag-vs-tuned_closed",
                                             "tuned_rag-vs-retrieval_only", "tuned_rag-vs-question_only"}
    # the source document of every merge-test item is in the tiny index and retrieval finds it
    assert sets["merge-test"]["arms"]["tuned_rag"]["source_retrieved"] == 1.0
    assert sets["cncf-qa"]["arms"]["tuned_rag"]["source_retrieved"] == 1.0  # h2 via checked_against
    # retrieval_only copies the top excerpt: the answers are in the chunks, so it scores high
    assert sets["merge-test"]["arms"]["retrieval_only"]["rouge_l"]["mean"] > 0.5
    # question_only is the question itself: its ROUGE-L is what restating the question scores
    from stages.eval import metrics as tm

    echo = [tm.rouge_l(p["question"], p["reference"]) for p in read_jsonl(workspace / "run1/data/eval/predictions.jsonl")
            if p["set"] == "merge-test"]
    assert sets["merge-test"]["arms"]["question_only"]["rouge_l"]["mean"] == pytest.approx(sum(echo) / len(echo))
    mcq = sets["cncf-mcq"]
    assert mcq["n"] == 4 and mcq["chance"] == pytest.approx(0.25)
    for arm in ARMS:
        for key in ("accuracy_token_norm", "accuracy_char_norm"):
            assert 0.0 <= mcq["arms"][arm][key] <= 1.0
        assert 0.0 <= mcq["arms"][arm]["accuracy"]["mean"] <= 1.0
    preds = list(read_jsonl(workspace / "run1/data/eval/predictions.jsonl"))
    assert [(p["set"], p["qa_id"]) for p in preds] == sorted((p["set"], p["qa_id"]) for p in preds)
    assert len(preds) == 6
    assert any(p["base_closed"] != p["tuned_closed"] for p in preds), "the adapter must change the greedy answers"
    assert all(p["sources"] and p["sources"][0]["n"] == 1 for p in preds)


def test_eval_answers_are_what_the_inference_core_gives(eval_run: dict[str, Any], workspace: Path,
                                                       tiny_model_dir: Path, tiny_adapter: Path) -> None:
    """What is evaluated is what users get: the same question through Assistant.answer gives the same text."""
    from stages.common.inference import GenerationOptions
    from stages.eval.pipeline import load_assistant

    params = tiny_eval_params(workspace)
    assistant, _ = load_assistant(_paths(workspace, "x", tiny_model_dir, tiny_adapter), params,
                                  tiny_settings(SYSTEM))
    pred = next(p for p in read_jsonl(workspace / "run1/data/eval/predictions.jsonl") if p["set"] == "merge-test")
    options = GenerationOptions(max_new_tokens=params.max_new_tokens, repetition_penalty=params.repetition_penalty)
    conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": pred["question"]}]
    assert assistant.answer(conversation, options=options).text == pred["tuned_rag"]
    assert assistant.answer(conversation, closed_book=True, options=options).text == pred["tuned_closed"]
    with assistant.base_only():
        assert assistant.answer(conversation, options=options).text == pred["base_rag"]


def test_contamination_and_per_project(eval_run: dict[str, Any]) -> None:
    sets = eval_run["sets"]
    assert sets["merge-test"]["contamination"]["share"] == 0.0
    assert sets["cncf-qa"]["contamination"]["n_contaminated"] == 1  # h1 repeats a training 13-gram
    per_project = sets["merge-test"]["per_project"]
    assert sum(row["n"] for row in per_project.values()) == 4
    for row in per_project.values():
        assert set(row["rouge_l"]) == {*ARMS, "retrieval_only", "question_only"}


def test_report_and_plots(eval_run: dict[str, Any], workspace: Path) -> None:
    out = workspace / "run1"
    report = (out / "metrics/report.md").read_text(encoding="utf-8")
    for name in ("merge-test", "cncf-qa", "cncf-mcq"):
        assert f"## {name}" in report
    assert "Contamination:" in report and "95 % CI" in report and "Example answers" in report
    assert "tuned_rag-vs-base_closed" in report and "retrieval_only" in report
    pngs = sorted((out / "metrics/eval_plots").glob("*.png"))
    assert {p.name for p in pngs} >= {"rouge_l.png", "perplexity.png", "accuracy.png",
                                      "per_project_rouge_l_merge-test.png"}
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC)
        width, height = struct.unpack(">II", data[16:24])
        assert width > 100 and height > 100
        assert f"eval_plots/{png.name}" in report
    saved = read_json(out / "metrics/eval.json")
    assert json.dumps(saved, allow_nan=False)  # strict JSON: no NaN
    assert saved["sets"]["merge-test"]["deltas"]["tuned_rag-vs-base_closed"]["rouge_l"]["ci95"][0] is not None


def test_rerun_is_byte_identical(eval_run: dict[str, Any], workspace: Path, tiny_model_dir: Path,
                                 tiny_adapter: Path) -> None:
    from stages.eval.pipeline import run_eval

    run_eval(_paths(workspace, "run2", tiny_model_dir, tiny_adapter), tiny_eval_params(workspace), tiny_settings(),
             DECONTAM_NGRAM)
    for rel in ("data/eval/predictions.jsonl", "metrics/report.md"):
        assert (workspace / "run1" / rel).read_bytes() == (workspace / "run2" / rel).read_bytes(), rel


def test_perplexity_counts_assistant_tokens_only(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages.eval.perplexity import assistant_sequence, masked_logprobs

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    answer = "Helm installs charts."
    short = [{"role": "user", "content": "What is Helm?"}, {"role": "assistant", "content": answer}]
    long = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is Helm, exactly, please?"},
            {"role": "assistant", "content": answer}]
    seqs = [assistant_sequence(tok, m) for m in (short, long)]
    for ids, mask in seqs:
        assert tok.decode([t for t, m in zip(ids, mask, strict=True) if m]) == answer + "<|im_end|>"
    scores = masked_logprobs(model, seqs, pad_id=tok.pad_token_id, batch_size=2)
    n_answer = sum(seqs[0][1])
    assert [n for _, n in scores] == [n_answer, n_answer]  # a longer prompt adds no scored tokens
    ids, mask = seqs[1]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
    manual = sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids)) if mask[t])
    assert scores[1][0] == pytest.approx(manual, rel=1e-4)  # padding in the batch changed nothing


def test_cli_missing_inputs_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from stages.common.cli import run_cli
    from stages.eval.__main__ import main
    from tests.pinned_params import params_file

    params = params_file(eval={"sets": [], "max_examples": 5, "batch_size": 2, "max_new_tokens": 4})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert run_cli(main, ["--params", "params.yaml"]) == 1
    assert "data/merge/test.jsonl not found" in capsys.readouterr().err  # the inputs, not the params


@pytest.mark.parametrize("section, change, message", [
    ("inference", {"k": -1}, "inference.k: -1"),
    ("eval", {"sets": [{"name": "merge-test", "path": "x.jsonl", "format": "qa"}]}, "merge-test"),
])
def test_cli_bad_params_refused_before_inputs_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], section: str,
                                                       change: dict[str, Any], message: str) -> None:
    """eval and the inference settings it answers with are validated up front: a bad value is named in one line
    before the (here missing) inputs are looked at, and nothing is written."""
    import yaml

    from stages.common.cli import run_cli
    from stages.eval.__main__ import main
    from tests.pinned_params import params_file

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_file(**{section: change})), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert run_cli(main, ["--params", "params.yaml"]) == 1
    err = capsys.readouterr().err
    assert message in err and "not found" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_bad_rows_are_counted_and_empty_set_survives(tmp_path: Path, tiny_model_dir: Path, tiny_adapter: Path,
                                                      workspace: Path) -> None:
    from stages.eval.pipeline import run_eval

    test = tmp_path / "data/merge/test.jsonl"
    test.parent.mkdir(parents=True)
    shutil.copytree(workspace / "data/index", tmp_path / "data/index")
    test.write_text('{"qa_id": "x", "messages": [{"role": "user", "content": "q?"}]}\n{not json\n', encoding="utf-8")
    params = tiny_eval_params(tmp_path, sets=[])
    report = run_eval(_paths(tmp_path, "out", tiny_model_dir, tiny_adapter), params, tiny_settings(), DECONTAM_NGRAM)
    assert report["sets"]["merge-test"]["n"] == 0
    assert report["run"]["dropped"]["merge-test"] == {"bad_json": 1, "invalid": 1}
    saved = json.loads((tmp_path / "out/metrics/eval.json").read_text(encoding="utf-8"))
    assert saved["sets"]["merge-test"]["arms"]["base_closed"]["rouge_l"]["mean"] is None  # NaN written as null
    assert (tmp_path / "out/metrics/report.md").is_file()
    assert (tmp_path / "out/data/eval/predictions.jsonl").read_text(encoding="utf-8") == ""


def test_shared_prefix_option_scores_equal_separate_passes(tiny_model_dir: Path) -> None:
    """Reading the prompt once (KV cache) must give the same option scores as scoring each option separately."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages.eval.mcq import score_continuations
    from stages.eval.perplexity import continuation_sequence, masked_logprobs

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt = "<|im_start|>user\nWhich port does etcd use for clients?<|im_end|>\n<|im_start|>assistant\n"
    options = ["2379", "port 2380 for peers", "8080"]
    separate = masked_logprobs(model, [continuation_sequence(tok, prompt, o) for o in options],
                               pad_id=tok.pad_token_id, batch_size=3)
    shared = score_continuations(model, tok(prompt, add_special_tokens=False)["input_ids"],
                                 [tok(o, add_special_tokens=False)["input_ids"] for o in options])
    for (a, n), (b, m) in zip(separate, shared, strict=True):
        assert n == m and a == pytest.approx(b, rel=1e-4, abs=1e-4)

"""Competitors: a model run through stages.competitors answers exactly as the same model does inside eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from stages.common.cli import StageError
from stages.common.params import ParamsError
from tests.conftest import tiny_eval_params
from tests.pinned_params import params_file


@pytest.fixture(scope="module")
def project(workspace: Path, tiny_model_dir: Path, tiny_adapter: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    """eval's default layout (data/, metrics/, params.yaml) with the pinned eval run of the tiny model done."""
    import shutil

    from stages.eval.pipeline import EvalPaths, run_eval

    root = tmp_path_factory.mktemp("competitors")
    for sub in ("data", "evalsets"):
        shutil.copytree(workspace / sub, root / sub)
    from stages.common.inference import InferenceSettings

    eval_params = tiny_eval_params(root, sets=[{"name": "cncf-qa", "path": "evalsets/qa.jsonl", "format": "qa"},
                                               tiny_eval_params(root).sets[1].model_dump()])
    params = params_file(eval=eval_params.model_dump(), merge={"system_prompt": ""},
                         competitors={"models": [{"name": "tiny-base", "model": str(tiny_model_dir)}],
                                      "batch_size": 3})
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        run_eval(EvalPaths(base_dir=tiny_model_dir, adapter_dir=tiny_adapter), eval_params,
                 InferenceSettings.from_params(params), params["merge"]["decontam_ngram"])
    return root


def test_competitor_matches_the_same_model_inside_eval(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.competitors import main

    monkeypatch.chdir(project)
    main(["--params", "params.yaml"])
    own = json.loads((project / "metrics/eval.json").read_text())
    theirs = json.loads((project / "metrics/competitors/tiny-base.json").read_text())
    assert set(theirs["sets"]) == set(own["sets"]) == {"merge-test", "cncf-qa", "cncf-mcq"}
    for name, result in theirs["sets"].items():
        assert set(result["arms"]) == {"tiny-base_closed", "tiny-base_rag"}
        assert result["n"] == own["sets"][name]["n"]
        key = "rouge_l" if result["format"] == "qa" else "accuracy"
        # the competitor is the untuned base: its two arms are eval's base arms, to the last digit
        assert result["arms"]["tiny-base_closed"][key] == own["sets"][name]["arms"]["base_closed"][key]
        assert result["arms"]["tiny-base_rag"][key] == own["sets"][name]["arms"]["base_rag"][key]
    pair = theirs["sets"]["merge-test"]["deltas"]["tuned_rag-vs-tiny-base_rag"]["rouge_l"]
    assert pair == own["sets"]["merge-test"]["deltas"]["tuned_rag-vs-base_rag"]["rouge_l"]
    assert "tiny-base_rag-vs-tiny-base_closed" in theirs["sets"]["cncf-mcq"]["deltas"]
    table = (project / "metrics/competitors/report.md").read_text()
    assert "| merge-test | 4 | rouge_l |" in table and "tiny-base_rag" in table
    assert "tuned_rag-vs-tiny-base_rag" in table
    assert (project / "models/competitors/tiny-base/config.json").is_file()


@pytest.mark.parametrize("models, message", [
    ([{"name": "../escape", "model": "x"}], "competitors.models.0.name: '../escape' — "),
    ([{"name": "ok"}], "competitors.models.0.model: missing"),
    ([], "no competitors"),
])
def test_bad_competitor_params_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models: list,
                                           message: str) -> None:
    from stages.competitors import main

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_file(competitors={"models": models})))
    monkeypatch.chdir(tmp_path)
    with pytest.raises((StageError, ParamsError), match=message):
        main(["--params", "params.yaml"])
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


def test_bad_inference_params_are_refused_before_any_model_is_built(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.competitors import main

    params = params_file(competitors={"models": [{"name": "ok", "model": "not-a-model"}]}, inference={"k": -1})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match="inference.k: -1"):
        main(["--params", "params.yaml"])
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


def test_renamed_maps_whole_arm_names_only() -> None:
    from stages.competitors import _renamed

    arms = {"base_closed": "my_base_rag_closed", "base_rag": "my_base_rag_rag"}
    assert _renamed("base_rag-vs-base_closed", arms) == "my_base_rag_rag-vs-my_base_rag_closed"
    assert _renamed("tuned_rag-vs-base_rag", arms) == "tuned_rag-vs-my_base_rag_rag"
    assert _renamed("base_rag-vs-retrieval_only", arms) == "my_base_rag_rag-vs-retrieval_only"

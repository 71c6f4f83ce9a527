"""The train stage's launcher: one process or `accelerate launch` from params, and a 2-process CPU DDP (gloo) run
through the real `dvc` CLI whose outputs land in dvc.lock."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import yaml

from stages.common.cli import StageError
from stages.common.params import ParamsError
from stages.common.schema import LaunchParams, TrainParams, validate_params
from stages.launch import launch_command
from tests.pinned_params import pinned
from tests.test_pipeline_e2e import copy_project, run
from tests.test_train import PARAMS, make_data

CPU_DDP = "configs/accelerate/cpu_ddp.yaml"


def _launch(**values: object) -> LaunchParams:
    return validate_params("train", TrainParams, pinned("train", launch=values)).launch


def test_one_process_is_plain_python() -> None:
    assert launch_command("train", _launch(num_processes=1)) == [sys.executable, "-m", "stages.train"]


def test_several_processes_go_through_accelerate(repo_root: Path, monkeypatch) -> None:
    monkeypatch.chdir(repo_root)
    cmd = launch_command("train", _launch(num_processes=4, config="configs/accelerate/fsdp.yaml",
                                          main_process_port=29600), ["--params", "p.yaml"])
    assert cmd == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/fsdp.yaml",
                   "--num_processes", "4", "--main_process_port", "29600", "-m", "stages.train", "--params", "p.yaml"]


@pytest.mark.parametrize(("launch", "message"), [
    ({"num_processes": 0}, "train.launch.num_processes: 0 — must be an integer ≥ 1"),
    ({"num_processes": "two"}, "train.launch.num_processes: 'two' — must be an integer"),
    ({"num_processes": 2, "config": CPU_DDP, "main_process_port": 70000},
     "train.launch.main_process_port: 70000 — must be an integer ≤ 65535"),
])
def test_bad_launch_params_are_refused_in_one_line(launch, message) -> None:
    with pytest.raises(ParamsError) as err:
        _launch(**launch)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("config", ["/etc/passwd.yaml", "../outside/ddp.yaml", "configs/accelerate/missing.yaml"])
def test_launch_config_outside_the_project_is_refused(repo_root: Path, monkeypatch, config) -> None:
    monkeypatch.chdir(repo_root)
    with pytest.raises(StageError, match="inside the project"):
        launch_command("train", _launch(num_processes=2, config=config))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_cpu_ddp_train_through_dvc(repo_root: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """`dvc repro train` with train.launch.num_processes=2 runs two gloo ranks and records the adapter in dvc.lock."""
    from stages.base_model import build_base_model

    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    project = copy_project(repo_root, tmp_path / "project", env)
    build_base_model(str(tiny_model_dir), project / "models" / "base")
    make_data(project / "data" / "merge", n_train=32, n_val=4)
    (project / "data" / "index").mkdir(parents=True)  # a dep of the stage; read only with train.context=rag
    (project / "data" / "index" / "meta.json").write_text("{}")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"] = {**PARAMS.model_dump(), "max_steps": 2, "save_steps": 10, "eval_before_train": False,
                       "launch": {"num_processes": 2, "config": CPU_DDP, "main_process_port": _free_port()}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))

    out = run(["dvc", "repro", "--single-item", "train"], project, env)

    assert "accelerate.commands.launch" in out and "--num_processes 2" in out
    metrics = json.loads((project / "metrics" / "train.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 2 and metrics["device"] == "cpu"
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["train"]
    assert lock["cmd"].startswith("python -m stages.launch train")
    assert lock["params"]["params.yaml"]["train"]["launch"]["num_processes"] == 2
    outs = {o["path"]: o for o in lock["outs"]}
    assert outs["models/adapter"]["md5"] and outs["models/adapter"]["nfiles"] >= 3
    assert (project / "models" / "adapter" / "adapter_model.safetensors").is_file()
    status = json.loads(run(["dvc", "status", "--json", "train"], project, env).strip() or "{}")
    assert "train" not in status  # recorded: nothing to rerun
    # One copy on disk: the workspace file is a hard link to the cache object (.dvc/config cache.type).
    weights = project / "models" / "adapter" / "adapter_model.safetensors"
    digest = hashlib.md5(weights.read_bytes()).hexdigest()
    cached = project / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]
    assert cached.is_file() and os.path.samefile(weights, cached)


# ------------------------------------------------------------------------------------------- params profiles
@pytest.mark.parametrize("profile", sorted(Path(__file__).resolve().parents[1].glob("configs/profiles/*.yaml")))
def test_profiles_only_set_existing_params(repo_root: Path, profile: Path, monkeypatch) -> None:
    from stages.common.profiles import profile_flags

    flags = profile_flags(profile, repo_root / "params.yaml")
    settings = dict(flag.split("=", 1) for flag in flags[1::2])
    assert flags[0::2] == ["-S"] * len(settings)
    assert settings["train.quantization"] == "4bit" and settings["train.base_dtype"] == "auto"
    launch = {k.removeprefix("train.launch."): v for k, v in settings.items() if k.startswith("train.launch.")}
    monkeypatch.chdir(repo_root)
    values = {k: yaml.safe_load(v) for k, v in launch.items()}  # the -S values, as DVC writes them to params.yaml
    launch_command("train", _launch(**{"config": "configs/accelerate/ddp.yaml", **values}))  # valid as the stage reads it


def test_profile_with_an_unknown_key_is_refused(repo_root: Path, tmp_path: Path) -> None:
    from stages.common.profiles import profile_flags

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rat: 0.1\n")
    with pytest.raises(StageError, match="train.learning_rat is not a key"):
        profile_flags(bad, repo_root / "params.yaml")

"""Run a training stage as one process or under `accelerate launch`, as `train.launch` in params.yaml says.

Why a launcher stage command: `accelerate launch -m stages.train` typed by hand runs outside DVC, so multi-GPU
results never reach dvc.lock. With `cmd: python -m stages.launch train` in dvc.yaml, `dvc repro` (and `dvc exp run
-S train.launch.num_processes=4`) starts the same module on one process or N, and DVC records what it wrote.

train.launch:
  num_processes: 1            1 = plain `python -m stages.train`; N > 1 = accelerate launch with N processes
  config: configs/accelerate/ddp.yaml   the accelerate config (ddp.yaml, fsdp.yaml; cpu_ddp.yaml for CPU/gloo)
  main_process_port: 0        rendezvous port; 0 = accelerate's default (29500)

Bad values are refused with one line before anything runs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.common.cli import StageError, run_cli, setup_logging, stage_parser
from stages.common.schema import LaunchParams, TrainParams, load_stage_params

log = logging.getLogger(__name__)

MODULES = {"train": "stages.train"}  # stage name -> module; only what can run under several processes
CONFIG_DIR = Path("configs/accelerate")


def launch_command(stage: str, launch: LaunchParams, extra: Sequence[str] = ()) -> list[str]:
    """The argv that runs `stage` with `launch` settings (ranges are the schema's; the config file is checked here,
    so a bad param fails before any run)."""
    if stage not in MODULES:
        raise StageError(f"stages.launch runs {', '.join(sorted(MODULES))}, not {stage!r}")
    module = MODULES[stage]
    if launch.num_processes == 1:
        return [sys.executable, "-m", module, *extra]
    config = Path(launch.config)
    if config.suffix not in (".yaml", ".yml") or config.is_absolute() or ".." in config.parts \
            or not config.is_file():
        raise StageError(f"{stage}.launch.config must be an accelerate YAML inside the project "
                         f"(e.g. {CONFIG_DIR}/ddp.yaml), got {str(config)!r}")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "--num_processes", str(launch.num_processes)]
    if launch.main_process_port:
        cmd += ["--main_process_port", str(launch.main_process_port)]
    return [*cmd, "-m", module, *extra]


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("stage", choices=sorted(MODULES), help="the stage to run")
    args, extra = parser.parse_known_args(argv)
    setup_logging(args.log_level)
    launch = load_stage_params(args.stage, TrainParams, args.params).launch
    cmd = launch_command(args.stage, launch, [*(["--params", args.params] if args.params else []), *extra])
    log.info("running %s", " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)  # the launched run's exit status is the stage's


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

"""Resumable training: checkpoints stamped with a fingerprint of params, data and base model.

A killed run resumes from the last complete checkpoint of the same fingerprint; a run with other params or data
starts clean (its stale checkpoints are cleared by the main process only).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.common.jsonl import dumps, read_json, write_json

if TYPE_CHECKING:
    from stages.common.schema import TrainParams

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "run_fingerprint.json"
# Params that only change what is written, not what is learned: changing them keeps the checkpoints resumable.
OUTPUT_ONLY_KEYS = {"merge", "save_steps", "logging_steps"}


def run_fingerprint(params: TrainParams, train: list[dict], validation: list[dict], base_dir: Path) -> str:
    """Hash of everything that changes the optimisation: a checkpoint from another fingerprint is not resumable.
    Every train param counts (the whole validated section, sorted keys) except OUTPUT_ONLY_KEYS."""
    digest = hashlib.sha256()
    digest.update(dumps({k: v for k, v in params.model_dump().items() if k not in OUTPUT_ONLY_KEYS}).encode())
    for record in (*train, {"split": "validation"}, *validation):
        digest.update(dumps(record).encode())
    for name in ("config.json", "base_model.json", "model.safetensors"):
        path = base_dir / name
        if path.is_file():  # size + mtime-free identity: hashing 500 MB of weights each run is not worth it
            digest.update(f"{name}:{path.stat().st_size}".encode())
            if path.suffix == ".json":
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def prepare_checkpoints(checkpoint_dir: Path, fingerprint: str, main: bool = True) -> Path | None:
    """Return the last complete checkpoint of this fingerprint; clear checkpoints of any other.

    Only the main process (`main`) deletes or writes; the other ranks of a multi-process launch only read, and
    reach the same answer whatever the interleaving (a mismatching or missing stamp means a fresh start)."""
    stamp = checkpoint_dir / FINGERPRINT_FILE
    matches = stamp.is_file() and read_json(stamp).get("fingerprint") == fingerprint
    if matches or not main:
        return _last_complete_checkpoint(checkpoint_dir) if matches else None
    if checkpoint_dir.exists():
        log.info("clearing %s: its checkpoints come from other params or data", checkpoint_dir)
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    write_json(stamp, {"fingerprint": fingerprint})
    return None


def _last_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    complete = [p for p in checkpoint_dir.glob("checkpoint-*")
                if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def is_finished(checkpoint: Path | None) -> bool:
    if checkpoint is None:
        return False
    state = read_json(checkpoint / "trainer_state.json")
    return state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]


def restore_finished(trainer: Any, checkpoint: Path) -> float | None:
    """Load a finished run's adapter weights and trainer state; returns the mean logged training loss."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState

    set_peft_model_state_dict(trainer.model, load_file(str(checkpoint / "adapter_model.safetensors")))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return sum(losses) / len(losses) if losses else None


def step_of(checkpoint: Path | None) -> int:
    return int(checkpoint.name.split("-")[-1]) if checkpoint else 0

"""Epoch checkpoints of a packed task (all folds of a job in one stacked model), so a
retried packed task resumes where it stopped, like workers.checkpointing for one fold."""
from __future__ import annotations

from dataclasses import dataclass

from workers.checkpointing import (from_bytes, random_state, restore_random_state,
                                   restore_training_memory, to_bytes, training_memory)
from workers.packed_model import PackedMLP
from workers.packed_optimizer import PackedOptimizer


@dataclass
class PackedProgress:
    """What a packed task's next epoch depends on."""
    model: PackedMLP
    optimizer: PackedOptimizer
    folds: list  # of workers.packed_training.PackedFold
    epoch: int = 0


def snapshot_pack(progress: PackedProgress) -> bytes:
    folds = [{**training_memory(f.stopper, f.average, f.generator),
              "active": f.active, "error": f.error, "epochs_done": f.epochs_done}
             for f in progress.folds]
    return to_bytes({"epoch": progress.epoch, "model": progress.model.state_dict(),
                     "optimizer": progress.optimizer.state_dict(), "folds": folds, **random_state()})


def restore_pack(progress: PackedProgress, data: bytes) -> None:
    state = from_bytes(data)
    progress.model.load_state_dict(state["model"])
    progress.optimizer.load_state_dict(state["optimizer"])
    for fold, saved in zip(progress.folds, state["folds"]):
        restore_training_memory(saved, fold.stopper, fold.average, fold.generator)
        fold.active, fold.error, fold.epochs_done = saved["active"], saved["error"], saved["epochs_done"]
    restore_random_state(state)
    progress.epoch = state["epoch"]

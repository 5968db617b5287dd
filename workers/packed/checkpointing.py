"""Epoch checkpoints of a packed task (all folds of a job in one stacked model), so a
retried packed task resumes where it stopped, as workers.checkpointing does for one fold."""
from __future__ import annotations

from dataclasses import dataclass

from workers.checkpointing import (from_bytes, random_state, restore_random_state,
                                   restore_training_memory, to_bytes, training_memory)
from workers.packed.model import PackedMLP
from workers.packed.optimizer import PackedOptimizer


@dataclass
class PackedProgress:
    """What a packed task's next epoch depends on."""
    model: PackedMLP
    optimizer: PackedOptimizer
    folds: list  # of workers.packed.training.PackedFold
    epoch: int = 0

    def snapshot(self) -> bytes:
        folds = [{**training_memory(f.stopper, f.average, f.generator),
                  "active": f.active, "error": f.error, "epochs_done": f.epochs_done}
                 for f in self.folds]
        return to_bytes({"epoch": self.epoch, "model": self.model.state_dict(),
                         "optimizer": self.optimizer.state_dict(), "folds": folds, **random_state()})

    def restore(self, data: bytes) -> None:
        state = from_bytes(data)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for fold, saved in zip(self.folds, state["folds"]):
            restore_training_memory(saved, fold.stopper, fold.average, fold.generator)
            fold.active, fold.error, fold.epochs_done = saved["active"], saved["error"], saved["epochs_done"]
        restore_random_state(state)
        self.epoch = state["epoch"]

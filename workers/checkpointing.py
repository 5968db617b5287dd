"""Epoch checkpoints of a fold in training, so a retried fold resumes where it stopped.

A checkpoint holds everything the next epoch depends on: the model, the optimizer's
state, early stopping's memory, the loss average, the shuffling generator, torch's
global random state (dropout masks) and the epoch number. A packed task's progress
(workers.packed.checkpointing) has the same two methods, snapshot and restore.

Checkpoints hold tensors, numbers, strings and None in dicts, lists and tuples only, and
load with torch.load(weights_only=True): loading one runs no code, whatever it holds.
"""
from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from workers.early_stopping import EarlyStopping


@dataclass
class Progress:
    """The parts of a fold's training that change from epoch to epoch."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    stopper: EarlyStopping
    average: "object"          # workers.training.LossAverage
    generator: torch.Generator
    epoch: int = 0

    def snapshot(self) -> bytes:
        return to_bytes({"epoch": self.epoch, "model": self.model.state_dict(),
                         "optimizer": self.optimizer.state_dict(),
                         **training_memory(self.stopper, self.average, self.generator),
                         **random_state()})

    def restore(self, data: bytes) -> None:
        """Put the fold back as it was at the end of the checkpointed epoch."""
        state = from_bytes(data)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_training_memory(state, self.stopper, self.average, self.generator)
        restore_random_state(state)
        self.epoch = state["epoch"]


STOPPER_FIELDS = ("best_value", "best_epoch", "best_metrics", "best_state", "epochs_without_improvement",
                  "target_epoch")


def training_memory(stopper: EarlyStopping, average, generator: torch.Generator) -> dict:
    """A fold's early-stopping memory, loss average and shuffling generator."""
    return {"stopper": {k: getattr(stopper, k) for k in STOPPER_FIELDS},
            "average": (average.value, average.count), "generator": generator.get_state()}


def restore_training_memory(saved: dict, stopper: EarlyStopping, average, generator: torch.Generator) -> None:
    for key, value in saved["stopper"].items():
        setattr(stopper, key, value)
    average.value, average.count = saved["average"]
    generator.set_state(saved["generator"])


def random_state() -> dict:
    """torch's global random state (dropout masks), on the CPU and on CUDA."""
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_random_state(saved: dict) -> None:
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])


def to_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    check_plain(state)
    torch.save(state, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes) -> dict:
    # weights_only: a checkpoint is data, never code (a pickle may run anything it names
    # as it loads). On the CPU: random generator states must stay CPU tensors;
    # load_state_dict moves weights and optimizer state to the model's device itself.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


SCALARS = (str, int, float, bool, type(None))  # exactly: an enum or a NumPy number pickles as its class


def check_plain(value, where: str = "checkpoint") -> None:
    """Refuse, as it is saved, what torch.load(weights_only=True) would refuse as a retry
    resumes: anything but tensors, str, int, float, bool and None, in dicts, lists and tuples."""
    if isinstance(value, torch.Tensor) or type(value) in SCALARS:
        return
    if type(value) in (dict, OrderedDict):  # a state_dict is an OrderedDict
        for key, item in value.items():
            check_plain(key, f"{where} key")
            check_plain(item, f"{where}[{key!r}]")
    elif type(value) in (list, tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
    else:
        raise TypeError(f"{where} is a {type(value).__name__}, which a weights-only checkpoint cannot hold")


def weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """A model's state_dict as a file that plain `torch.load(weights_only=True)` reads."""
    return to_bytes({k: v.detach().cpu() for k, v in state.items()})


def checkpoint_epoch(data: bytes) -> int:
    """The epoch a checkpoint (of one fold or of a pack) was taken after."""
    return from_bytes(data)["epoch"]

"""Full-size mini-batches replayed from one captured CUDA graph.

Eager PyTorch launches every kernel of a step from Python, and at batch 256 a modern GPU
spends most of its time waiting for the CPU (`python bench/train_throughput.py --device
cuda` shows how much: its `graphed` column against `tight`). Every full mini-batch of an
epoch has the same shape, so
the step (gather the batch's rows, forward, loss, backward, optimizer step, add the
loss to the epoch's sum) is captured once and replayed: per step the host only copies
the batch's row indices into the graph's index buffer and launches the graph. Shorter
batches (an epoch's remainder) run eagerly, on the same weights and optimizer state.

Capture needs warm-up steps first (they allocate the gradients and the optimizer's
state and choose kernels). They run on the real model, so its weights, optimizer state
and random state are put back afterwards, in place (the graph keeps their addresses):
the fold then trains as the eager loop would.
"""
from __future__ import annotations

import copy
import logging
import warnings
from typing import Callable

import torch
from torch import nn

from workers.checkpointing import random_state, restore_random_state

WARM_UP_STEPS = 3
log = logging.getLogger(__name__)


class CapturedStep:
    """`step()` (which reads and writes only fixed tensors) run eagerly, or replayed from
    a CUDA graph captured from it. The optimizer may be a torch one or a PackedOptimizer."""

    def __init__(self, step: Callable[[], None], model: nn.Module, optimizer, capture: bool):
        self.step, self.optimizer = step, optimizer
        self.graph = capture_graph(step, model, optimizer) if capture else None

    def __call__(self) -> None:
        if self.graph is None:
            self.optimizer.zero_grad()
            self.step()
        else:
            self.graph.replay()


def capture_graph(step: Callable[[], None], model: nn.Module, optimizer) -> torch.cuda.CUDAGraph:
    graph = torch.cuda.CUDAGraph()
    with state_put_back(model, optimizer):
        side = torch.cuda.Stream()  # warm-up off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), warnings.catch_warnings():
            # Capturable optimizers warn when they step outside a capture, as here.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            for _ in range(WARM_UP_STEPS):
                optimizer.zero_grad()
                step()
        torch.cuda.current_stream().wait_stream(side)
        optimizer.zero_grad()  # the graph's backward then writes fresh gradients
        with torch.cuda.graph(graph):
            step()
    return graph


class state_put_back:
    """A context that puts the model's weights and buffers, the optimizer's state and
    the random state back as they were on entry, copying into the same tensors."""

    def __init__(self, model: nn.Module, optimizer):
        self.model, self.optimizer = model, optimizer

    def __enter__(self):
        self.weights = copy.deepcopy(self.model.state_dict())
        self.moments = copy.deepcopy(self.optimizer.state_dict())
        self.random = random_state()

    def __exit__(self, *_):
        self.model.load_state_dict(self.weights)  # copies into the existing tensors
        if isinstance(self.optimizer, torch.optim.Optimizer):
            put_torch_state_back(self.optimizer, self.moments["state"])
        else:
            self.optimizer.copy_state_from(self.moments)
        restore_random_state(self.random)


def put_torch_state_back(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    for index, param in enumerate(p for g in optimizer.param_groups for p in g["params"]):
        before = saved.get(index, {})
        for name, value in optimizer.state[param].items():
            if not torch.is_tensor(value):
                optimizer.state[param][name] = before.get(name, value)
            elif name in before:
                value.copy_(before[name])
            else:
                value.zero_()  # state born in the warm-up: as a fresh optimizer has it


class StepGraph:
    """One training step on `batch_size` rows of `x`, `y`, chosen by an index buffer."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: Callable,
                 x: torch.Tensor, y: torch.Tensor, batch_size: int, capture: bool = True):
        self.model, self.optimizer, self.loss, self.x, self.y = model, optimizer, loss, x, y
        self.batch_size = batch_size
        self.index = torch.arange(batch_size, device=x.device) % len(x)
        self.total = torch.zeros((), device=x.device)  # the loss summed over rows, this epoch
        self.replay = CapturedStep(self.step, model, optimizer, capture)
        self.total.zero_()  # of the warm-up's losses

    def step(self) -> None:
        loss = self.loss(self.model(self.x.index_select(0, self.index)), self.y.index_select(0, self.index))
        loss.backward()
        self.optimizer.step()
        self.total.add_(loss.detach(), alpha=self.batch_size)

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        return self.replay.graph

    def run(self, rows: torch.Tensor) -> None:
        """Train on these rows (exactly batch_size of them)."""
        self.index.copy_(rows)
        self.replay()

    def take_total(self) -> torch.Tensor:
        total = self.total.clone()
        self.total.zero_()
        return total


def step_graph(model: nn.Module, optimizer: torch.optim.Optimizer, loss: Callable, x: torch.Tensor,
               y: torch.Tensor, batch_size: int | None) -> StepGraph | None:
    """A captured step for this training data on CUDA, or None where the eager loop
    serves: on the CPU, or when the capture fails (the fold then trains eagerly)."""
    size = len(x) if batch_size is None else batch_size
    if x.device.type != "cuda" or size > len(x):
        return None
    return fallible_capture(lambda: StepGraph(model, optimizer, loss, x, y, size))


def fallible_capture(build: Callable):
    try:
        return build()
    except Exception as error:  # an operation that cannot be captured: lose speed, not the fold
        log.warning("training eagerly: CUDA graph capture failed (%s: %s)", type(error).__name__, error)
        return None

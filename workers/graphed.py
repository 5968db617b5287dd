"""Full-size mini-batches replayed from one captured CUDA graph.

Eager PyTorch launches every kernel of a step from Python, and at batch 256 a modern GPU
spends most of its time waiting for the CPU (measured on an H100: a graphed step ran 8×
faster than the eager one). Every full mini-batch of an epoch has the same shape, so
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
from typing import Callable

import torch
from torch import nn

from workers.checkpointing import random_state, restore_random_state

WARM_UP_STEPS = 3
log = logging.getLogger(__name__)


class StepGraph:
    """One training step on `batch_size` rows of `x`, `y`, chosen by an index buffer."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: Callable,
                 x: torch.Tensor, y: torch.Tensor, batch_size: int, capture: bool = True):
        self.model, self.optimizer, self.loss, self.x, self.y = model, optimizer, loss, x, y
        self.batch_size = batch_size
        self.index = torch.arange(batch_size, device=x.device) % len(x)
        self.total = torch.zeros((), device=x.device)  # the loss summed over rows, this epoch
        self.graph = capture_step(self) if capture else None

    def step(self) -> None:
        loss = self.loss(self.model(self.x.index_select(0, self.index)), self.y.index_select(0, self.index))
        loss.backward()
        self.optimizer.step()
        self.total.add_(loss.detach(), alpha=self.batch_size)

    def run(self, rows: torch.Tensor) -> None:
        """Train on these rows (exactly batch_size of them)."""
        self.index.copy_(rows)
        if self.graph is None:
            self.optimizer.zero_grad(set_to_none=True)
            self.step()
        else:
            self.graph.replay()

    def take_total(self) -> torch.Tensor:
        total = self.total.clone()
        self.total.zero_()
        return total


def capture_step(step: StepGraph) -> torch.cuda.CUDAGraph:
    def warm_up() -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARM_UP_STEPS):
                step.optimizer.zero_grad(set_to_none=True)
                step.step()
        torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with state_put_back(step.model, step.optimizer):
        warm_up()
        step.optimizer.zero_grad(set_to_none=True)  # the graph's backward writes fresh gradients
        with torch.cuda.graph(graph):
            step.step()
    step.total.zero_()
    return graph


class state_put_back:
    """A context that puts the model's weights and buffers, the optimizer's state and
    the random state back as they were on entry, copying into the same tensors."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def __enter__(self):
        self.weights = copy.deepcopy(self.model.state_dict())
        self.moments = copy.deepcopy(self.optimizer.state_dict()["state"])
        self.random = random_state()

    def __exit__(self, *_):
        self.model.load_state_dict(self.weights)  # copies into the existing tensors
        for index, param in enumerate(p for g in self.optimizer.param_groups for p in g["params"]):
            saved = self.moments.get(index, {})
            for name, value in self.optimizer.state[param].items():
                if not torch.is_tensor(value):
                    self.optimizer.state[param][name] = saved.get(name, value)
                elif name in saved:
                    value.copy_(saved[name])
                else:
                    value.zero_()  # state born in the warm-up: as a fresh optimizer has it
        restore_random_state(self.random)


def step_graph(model: nn.Module, optimizer: torch.optim.Optimizer, loss: Callable, x: torch.Tensor,
               y: torch.Tensor, batch_size: int | None) -> StepGraph | None:
    """A captured step for this training data on CUDA, or None where the eager loop
    serves: on the CPU, or when the capture fails (the fold then trains eagerly)."""
    size = len(x) if batch_size is None else batch_size
    if x.device.type != "cuda" or size > len(x):
        return None
    try:
        return StepGraph(model, optimizer, loss, x, y, size)
    except Exception as error:  # an operation that cannot be captured: lose speed, not the fold
        log.warning("training eagerly: CUDA graph capture failed (%s: %s)", type(error).__name__, error)
        return None

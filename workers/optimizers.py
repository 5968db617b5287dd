"""The lecture's optimizers, built from the job's `optimizer` section (a plain dict).

How the lecture's symbols map onto torch (α = lr):
- sgd:      W -= α dW                                   → torch.optim.SGD(lr=α)
- momentum: V = βV + (1-β)dW, V₀ = 0; W -= αV           → LectureMomentum below; torch's
            SGD(momentum=β) starts its buffer at dW and has no (1-β) factor.
- rmsprop:  S = βS + (1-β)dW²; W -= α dW / (√S + ε)     → torch.optim.RMSprop(alpha=β, eps=ε),
            whose update is exactly this (square_avg is S, ε added after the root).
- adam:     V = β1 V + (1-β1)dW, S = β2 S + (1-β2)dW², V̂ = V/(1-β1ᵗ), Ŝ = S/(1-β2ᵗ),
            W -= α V̂ / (√Ŝ + ε)                          → torch.optim.Adam(betas=(β1, β2), eps=ε):
            torch computes α/(1-β1ᵗ) · V / (√S/√(1-β2ᵗ) + ε), the same expression.
            With bias_correction off (the slide's form, W -= α V / (√S + ε)) torch has no
            switch, so LectureAdam below does it.
torch's SGD and Adam run their fused kernels (one pass over each parameter instead of
one kernel per operation), on the CPU too; RMSprop and the two written here use foreach
kernels (one kernel per operation for all parameters at once).
"""
from __future__ import annotations

from typing import Iterable

import torch


class LectureMomentum(torch.optim.Optimizer):
    """Gradient descent with momentum exactly as the lecture writes it."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, beta: float = 0.9):
        super().__init__(params, {"lr": lr, "beta": beta})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            velocities = [self._velocity(p) for p in params]
            grads = [p.grad for p in params]
            torch._foreach_mul_(velocities, group["beta"])
            torch._foreach_add_(velocities, grads, alpha=1 - group["beta"])
            torch._foreach_add_(params, velocities, alpha=-group["lr"])
        return loss

    def _velocity(self, param: torch.Tensor) -> torch.Tensor:
        state = self.state[param]
        if "velocity" not in state:
            state["velocity"] = torch.zeros_like(param)  # V₀ = 0
        return state["velocity"]


class LectureAdam(torch.optim.Optimizer):
    """Adam without bias correction: V and S start at 0 and are used as they are."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, beta1: float = 0.9,
                 beta2: float = 0.98, eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            V, S = map(list, zip(*(self._moments(p) for p in params)))
            beta1, beta2 = group["beta1"], group["beta2"]
            torch._foreach_mul_(V, beta1)
            torch._foreach_add_(V, grads, alpha=1 - beta1)
            torch._foreach_mul_(S, beta2)
            torch._foreach_addcmul_(S, grads, grads, value=1 - beta2)
            denominators = torch._foreach_sqrt(S)
            torch._foreach_add_(denominators, group["eps"])
            torch._foreach_addcdiv_(params, V, denominators, value=-group["lr"])
        return loss

    def _moments(self, param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.state[param]
        if not state:
            state["V"], state["S"] = torch.zeros_like(param), torch.zeros_like(param)  # V₀ = S₀ = 0
        return state["V"], state["S"]


def build_optimizer(params, config: dict) -> torch.optim.Optimizer:
    params = list(params)
    name, lr = config["name"], config["lr"]
    # On CUDA the training step may be captured in a graph (workers.graphed): Adam and
    # RMSprop then keep their step counts on the device.
    capturable = bool(params) and params[0].is_cuda
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, fused=True)
    if name == "momentum":
        return LectureMomentum(params, lr=lr, beta=config.get("beta", 0.9))
    if name == "rmsprop":
        return keeping_capturable(torch.optim.RMSprop(
            params, lr=lr, alpha=config.get("beta", 0.9), eps=config.get("eps", 1e-8),
            capturable=capturable))
    if name == "adam":
        beta1, beta2, eps = config.get("beta1", 0.9), config.get("beta2", 0.98), config.get("eps", 1e-8)
        if not config.get("bias_correction", True):
            return LectureAdam(params, lr=lr, beta1=beta1, beta2=beta2, eps=eps)
        return keeping_capturable(torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), eps=eps,
                                                   fused=True, capturable=capturable))
    raise ValueError(f"unknown optimizer {name!r}")


def keeping_capturable(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """load_state_dict takes every setting from the checkpoint, `capturable` included:
    a fold checkpointed on a GPU and resumed on a CPU (or the other way) would get the
    wrong one, and fail (RMSprop on the CPU) or train uncaptured. Keep this device's."""
    def keep(opt, state_dict):
        for live, saved in zip(opt.param_groups, state_dict["param_groups"]):
            saved["capturable"] = live["capturable"]
        return state_dict
    optimizer.register_load_state_dict_pre_hook(keep)
    return optimizer

"""The lecture's optimizers, built from the job's `optimizer` section (a plain dict).

How the lecture's symbols map onto torch (α = lr):
- sgd:      W -= α dW                                   → torch.optim.SGD(lr=α)
- momentum: V = βV + (1-β)dW, V₀ = 0; W -= αV           → LectureMomentum below; torch's
            SGD(momentum=β) starts its buffer at dW and has no (1-β) factor.
- rmsprop:  S = βS + (1-β)dW²; W -= α dW / (√S + ε)     → torch.optim.RMSprop(alpha=β, eps=ε),
            whose update is exactly this (square_avg is S, ε added after the root).
- adam:     V and S as above with β1, β2, bias-corrected → torch.optim.Adam(betas=(β1, β2), eps=ε).
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


def build_optimizer(params, config: dict) -> torch.optim.Optimizer:
    name, lr = config["name"], config["lr"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return LectureMomentum(params, lr=lr, beta=config.get("beta", 0.9))
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=config.get("beta", 0.9),
                                   eps=config.get("eps", 1e-8))
    if name == "adam":
        betas = (config.get("beta1", 0.9), config.get("beta2", 0.98))
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=config.get("eps", 1e-8))
    raise ValueError(f"unknown optimizer {name!r}")

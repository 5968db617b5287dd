"""The lecture's optimizers, built from the job's optimizer configuration.

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

from workers.config import (AdamConfig, MomentumConfig, OptimizerConfig, RMSpropConfig,
                            SGDConfig)


class LectureOptimizer(torch.optim.Optimizer):
    """What the lecture's hand-written rules share: each step updates, per parameter
    group, the parameters that have a gradient, with foreach kernels."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self.update(group, params, [p.grad for p in params])
        return loss

    def update(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def averages(self, params: list[torch.Tensor], name: str) -> list[torch.Tensor]:
        """Each parameter's running average `name`, started at 0 (V₀ = S₀ = 0)."""
        for p in params:
            if name not in self.state[p]:
                self.state[p][name] = torch.zeros_like(p)
        return [self.state[p][name] for p in params]


class LectureMomentum(LectureOptimizer):
    """Gradient descent with momentum exactly as the lecture writes it."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, beta: float):
        super().__init__(params, {"lr": lr, "beta": beta})

    def update(self, group, params, grads):
        velocities = self.averages(params, "velocity")
        torch._foreach_mul_(velocities, group["beta"])
        torch._foreach_add_(velocities, grads, alpha=1 - group["beta"])
        torch._foreach_add_(params, velocities, alpha=-group["lr"])


class LectureAdam(LectureOptimizer):
    """Adam without bias correction: V and S start at 0 and are used as they are."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, beta1: float, beta2: float,
                 eps: float):
        super().__init__(params, {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps})

    def update(self, group, params, grads):
        V, S = self.averages(params, "V"), self.averages(params, "S")
        beta1, beta2 = group["beta1"], group["beta2"]
        torch._foreach_mul_(V, beta1)
        torch._foreach_add_(V, grads, alpha=1 - beta1)
        torch._foreach_mul_(S, beta2)
        torch._foreach_addcmul_(S, grads, grads, value=1 - beta2)
        denominators = torch._foreach_sqrt(S)
        torch._foreach_add_(denominators, group["eps"])
        torch._foreach_addcdiv_(params, V, denominators, value=-group["lr"])


def build_optimizer(params, config: OptimizerConfig) -> torch.optim.Optimizer:
    params = list(params)
    # On CUDA the training step may be captured in a graph (workers.graphed): Adam and
    # RMSprop then keep their step counts on the device.
    capturable = bool(params) and params[0].is_cuda
    match config:
        case SGDConfig(lr=lr):
            return torch.optim.SGD(params, lr=lr, fused=True)
        case MomentumConfig(lr=lr, beta=beta):
            return LectureMomentum(params, lr=lr, beta=beta)
        case RMSpropConfig(lr=lr, beta=beta, eps=eps):
            return keeping_capturable(torch.optim.RMSprop(params, lr=lr, alpha=beta, eps=eps,
                                                          capturable=capturable))
        case AdamConfig(bias_correction=False):
            return LectureAdam(params, lr=config.lr, beta1=config.beta1, beta2=config.beta2,
                               eps=config.eps)
        case AdamConfig():
            return keeping_capturable(torch.optim.Adam(
                params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
                fused=True, capturable=capturable))
    raise ValueError(f"unknown optimizer {config!r}")


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

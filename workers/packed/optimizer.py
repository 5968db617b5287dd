"""The lecture's four update rules for stacked parameters, one fold per row of dim 0.

`step(active)` updates only the folds marked active: a fold that has stopped early, or
has no rows in this step, keeps its weights and its optimizer state (a zero gradient
is not enough: momentum and Adam would still move the weights). Adam counts its
bias-correction step t per fold for the same reason. The formulas are the same as
workers.optimizers (tests check packed against unpacked training).
"""
from __future__ import annotations

import torch

from workers.config import AdamConfig, MomentumConfig, OptimizerConfig, RMSpropConfig, SGDConfig


class PackedOptimizer:
    def __init__(self, params, config: OptimizerConfig, k: int):
        self.params = [p for p in params]
        self.config, self.k = config, k
        self.state = [{"V": torch.zeros_like(p), "S": torch.zeros_like(p)} for p in self.params]
        # Per-fold step counts, in the parameters' precision (β^t is computed from them).
        self.t = torch.zeros(k, dtype=self.params[0].dtype, device=self.params[0].device)

    def state_dict(self) -> dict:
        return {"state": self.state, "t": self.t}

    def load_state_dict(self, saved: dict) -> None:
        device = self.t.device
        self.t = saved["t"].to(self.t)
        self.state = [{k: v.to(device) for k, v in s.items()} for s in saved["state"]]

    def copy_state_from(self, saved: dict) -> None:
        """load_state_dict into the tensors already here (a captured CUDA graph holds them)."""
        self.t.copy_(saved["t"])
        for state, before in zip(self.state, saved["state"]):
            for name, value in state.items():
                value.copy_(before[name])

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """`active`: bool [k], the folds that take this step."""
        self.t += active.to(self.t.dtype)
        for param, state in zip(self.params, self.state):
            if param.grad is None:
                continue
            shape = (self.k,) + (1,) * (param.dim() - 1)
            on = active.view(shape)
            update = self.update(param.grad, state, on, self.t.view(shape))
            param.sub_(torch.where(on, update, torch.zeros_like(update)))

    def update(self, grad, state, on, t) -> torch.Tensor:
        """The amount to subtract from W for active folds; moves V and S where `on`."""
        match self.config:
            case SGDConfig(lr=lr):
                return lr * grad
            case MomentumConfig(lr=lr, beta=beta):
                blend(state["V"], on, beta, grad)
                return lr * state["V"]
            case RMSpropConfig(lr=lr, beta=beta, eps=eps):
                blend(state["S"], on, beta, grad * grad)
                return lr * grad / (state["S"].sqrt() + eps)
            case AdamConfig(lr=lr, beta1=beta1, beta2=beta2, eps=eps):
                blend(state["V"], on, beta1, grad)
                blend(state["S"], on, beta2, grad * grad)
                v, s = state["V"], state["S"]
                if self.config.bias_correction:
                    t = t.clamp(min=1)  # inactive folds that never stepped: avoid 0/0 (masked anyway)
                    v, s = v / (1 - beta1 ** t), s / (1 - beta2 ** t)
                return lr * v / (s.sqrt() + eps)
        raise ValueError(f"unknown optimizer {self.config!r}")


def blend(average: torch.Tensor, on: torch.Tensor, beta: float, value: torch.Tensor) -> None:
    """average = β·average + (1-β)·value, for the active folds only (v₀ = 0)."""
    average.copy_(torch.where(on, beta * average + (1 - beta) * value, average))

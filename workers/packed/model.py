"""k MLPs as one stacked model: weights shaped [k, ...], activations [k, batch, features].

Each fold keeps its own weights and batch-norm statistics, and draws its own dropout
masks (one Dropout over [k, batch, features] masks each fold independently); one batched
matrix multiply (baddbmm) runs all k folds at once. A row mask lets folds whose batches
are shorter (or empty) this step share the tensor without their padding counting.
"""
from __future__ import annotations

import torch
from torch import nn


class PackedLinear(nn.Module):
    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([l.weight.detach().T for l in layers]).contiguous())
        self.bias = (nn.Parameter(torch.stack([l.bias.detach()[None] for l in layers]))
                     if layers[0].bias is not None else None)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias, x, self.weight)

    def fold_state(self, k: int) -> dict[str, torch.Tensor]:
        state = {"weight": self.weight[k].T}
        if self.bias is not None:
            state["bias"] = self.bias[k, 0]
        return state

    def load_fold_state(self, k: int, state: dict) -> None:
        self.weight.data[k] = state["weight"].T
        if self.bias is not None:
            self.bias.data[k, 0] = state["bias"]


class PackedBatchNorm(nn.Module):
    """BatchNorm1d per fold, with statistics over the fold's unmasked rows only."""

    def __init__(self, layers: list[nn.BatchNorm1d]):
        super().__init__()
        self.eps, self.momentum = layers[0].eps, layers[0].momentum
        self.weight = nn.Parameter(torch.stack([l.weight.detach()[None] for l in layers]))
        self.bias = nn.Parameter(torch.stack([l.bias.detach()[None] for l in layers]))
        self.register_buffer("running_mean", torch.stack([l.running_mean for l in layers]))
        self.register_buffer("running_var", torch.stack([l.running_var for l in layers]))
        self.register_buffer("num_batches_tracked", torch.stack([l.num_batches_tracked for l in layers]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training:
            mean, var = self.running_mean[:, None], self.running_var[:, None]
        else:
            mean, var = self.batch_statistics(x, mask)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias

    def batch_statistics(self, x: torch.Tensor, mask: torch.Tensor | None):
        weights = torch.ones_like(x[..., :1]) if mask is None else mask[..., None].to(x.dtype)
        count = weights.sum(1, keepdim=True)                        # [k, 1, 1]
        mean = (x * weights).sum(1, keepdim=True) / count.clamp(min=1)
        var = ((x - mean) ** 2 * weights).sum(1, keepdim=True) / count.clamp(min=1)
        self.update_running(mean.detach(), var.detach(), count)
        return mean, var

    @torch.no_grad()
    def update_running(self, mean, var, count) -> None:
        # As BatchNorm1d: running variance from the unbiased estimate, and only for
        # folds that trained on at least 2 rows in this step.
        active = count[:, 0] >= 2                                   # [k, 1]
        unbiased = var[:, 0] * count[:, 0] / (count[:, 0] - 1).clamp(min=1)
        m = self.momentum
        self.running_mean.copy_(torch.where(active, (1 - m) * self.running_mean + m * mean[:, 0],
                                            self.running_mean))
        self.running_var.copy_(torch.where(active, (1 - m) * self.running_var + m * unbiased,
                                           self.running_var))
        self.num_batches_tracked.add_(active[:, 0].long())

    def fold_state(self, k: int) -> dict[str, torch.Tensor]:
        return {"weight": self.weight[k, 0], "bias": self.bias[k, 0], "running_mean": self.running_mean[k],
                "running_var": self.running_var[k], "num_batches_tracked": self.num_batches_tracked[k]}

    def load_fold_state(self, k: int, state: dict) -> None:
        self.weight.data[k, 0], self.bias.data[k, 0] = state["weight"], state["bias"]
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            getattr(self, name)[k] = state[name]


class PackedMLP(nn.Module):
    """Built from k unpacked MLPs (workers.models.build_mlp), so each fold starts from
    exactly the weights its unpacked run would have; exports per-fold state_dicts in
    the unpacked layout, so checkpoints load into the plain model."""

    PACKABLE = (nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout)

    def __init__(self, models: list[nn.Sequential]):
        super().__init__()
        self.k = len(models)
        self.names: list[str] = []  # the unpacked module name of each packed layer
        layers = []
        for name, first in models[0].named_children():
            if not isinstance(first, self.PACKABLE):
                raise ValueError(f"cannot pack a {type(first).__name__} layer")
            same = [dict(m.named_children())[name] for m in models]
            layers.append(PackedLinear(same) if isinstance(first, nn.Linear)
                          else PackedBatchNorm(same) if isinstance(first, nn.BatchNorm1d) else first)
            self.names.append(name)
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask) if isinstance(layer, (PackedLinear, PackedBatchNorm)) else layer(x)
        return x

    def fold_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        state = {}
        for name, layer in zip(self.names, self.layers):
            if hasattr(layer, "fold_state"):
                state.update({f"{name}.{key}": value.detach().clone()
                              for key, value in layer.fold_state(k).items()})
        return state

    def load_fold_state_dict(self, k: int, state: dict) -> None:
        for name, layer in zip(self.names, self.layers):
            if hasattr(layer, "load_fold_state"):
                prefix = f"{name}."
                layer.load_fold_state(k, {key[len(prefix):]: v for key, v in state.items()
                                          if key.startswith(prefix)})

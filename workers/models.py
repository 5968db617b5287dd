"""Models a job can ask for, built from the job's `model` section (a plain dict)."""
from __future__ import annotations

from torch import nn


def build_model(config: dict, n_features: int, n_outputs: int) -> nn.Module:
    if config["type"] == "mlp":
        return build_mlp(n_features, n_outputs, config["hidden"],
                         batch_norm=config.get("batch_norm", False),
                         dropout=config.get("dropout", 0.0))
    raise ValueError(f"unknown model type {config['type']!r}")


def build_mlp(n_features: int, n_outputs: int, hidden: list[int], *,
              batch_norm: bool, dropout: float) -> nn.Sequential:
    """Linear → [BatchNorm] → ReLU → [Dropout] per hidden layer, then a linear head.

    Batch norm sits before the activation, as in the lecture: it normalizes the
    layer's pre-activation by the mini-batch mean and variance, then scales by γ
    and shifts by β (BatchNorm1d's weight and bias).
    """
    layers: list[nn.Module] = []
    width = n_features
    for size in hidden:
        # The bias is redundant when batch norm subtracts the mean right after.
        layers.append(nn.Linear(width, size, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)

"""Models a job can ask for, built from the job's model configuration.

Both kinds have the lecture's two switches: batch normalization (normalize a layer's
pre-activation by the mini-batch mean and variance, then scale by a learned γ and
shift by a learned β: BatchNorm's weight and bias) and dropout (switch units off at
random with probability p while training). In eval() mode batch norm uses its running
statistics and dropout is off.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from workers.config import CNNConfig, MLPConfig, ModelConfig


def build_model(config: ModelConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    switches = {"batch_norm": config.batch_norm, "dropout": config.dropout}
    if isinstance(config, MLPConfig):
        return build_mlp(math.prod(input_shape), n_outputs, list(config.hidden), **switches)
    if isinstance(config, CNNConfig):
        return build_cnn(input_shape, n_outputs, list(config.channels), list(config.hidden), **switches)
    raise ValueError(f"unknown model {config!r}")


class Dropout(nn.Dropout):
    """Inverted dropout: in training each unit is kept with probability 1-p and scaled
    by 1/(1-p), so evaluation (where nothing is dropped) needs no rescaling.

    On the CPU, torch's own dropout draws its mask with bernoulli_, a slow kernel there
    that weighed heavily in a small MLP's step; one 31-bit random integer per unit
    compared with p·2³¹ gives the same mask distribution (to 2⁻³¹) for less work. On
    other devices torch's fused kernel is already fast (and CUDA-graph safe).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        bits = torch.empty(x.shape, dtype=torch.int32).random_()  # uniform on [0, 2³¹)
        keep = (bits >= int(self.p * 2 ** 31)).to(x.dtype).mul_(1 / (1 - self.p))
        return x * keep


def dense_block(width_in: int, width_out: int, *, batch_norm: bool, dropout: float) -> list[nn.Module]:
    # The bias is redundant when batch norm subtracts the mean right after.
    layers: list[nn.Module] = [nn.Linear(width_in, width_out, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(width_out))
    layers.append(nn.ReLU())
    if dropout > 0:
        layers.append(Dropout(dropout))
    return layers


def build_mlp(n_features: int, n_outputs: int, hidden: list[int], *,
              batch_norm: bool, dropout: float) -> nn.Sequential:
    """Linear → [BatchNorm] → ReLU → [Dropout] per hidden layer, then a linear head."""
    layers: list[nn.Module] = []
    width = n_features
    for size in hidden:
        layers += dense_block(width, size, batch_norm=batch_norm, dropout=dropout)
        width = size
    return nn.Sequential(*layers, nn.Linear(width, n_outputs))


def build_cnn(input_shape: tuple[int, ...], n_outputs: int, channels: list[int], hidden: list[int],
              *, batch_norm: bool, dropout: float) -> nn.Sequential:
    """For small images given as flat rows (digits: 64 values → 1×8×8).

    Per entry of `channels`: 3×3 conv → [BatchNorm2d] → ReLU → [Dropout] → 2×2 max-pool
    (while the image is at least 2 pixels wide), then dense layers as in the MLP.
    """
    if len(input_shape) != 3:
        raise ValueError(f"a cnn needs images (channels, height, width), not shape {input_shape}")
    depth, height, width = input_shape
    layers: list[nn.Module] = [nn.Unflatten(1, input_shape)]
    for size in channels:
        layers.append(nn.Conv2d(depth, size, kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(size))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(Dropout(dropout))
        if min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        depth = size
    layers.append(nn.Flatten())
    return nn.Sequential(*layers, *build_mlp(depth * height * width, n_outputs, hidden,
                                             batch_norm=batch_norm, dropout=dropout))

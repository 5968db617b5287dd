"""What a model learns: classification (cross-entropy) or regression (mean squared error).

A task knows its loss, how many outputs the model needs, and how to turn running sums
kept on the device into metrics, so evaluation reads the device back once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class Classification:
    """Cross-entropy; reports loss, accuracy and F1 macro-averaged over classes."""

    def __init__(self, n_classes: int):
        self.n_classes = n_classes
        self.n_outputs = n_classes

    def loss(self, output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(output, target, reduction=reduction)

    def sums(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """[loss sum, confusion matrix flattened]: everything the metrics need, summable."""
        cells = target * self.n_classes + output.argmax(-1)
        confusion = torch.bincount(cells, minlength=self.n_classes ** 2).to(output.dtype)
        return torch.cat([self.loss(output, target, "sum").reshape(1), confusion])

    def metrics(self, sums: list[float], count: int) -> dict[str, float]:
        n = max(count, 1)
        confusion = torch.tensor(sums[1:]).reshape(self.n_classes, self.n_classes)
        correct = confusion.diag()
        precision = correct / confusion.sum(0).clamp(min=1)
        recall = correct / confusion.sum(1).clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        # As scikit-learn: the classes that occur in this split or among its predictions
        # (a class predicted but absent scores 0); one neither true nor predicted is left out.
        seen = (confusion.sum(0) + confusion.sum(1)) > 0
        macro_f1 = f1[seen].mean().item() if seen.any() else 0.0
        return {"loss": sums[0] / n, "accuracy": correct.sum().item() / n, "f1": macro_f1}

    def confusion(self, sums: list[float]) -> list[list[int]]:
        """[true class][predicted class] counts, from the same sums."""
        return [[int(c) for c in sums[1 + row * self.n_classes:1 + (row + 1) * self.n_classes]]
                for row in range(self.n_classes)]


class Regression:
    """Targets are standardized with the training rows' statistics; the loss (MSE) is in
    those standardized units, MAE in the target's own units, R² has none."""
    n_outputs = 1

    def __init__(self, target_scale: float = 1.0):
        self.target_scale = target_scale

    def loss(self, output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.mse_loss(output.squeeze(-1), target, reduction=reduction)

    def sums(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        error = output.squeeze(-1) - target
        return torch.stack([(error ** 2).sum(), error.abs().sum(), target.sum(), (target ** 2).sum()])

    def metrics(self, sums: list[float], count: int) -> dict[str, float]:
        n = max(count, 1)
        squared, absolute, total, total_squares = sums
        spread = total_squares - total * total / n
        r2 = 1.0 - squared / spread if spread > 0 else 0.0
        return {"loss": squared / n, "mae": absolute / n * self.target_scale, "r2": r2}

    def confusion(self, sums: list[float]) -> None:
        return None  # no classes

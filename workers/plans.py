"""What a fold task is told about its data and rows: plain data, no torch, so the API
(which checks submissions against datasets) does not import the training stack."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DataInfo:
    task: str                      # "classification" or "regression"
    input_shape: tuple[int, ...]   # (features,) or (channels, height, width)
    n_classes: int = 0


@dataclass(frozen=True)
class FoldPlan:
    """Which rows fold `index` trains, validates and tests on."""
    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

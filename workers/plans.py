"""What a fold task is told about its data and rows: plain data, no torch, so the API
(which checks submissions against datasets) does not import the training stack."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DataInfo:
    task: str                      # "classification" or "regression"
    input_shape: tuple[int, ...]   # (inputs,) once encoded, or (channels, height, width)
    n_classes: int = 0
    classes: tuple = ()            # the label's values, sorted: class i is classes[i]


@dataclass(frozen=True)
class FoldPlan:
    """Which rows fold `index` trains, validates and tests on."""
    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class TableSource:
    """Where a fold task reads its data, and what it is: a Parquet file in the dataset
    store and the columns the job uses (the task reads nothing else)."""
    uri: str
    label: str
    features: tuple[str, ...]
    info: DataInfo

"""What a fold task is told about its data and rows: plain data, no torch, so the API
(which checks submissions against datasets) does not import the training stack."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class DataInfo:
    task: str                      # "classification" or "regression"
    input_shape: tuple[int, ...]   # (inputs,) once encoded, or (channels, height, width)
    n_classes: int = 0
    classes: tuple = ()            # the label's values, sorted: class i is classes[i]


@dataclass(frozen=True, eq=False)
class FoldPlan:
    """Which rows fold `index` trains, validates and tests on, sent as the test fold of
    every row (one byte a row, shared by all the plans of a task) rather than as index
    arrays: fold i tests on its own rows, validates on fold i+1's, trains on the rest.
    With repeated k-fold, fold i is fold i mod k of repetition i // k, whose map this is."""
    index: int
    fold_of_row: np.ndarray     # int8 (int16 past 127 folds), one entry per row
    folds: int                  # k, of one repetition

    @classmethod
    def everything(cls, rows: int) -> "FoldPlan":
        """A refit's plan: every row trains, none validates or tests. (One fold of one,
        and no row in it: the test and validation rows are those of fold 0.)"""
        return cls(0, np.full(rows, -1, dtype=np.int8), 1)

    @property
    def position(self) -> int:
        """Its fold within its repetition."""
        return self.index % self.folds

    @property
    def test(self) -> np.ndarray:
        return np.flatnonzero(self.fold_of_row == self.position)

    @property
    def val(self) -> np.ndarray:
        return np.flatnonzero(self.fold_of_row == (self.position + 1) % self.folds)

    @property
    def train(self) -> np.ndarray:
        other = (self.fold_of_row != self.position) & (self.fold_of_row != (self.position + 1) % self.folds)
        return np.flatnonzero(other)


def plans_from_groups(groups: list[np.ndarray], indices: Iterable[int]) -> list[FoldPlan]:
    """The plans of folds `indices` when `groups[i]` holds the rows fold i tests on."""
    fold_of_row = fold_map(groups)
    return [FoldPlan(index, fold_of_row, len(groups)) for index in indices]


def fold_map(groups: list[np.ndarray]) -> np.ndarray:
    """The test fold of every row, from the rows each fold tests on (every row in one)."""
    rows = sum(len(group) for group in groups)
    fold_of_row = np.full(rows, -1, dtype=np.int8 if len(groups) <= 127 else np.int16)
    for index, group in enumerate(groups):
        fold_of_row[group] = index
    if (fold_of_row < 0).any():
        raise ValueError("every row must belong to exactly one fold")
    return fold_of_row


@dataclass(frozen=True)
class TableSource:
    """Where a fold task reads its data, and what it is: a Parquet file in the dataset
    store and the columns the job uses (the task reads nothing else)."""
    uri: str
    label: str
    features: tuple[str, ...]
    info: DataInfo

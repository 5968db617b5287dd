"""Rotating k-fold cross-validation, as the lecture sets it out.

The rows are dealt into k groups of about the same size with (when stratified) the
same class proportions. Model i tests on group i, validates on group (i+1) mod k and
trains on the other k-2 groups, so every row is tested exactly once.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from services.spec import CVSpec
from workers.plans import FoldPlan


def make_groups(y: np.ndarray, k: int, *, seed: int, stratify: bool = True) -> list[np.ndarray]:
    """Split row indices into k disjoint groups, deterministically for a given seed."""
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(y == label) for label in np.unique(y)] if stratify \
        else [np.arange(len(y))]
    members: list[list[np.ndarray]] = [[] for _ in range(k)]
    offset = 0
    for rows in strata:
        rows = rng.permutation(rows)
        # Deal round-robin, starting where the previous class stopped, so the
        # leftovers of each class land in different groups and sizes stay within one.
        for position in range(k):
            members[(offset + position) % k].append(rows[position::k])
        offset = (offset + len(rows)) % k
    return [np.sort(np.concatenate(parts)) for parts in members]


def fold_rows(groups: list[np.ndarray], index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) rows of fold `index`."""
    k = len(groups)
    test, val = groups[index], groups[(index + 1) % k]
    train = np.sort(np.concatenate([g for i, g in enumerate(groups)
                                    if i not in (index, (index + 1) % k)]))
    return train, val, test


def fold_plans(strata: np.ndarray, cv: CVSpec, indices: Iterable[int] | None = None) -> list[FoldPlan]:
    """The plans of folds `indices` (all by default): how a job's rows become its folds,
    from the labels whose proportions every group keeps (Dataset.strata)."""
    groups = make_groups(strata, cv.folds, seed=cv.seed, stratify=cv.stratify)
    return [FoldPlan(i, *fold_rows(groups, i)) for i in (range(cv.folds) if indices is None else indices)]

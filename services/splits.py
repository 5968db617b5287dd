"""Rotating k-fold cross-validation, as the lecture sets it out.

The rows are dealt into k groups of about the same size with (when stratified) the same
proportions of each stratum: the label's classes (or, for regression, the target's
quintiles), crossed with the job's `strata` columns (strings as they are, numbers by
quartile, missing values as a stratum of their own), as the lecture asks of its split
(age, sex). Model i tests on group i, validates on group (i+1) mod k and trains on the
other k-2 groups, so every row is tested exactly once. With a `group` column, all rows
of a group land in the same group of rows (scikit-learn's StratifiedGroupKFold).

A combined stratum too small to reach every fold (fewer rows than folds) is merged by
one rule, never dropped: its rows take the stratum of one column fewer (the last strata
column is left out first), down to the label's alone; rows of a class still too few
then join that class's largest stratum.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from services.spec import CVSpec
from workers.plans import FoldPlan, plans_from_groups

STRATA_FOR_REGRESSION = 5  # a regression target is stratified by its quintile
STRATA_FOR_NUMBERS = 4     # a numeric strata column, by its quartile


def quantile_bins(values: np.ndarray, bins: int) -> np.ndarray:
    finite = values[~np.isnan(values)]
    edges = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]) if len(finite) else []
    return np.where(np.isnan(values), -1, np.searchsorted(edges, values, side="right"))


def label_strata(label: np.ndarray, task: str) -> np.ndarray:
    """The label's classes, or a regression target's quintile."""
    if task == "classification":
        return np.unique(label, return_inverse=True)[1]
    # In float32, as the target trains: a value on a quintile's edge falls the same side.
    target = label.astype(np.float32)
    edges = np.quantile(target, np.linspace(0, 1, STRATA_FOR_REGRESSION + 1)[1:-1])
    return np.searchsorted(edges, target, side="right")


def column_strata(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:  # strings; None (missing) is a value of its own
        return np.unique(np.array(["\0missing" if v is None else str(v) for v in values]),
                         return_inverse=True)[1]
    return quantile_bins(values.astype(np.float64), STRATA_FOR_NUMBERS)


def combined_strata(label: np.ndarray, columns: list[np.ndarray], k: int) -> np.ndarray:
    """One stratum id per row: the label's crossed with each column's, merged (see the
    module's docstring) where a stratum has fewer rows than there are folds."""
    if not columns:  # the label's strata alone: nothing to merge by depth
        return join_leftovers(ids_of(label), label, k)
    levels = [label]  # levels[d]: the strata of the label and the first d columns
    for column in columns:
        levels.append(ids_of(levels[-1], column))
    depth = np.full(len(label), len(levels) - 1)
    key = levels[-1].copy()
    for coarser in range(len(levels) - 2, -1, -1):
        small = np.bincount(ids_of(depth, key))[ids_of(depth, key)] < k
        if not small.any():
            break
        key, depth = np.where(small, levels[coarser], key), np.where(small, coarser, depth)
    return join_leftovers(ids_of(depth, key), label, k)


def ids_of(*keys: np.ndarray) -> np.ndarray:
    """One id per distinct combination of the keys, row by row, numbered in the
    combinations' lexicographic order. Key by key: the ids so far times the next key's
    number of values plus its value's rank is again in lexicographic order. (A unique
    over rows of stacked keys, axis=0, sorts a structured copy: at 10M rows that took
    about 1 GiB and 10 s.)"""
    ids = np.zeros(len(keys[0]), np.int64)
    for key in keys:
        count, rank = ranks(key)
        ids = ranks(ids * count + rank)[1]
    return ids


def ranks(key: np.ndarray) -> tuple[int, np.ndarray]:
    """The number of distinct values of `key` and each row's value's rank among them.
    Integers in a range no wider than the rows are counted (one pass, no sort)."""
    if key.dtype.kind in "iub" and len(key):
        low = int(key.min())
        span = int(key.max()) - low + 1
        if span <= max(len(key), 1 << 16):
            present = np.bincount((key - low).astype(np.int64, copy=False), minlength=span) > 0
            rank_of = np.cumsum(present) - 1
            return int(present.sum()), rank_of[key - low]
    values, rank = np.unique(key, return_inverse=True)
    return len(values), rank.reshape(-1)


def join_leftovers(strata: np.ndarray, label: np.ndarray, k: int) -> np.ndarray:
    """Rows of a class still too few for the folds join that class's largest stratum."""
    strata = strata.copy()
    counts = np.bincount(strata)
    for stratum in np.flatnonzero((counts > 0) & (counts < k)):
        rows = strata == stratum
        same_class = (label == label[rows][0]) & ~rows
        if same_class.any():
            others, sizes = np.unique(strata[same_class], return_counts=True)
            strata[rows] = others[np.argmax(sizes)]
    return strata


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


def fold_plans(strata: np.ndarray, cv: CVSpec, indices: Iterable[int] | None = None,
               groups: np.ndarray | None = None) -> list[FoldPlan]:
    """The plans of folds `indices` (all by default): how a job's rows become its folds,
    from the strata whose proportions every group keeps, and the rows' groups if any."""
    if groups is None:
        row_groups = make_groups(strata, cv.folds, seed=cv.seed, stratify=cv.stratify)
    else:
        row_groups = group_folds(strata, groups, cv.folds, seed=cv.seed, stratify=cv.stratify)
    return plans_from_groups(row_groups, range(cv.folds) if indices is None else indices)


def group_folds(strata: np.ndarray, groups: np.ndarray, k: int, *, seed: int,
                stratify: bool = True) -> list[np.ndarray]:
    """k groups of rows where no group value spans two, stratified as far as groups allow."""
    group_ids = np.unique(np.array([str(g) for g in groups]), return_inverse=True)[1]
    splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed) if stratify else \
        GroupKFold(k, shuffle=True, random_state=seed)
    rows = np.zeros(len(strata))
    return [np.sort(test) for _, test in splitter.split(rows, strata, group_ids)]


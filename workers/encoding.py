"""Turning a fold's table into model inputs, learnt from the fold's training rows only.

- numbers: missing values imputed with the training rows' mean (when the job allows
  missing values), then standardized with the training rows' mean and deviation;
- booleans: 0 or 1 (missing: the training rows' most frequent value);
- strings: one-hot, one column per category of the whole column, in sorted order; a
  category that never occurs in this fold's training rows encodes as all zeros, so the
  fold learns nothing from it, and every fold has the same width (which packing needs).
  Missing: the training rows' most frequent category.

The fitted Encoding is plain data (`state()`), saved with each fold's model so that the
exported model turns raw rows into the same inputs (services.model_export).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURE_DTYPE = np.float32  # what models train in; tests switch to float64 for exact comparisons


def standardize(x: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """Scale with the training rows' statistics only, so that nothing about the
    validation or test rows leaks into training. The statistics in float64: in float32 a
    column far from zero (1e6 + noise) loses its deviation to rounding."""
    x = x.astype(np.float64)
    mean = x[train_rows].mean(axis=0)
    std = x[train_rows].std(axis=0)
    std = np.where(std == 0, 1.0, std)  # constant features (digits' blank pixels) stay at zero
    return ((x - mean) / std).astype(FEATURE_DTYPE)


def kind_of(values: np.ndarray) -> str:
    return "string" if values.dtype == object else "number"


@dataclass
class Encoding:
    """How one fold turns each feature column into inputs."""
    numbers: dict[str, dict]     # name → {"mean", "std", "impute"}
    strings: dict[str, dict]     # name → {"categories", "seen", "impute"}
    order: list[str]             # the feature columns, in input order
    imputed: int = 0             # values imputed in this fold's table

    def state(self) -> dict:
        return {"numbers": self.numbers, "strings": self.strings, "order": self.order}


def most_frequent(values: np.ndarray):
    present = [v for v in values if v is not None]
    if not present:
        return None
    found, counts = np.unique(np.array(present, dtype=object), return_counts=True)
    return found[np.argmax(counts)]


def fit_and_encode(features: dict[str, np.ndarray], train_rows: np.ndarray) -> tuple[np.ndarray, Encoding]:
    """Inputs for every row of the table, learnt from `train_rows`, and how: the numbers
    first (in the features' order), then each string column's one-hot block."""
    encoding = Encoding({}, {}, list(features))
    numbers = {name: values for name, values in features.items() if kind_of(values) == "number"}
    parts = [encode_numbers(numbers, train_rows, encoding)] if numbers else []
    for name, values in features.items():
        if kind_of(values) == "string":
            columns, encoding.strings[name], imputed = one_hot(values, train_rows)
            encoding.imputed += imputed
            parts.append(columns)
    x = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    return x.astype(FEATURE_DTYPE), encoding


def encode_numbers(numbers: dict[str, np.ndarray], train_rows: np.ndarray, encoding: Encoding) -> np.ndarray:
    block = np.stack(list(numbers.values()), axis=1).astype(np.float64)  # statistics in float64
    missing = np.isnan(block)
    # Per column, the training rows' mean: what fills a missing value, here or in an
    # exported model's rows.
    impute = np.nanmean(block[train_rows], axis=0) if missing.any() else block[train_rows].mean(axis=0)
    if missing.any():
        block = np.where(missing, impute, block)
        encoding.imputed += int(missing.sum())
    mean, std = block[train_rows].mean(axis=0), block[train_rows].std(axis=0)
    for i, name in enumerate(numbers):
        encoding.numbers[name] = {"mean": float(mean[i]), "std": float(std[i]) or 1.0,
                                  "impute": float(impute[i])}
    return standardize(block, train_rows)


def one_hot(values: np.ndarray, train_rows: np.ndarray) -> tuple[np.ndarray, dict, int]:
    """One column per category; those unseen in the training rows stay zero."""
    missing = np.array([v is None for v in values])
    impute = most_frequent(values[train_rows])
    filled = np.where(missing, impute, values)
    categories = sorted({v for v in filled if v is not None})
    index = {category: i for i, category in enumerate(categories)}
    seen = np.zeros(len(categories), dtype=bool)
    seen[[index[v] for v in filled[train_rows] if v is not None]] = True
    columns = np.zeros((len(values), len(categories)), dtype=FEATURE_DTYPE)
    rows = np.array([i for i, v in enumerate(filled) if v is not None], dtype=np.int64)
    columns[rows, [index[filled[i]] for i in rows]] = 1.0
    columns[:, ~seen] = 0.0
    state = {"categories": categories, "seen": seen.tolist(), "impute": impute}
    return columns, state, int(missing.sum())


ENCODE_SLICE_ROWS = 16_384  # rows whose numbers are standardized at once, in float64


def encode_with(features: dict[str, np.ndarray], encoding: Encoding) -> np.ndarray:
    """Some rows' inputs (a row group's, when a fold streams its data) by an Encoding
    already fitted: what fit_and_encode gives those rows, numbers first (in the features'
    order), then each string column's one-hot block. A streamed fold encodes every row
    group of every epoch with this, on a thread beside training: the inputs are written
    into place a slice of rows at a time, so the float64 temporaries stay a few MiB
    whatever the group's size."""
    numbers = [name for name in encoding.order if name in encoding.numbers]
    strings = [name for name in encoding.order if name in encoding.strings]
    rows = len(features[encoding.order[0]]) if encoding.order else 0
    x = np.empty((rows, len(numbers) + sum(len(encoding.strings[n]["categories"]) for n in strings)),
                 FEATURE_DTYPE)
    for start in range(0, rows, ENCODE_SLICE_ROWS):
        part = slice(start, start + ENCODE_SLICE_ROWS)
        if numbers:  # rounded to the inputs' dtype once, as it is assigned
            x[part, :len(numbers)] = numbers_with({n: features[n][part] for n in numbers}, numbers,
                                                  encoding.numbers)
        column = len(numbers)
        for name in strings:
            block = one_hot_with(features[name][part], encoding.strings[name])
            x[part, column:column + block.shape[1]] = block
            column += block.shape[1]
    return x


def numbers_with(features: dict[str, np.ndarray], names: list[str], how: dict[str, dict]) -> np.ndarray:
    """The number columns imputed and standardized, in float64 (rounded to the inputs'
    dtype once, by the caller, not at every step): filled column by column (column-major,
    so each write is contiguous) and changed in place."""
    block = np.empty((len(features[names[0]]), len(names)), np.float64, order="F")
    for i, name in enumerate(names):
        block[:, i] = features[name]
    impute, mean, std = (np.array([how[name][key] for name in names]) for key in ("impute", "mean", "std"))
    np.copyto(block, np.broadcast_to(impute, block.shape), where=np.isnan(block))
    block -= mean
    block /= std
    return block


def one_hot_with(values: np.ndarray, how: dict) -> np.ndarray:
    """A string column's block: a one at its category's column when the training rows saw
    that category; zeros for an unseen or unknown one (and for a missing value when the
    training rows had none to impute)."""
    categories = np.array(how["categories"], dtype=object)
    block = np.zeros((len(values), len(categories)), dtype=FEATURE_DTYPE)
    filled = np.where(np.equal(values, None), how["impute"], values)
    rows = np.flatnonzero(~np.equal(filled, None))
    if not len(categories) or not len(rows):
        return block
    # The categories are sorted: a binary search finds where each value would be.
    position = np.minimum(np.searchsorted(categories, filled[rows]), len(categories) - 1)
    hit = (categories[position] == filled[rows]) & np.asarray(how["seen"], dtype=bool)[position]
    block[rows[hit], position[hit]] = 1.0
    return block

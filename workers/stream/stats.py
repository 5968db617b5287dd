"""A fold's Encoding fitted in one pass over a Parquet file, a row group at a time.

The result is the Encoding that workers.encoding.fit_and_encode would fit on the whole
table in memory, but nothing is kept per row: per number column the training values'
count, mean and sum of squared deviations (merged group by group with Chan et al.'s
formula, which stays exact where a sum of squares loses everything to cancellation,
as with values like 1e9 + noise); per string column its distinct values and the
training rows' count of each (as many as the one-hot block has columns anyway).

No pyarrow here: the source reads the groups (workers.stream.source).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from workers.encoding import Encoding, kind_of

if TYPE_CHECKING:  # the source imports pyarrow when it opens a file; these statistics need only numpy
    from workers.stream.source import ParquetSource


def fit_encoding(source: ParquetSource, train: np.ndarray) -> Encoding:
    """The Encoding learnt from the rows where `train` (a boolean mask over every row of
    the file) is True, read one row group at a time."""
    check_mask(train, source.rows)
    if not source.groups:
        raise ValueError(f"{source.uri} has no rows to learn an encoding from")
    columns = None
    for group in source.groups:
        features = source.read(group).features
        columns = columns or columns_of(features)
        in_training = train[group.start:group.stop]
        for statistics in columns:
            statistics.add(features, in_training)
    return encoding_of(source.features, columns)


def check_mask(train: np.ndarray, rows: int) -> None:
    # Row indices (FoldPlan.train) would pass a cast to bool silently and mean something else.
    if not isinstance(train, np.ndarray) or train.dtype != bool or train.shape != (rows,):
        raise ValueError(f"train must be a boolean mask over the file's {rows} rows")


def columns_of(features: dict[str, np.ndarray]) -> list:
    """The running statistics each column needs, by its kind (the file's schema fixes the
    kind, so the first group tells it for all)."""
    numbers = [name for name, values in features.items() if kind_of(values) == "number"]
    strings = [StringColumn(name) for name, values in features.items() if kind_of(values) == "string"]
    return ([NumberColumns(numbers)] if numbers else []) + strings


def encoding_of(order: list[str], columns: list) -> Encoding:
    encoding = Encoding({}, {}, list(order))
    for statistics in columns:
        if isinstance(statistics, NumberColumns):
            encoding.numbers.update(statistics.state())
        else:
            encoding.strings[statistics.name] = statistics.state()
        encoding.imputed += statistics.missing  # every row's, as fit_and_encode counts them
    return encoding


@dataclass
class Moments:
    """Count, mean and sum of squared deviations from the mean (M2) of some values, one
    entry per column."""
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, columns: int) -> Moments:
        return cls(np.zeros(columns), np.zeros(columns), np.zeros(columns))

    @classmethod
    def of(cls, block: np.ndarray) -> Moments:
        """Of a (columns, rows) block's non-missing values: two passes over the group,
        the deviations taken from its own mean."""
        present = ~np.isnan(block)
        if present.all() and block.shape[1]:  # the usual case, without the masked copies
            mean = block.mean(axis=1)
            deviations = block - mean[:, None]
            np.square(deviations, out=deviations)
            return cls(np.full(len(block), float(block.shape[1])), mean, deviations.sum(axis=1))
        count = present.sum(axis=1).astype(np.float64)
        mean = divide(np.where(present, block, 0.0).sum(axis=1), count)
        m2 = (np.where(present, block - mean[:, None], 0.0) ** 2).sum(axis=1)
        return cls(count, mean, m2)

    def merge(self, other: Moments) -> Moments:
        """Chan et al.: the moments of both sets of values together."""
        count = self.count + other.count
        delta = other.mean - self.mean
        share = divide(other.count, count)  # of the merged values, the other's
        return Moments(count, self.mean + delta * share, self.m2 + other.m2 + delta ** 2 * self.count * share)


def divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is (no values yet)."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


SLICE_ROWS = 16_384  # rows of a row group whose statistics are taken at once


class NumberColumns:
    """The number columns' (and booleans') training statistics, all columns at once."""

    def __init__(self, names: list[str]):
        self.names = names
        self.moments = Moments.empty(len(names))
        self.training_rows = 0
        self.missing = 0

    def add(self, features: dict[str, np.ndarray], in_training: np.ndarray) -> None:
        # A slice of rows at a time: a row group can be large (pyarrow writes up to 1Mi
        # rows a group), and each slice's float64 temporaries then stay a few MiB. The
        # merge is exact whatever the slices.
        for start in range(0, len(in_training), SLICE_ROWS):
            rows = slice(start, start + SLICE_ROWS)
            self.add_slice({name: features[name][rows] for name in self.names}, in_training[rows])

    def add_slice(self, features: dict[str, np.ndarray], in_training: np.ndarray) -> None:
        # One row per column, so that each column's sums run over contiguous memory
        # (numpy sums those pairwise, more exactly). An integer column without nulls
        # arrives as int64: float64 as in memory.
        block = np.empty((len(self.names), len(in_training)))
        for i, name in enumerate(self.names):
            block[i] = features[name]
        self.missing += int(np.isnan(block).sum())
        self.training_rows += int(in_training.sum())
        self.moments = self.moments.merge(Moments.of(block[:, in_training]))

    def state(self) -> dict[str, dict]:
        """Per column what fit_and_encode finds: the mean of the non-missing training values
        imputes; imputing the mean leaves the mean as it is and adds no squared deviation,
        so the deviation after imputation is sqrt(M2 / training rows)."""
        known = self.moments.count > 0  # else in memory: NaN throughout (a mean of nothing)
        mean = np.where(known, self.moments.mean, np.nan)
        variance = divide(self.moments.m2, np.full_like(mean, self.training_rows))
        std = np.where(known, np.sqrt(variance), np.nan)
        return {name: {"mean": float(mean[i]), "std": float(std[i]) or 1.0, "impute": float(mean[i])}
                for i, name in enumerate(self.names)}


class StringColumn:
    """One string column's distinct values (all rows) and its training rows' counts."""

    def __init__(self, name: str):
        self.name = name
        self.values: set[str] = set()
        self.training_counts: dict[str, int] = {}
        self.missing = 0

    def add(self, features: dict[str, np.ndarray], in_training: np.ndarray) -> None:
        values = features[self.name]
        present = ~np.equal(values, None)
        self.missing += int((~present).sum())
        self.values.update(values[present])
        found, counts = np.unique(values[present & in_training], return_counts=True)
        for value, count in zip(found, counts):
            self.training_counts[value] = self.training_counts.get(value, 0) + int(count)

    def state(self) -> dict:
        # A missing value becomes the impute, itself a training value: the categories are
        # the column's distinct values either way, and the seen ones the training rows'.
        categories = sorted(self.values)
        return {"categories": categories, "seen": [c in self.training_counts for c in categories],
                "impute": self.most_frequent()}

    def most_frequent(self) -> str | None:
        """The most frequent training value; of equals the smallest, as np.unique's sorted
        values and argmax choose in memory."""
        if not self.training_counts:
            return None
        top = max(self.training_counts.values())
        return min(value for value, count in self.training_counts.items() if count == top)

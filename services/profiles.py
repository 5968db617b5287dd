"""What a dataset's columns hold, computed in one streaming pass over its record batches.

Per column: its type, how many values are missing, and a summary: min, max, mean and
standard deviation for numbers (over the finite values; infinities are counted apart),
the distinct count and most frequent values for strings and booleans, the range for
dates and times. Memory stays bounded: a column counts at most MAX_DISTINCT distinct
values exactly; past that it says so instead of a count. A column of strings, booleans
or integers with at most ALL_VALUES distinct values also lists every value and its count
(`values`): a job's classes, and the categories it one-hot encodes, are read there.
"""
from __future__ import annotations

import math
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

MAX_DISTINCT = 10_000
TOP_VALUES = 10
ALL_VALUES = 100


def kind_of(data_type: pa.DataType) -> str:
    """number, boolean, string, temporal or nested: what a job can do with the column."""
    if pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_decimal(data_type):
        return "number"
    if pa.types.is_boolean(data_type):
        return "boolean"
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or pa.types.is_dictionary(data_type):
        return "string"
    if pa.types.is_temporal(data_type):
        return "temporal"
    if pa.types.is_null(data_type):
        return "empty"
    return "nested"


class NumberSummary:
    """Count, mean and sum of squared deviations, merged batch by batch (Chan et al.),
    so the standard deviation stays exact without a second pass."""

    def __init__(self, integers: bool = False):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.minimum = self.maximum = None
        self.infinite = 0
        self.counts = ValueCounts(limit=ALL_VALUES) if integers else None  # classes, perhaps

    def add(self, array: pa.Array) -> None:
        if self.counts is not None:
            self.counts.add(array)
        values = array if pa.types.is_float64(array.type) else array.cast(pa.float64(), safe=False)
        low, high = (bound.as_py() for bound in pc.min_max(values).values())
        if low is not None and not (math.isfinite(low) and math.isfinite(high)):
            finite = pc.filter(values, pc.is_finite(values))  # only where there are infinities
            self.infinite += len(pc.drop_null(values)) - len(finite)
            values = finite
            low, high = (bound.as_py() for bound in pc.min_max(values).values())
        n = len(values) - values.null_count
        if n == 0:
            return
        self.merge(n, pc.mean(values).as_py(), pc.variance(values, ddof=0).as_py() * n, low, high)

    def merge(self, n: int, mean: float, m2: float, low: float, high: float) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.minimum = low if self.minimum is None else min(self.minimum, low)
        self.maximum = high if self.maximum is None else max(self.maximum, high)

    def summary(self) -> dict:
        values = self.counts.all_values() if self.counts is not None else None
        if self.count == 0:
            return {"infinite": self.infinite, "values": values}
        std = math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0
        return {"min": self.minimum, "max": self.maximum, "mean": self.mean, "std": std,
                "infinite": self.infinite, "values": values}


class ValueCounts:
    """Distinct values and the most frequent ones, for strings and booleans (and integers,
    whose values may be classes). Past `limit` distinct values, new ones are no longer
    counted: the top values then come from the values seen by then."""

    def __init__(self, limit: int = MAX_DISTINCT):
        self.counts: Counter = Counter()
        self.limit, self.overflow = limit, False

    def add(self, array: pa.Array) -> None:
        if self.overflow:
            return
        for entry in pc.value_counts(pc.drop_null(array)).to_pylist():
            value = entry["values"]
            if value in self.counts or len(self.counts) < self.limit:
                self.counts[value] += entry["counts"]
            else:
                self.overflow = True

    def all_values(self) -> list | None:
        """Every value and its count, sorted by value; None when there are too many."""
        if self.overflow or len(self.counts) > ALL_VALUES:
            return None
        return [[value, count] for value, count in sorted(self.counts.items())]

    def summary(self) -> dict:
        distinct = None if self.overflow else len(self.counts)
        return {"distinct": distinct, "distinct_over": self.limit if self.overflow else None,
                "top": [[value, count] for value, count in self.counts.most_common(TOP_VALUES)],
                "values": self.all_values()}


class RangeSummary:
    def __init__(self):
        self.minimum = self.maximum = None

    def add(self, array: pa.Array) -> None:
        if len(pc.drop_null(array)) == 0:
            return
        low, high = pc.min_max(array).values()
        self.minimum = low if self.minimum is None else pc.min_element_wise(self.minimum, low)
        self.maximum = high if self.maximum is None else pc.max_element_wise(self.maximum, high)

    def summary(self) -> dict:
        text = lambda value: None if value is None else str(value.as_py())  # noqa: E731
        return {"min": text(self.minimum), "max": text(self.maximum)}


class ColumnProfile:
    def __init__(self, field: pa.Field):
        self.name, self.type, self.kind = field.name, field.type, kind_of(field.type)
        self.missing = 0
        self.summary = summary_for(self.kind, field.type)

    def add(self, array: pa.Array) -> None:
        self.missing += array.null_count
        if self.summary is not None:
            self.summary.add(array)

    def describe(self) -> dict:
        return {"name": self.name, "type": str(self.type), "kind": self.kind, "missing": self.missing,
                "summary": self.summary.summary() if self.summary is not None else {}}


def summary_for(kind: str, data_type: pa.DataType):
    if kind == "number":
        return NumberSummary(integers=pa.types.is_integer(data_type))
    if kind in ("boolean", "string"):
        return ValueCounts()
    return RangeSummary() if kind == "temporal" else None


class TableProfile:
    """Every column's profile, fed a record batch (or a table of them) at a time."""

    def __init__(self, schema: pa.Schema):
        self.columns = [ColumnProfile(field) for field in schema]
        self.rows = 0

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        self.rows += batch.num_rows
        for profile, array in zip(self.columns, batch.columns):
            profile.add(array)

    def describe(self) -> list[dict]:
        return [profile.describe() for profile in self.columns]

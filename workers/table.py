"""A job's data as a fold task holds it: its feature columns and its label, as numpy arrays.

A fold task reads only the columns its job uses from the dataset's Parquet file
(`read_table`: pyarrow is imported there only, so the training core and its tests need
no more than torch and numpy). Numbers and booleans arrive as float64 with NaN where a
value is missing; strings as object arrays with None.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Table:
    features: dict[str, np.ndarray]  # in the job's feature order
    label: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> "Table":
        """Numeric features f0, f1... from a matrix (tests, benchmarks, generated data)."""
        return cls({f"f{i}": x[:, i] for i in range(x.shape[1])}, y)

    def __len__(self) -> int:
        return len(self.label)


def read_table(uri: str, features: list[str], label: str) -> Table:
    """The `features` and `label` columns of a Parquet file, by pyarrow.fs URI."""
    import pyarrow.parquet as pq

    from workers.storage import filesystem_of

    filesystem, path = filesystem_of(uri)
    with filesystem.open_input_file(path) as source:
        table = pq.read_table(source, columns=[*features, label])
    return Table({name: as_array(table.column(name)) for name in features}, as_array(table.column(label)))


def as_array(column) -> np.ndarray:
    """A pyarrow column as numpy: numbers and booleans as float64 (NaN: missing), except
    float32 (or float16) numbers, kept as float32: half the memory, and exact in the
    float64 the statistics and the encoding compute in. Text as objects (None: missing)."""
    import pyarrow as pa

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) \
            or pa.types.is_dictionary(column.type):
        return np.array(column.to_pylist(), dtype=object)
    if pa.types.is_integer(column.type) and column.null_count == 0:
        return column.to_numpy()  # an integer label stays an integer
    if pa.types.is_float32(column.type) or pa.types.is_float16(column.type):
        return column.cast(pa.float32()).to_numpy(zero_copy_only=False)
    return column.cast(pa.float64()).to_numpy(zero_copy_only=False)

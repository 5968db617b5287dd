"""A Parquet dataset read one row group at a time, only the columns a job uses.

A row group is the unit Parquet stores and reads: its rows come back together, in
order, and nothing else of the file is decoded. Its rows are numbered in the file's
order, so a fold map (one byte a row, workers.plans) says which fold each of them is in.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.table import Table, as_array


@dataclass(frozen=True)
class RowGroup:
    index: int
    start: int  # the number of its first row in the file
    rows: int

    @property
    def stop(self) -> int:
        return self.start + self.rows


class ParquetSource:
    """The row groups of one Parquet file (a pyarrow.fs URI), read on demand. Opened
    once per reader: a background thread should open its own (pyarrow files are not
    meant to be shared between threads)."""

    def __init__(self, uri: str, features: list[str], label: str):
        import pyarrow.parquet as pq

        from workers.storage import filesystem_of

        self.uri, self.features, self.label = uri, list(features), label
        filesystem, path = filesystem_of(uri)
        self.file = pq.ParquetFile(filesystem.open_input_file(path))
        self.check_columns()
        starts = np.cumsum([0] + [self.file.metadata.row_group(i).num_rows
                                  for i in range(self.file.num_row_groups)])
        self.groups = [RowGroup(i, int(starts[i]), int(starts[i + 1] - starts[i]))
                       for i in range(self.file.num_row_groups)]
        self.rows = int(starts[-1])

    def check_columns(self) -> None:
        names = set(self.file.schema_arrow.names)
        if missing := [c for c in [*self.features, self.label] if c not in names]:
            raise ValueError(f"{self.uri} has no column {', '.join(map(repr, missing))}")

    def read(self, group: RowGroup, keep: np.ndarray | None = None) -> Table:
        """One row group's rows, or those `keep` marks (booleans, one a row of the group):
        the job's features and its label, as workers.table has them."""
        import pyarrow as pa

        part = self.file.read_row_group(group.index, columns=[*self.features, self.label])
        if part.num_rows != group.rows:
            raise ValueError(f"row group {group.index} of {self.uri} holds {part.num_rows} rows, "
                             f"not the {group.rows} its metadata says")
        if keep is not None and not keep.all():
            part = part.filter(pa.array(keep))  # before numpy: the rows left, in the file's types
        return Table({name: as_array(part.column(name)) for name in self.features},
                     as_array(part.column(self.label)))

    def read_label(self, group: RowGroup) -> np.ndarray:
        """One row group's labels alone (a regression target's statistics need no more)."""
        return as_array(self.file.read_row_group(group.index, columns=[self.label]).column(self.label))

    @staticmethod
    def release_unused_memory() -> None:
        """Hand back to the system what Arrow's allocator keeps of freed buffers (it holds
        on to them for reuse): after a pass over the whole file, that is about as much as
        the largest row groups read at once, which the next phase would not reuse."""
        import pyarrow as pa

        pa.default_memory_pool().release_unused()

    def reopen(self) -> "ParquetSource":
        """The same source, opened again (for another thread)."""
        return ParquetSource(self.uri, self.features, self.label)

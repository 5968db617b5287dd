"""What the dispatcher hands a job's fold tasks: where to read (TableSource) and which rows
each fold uses (FoldPlan). It reads only the columns the split needs (the label, the
strata and group columns); the tasks read their features themselves.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.data_spec import DatasetSpec
from services.dataset_store import DatasetStore
from services.datasets import load_dataset
from services.job_data import JobData
from services.spec import CVSpec
from services.splits import column_strata, combined_strata, fold_plans, label_strata
from workers.plans import DataInfo, FoldPlan, TableSource
from workers.table import read_table


def source_of(data: JobData, store: DatasetStore) -> TableSource:
    """Where the fold tasks read: the dataset's stored file, or a generated one's."""
    uri = data.uri or generated_file(data, store)
    info = DataInfo(data.task, data.input_shape, len(data.classes), tuple(data.classes))
    return TableSource(uri, data.label, tuple(data.features), info)


def generated_file(data: JobData, store: DatasetStore) -> str:
    """A generated dataset, written to the store once per spec (it is deterministic)."""
    key = "generated-" + hashlib.sha256(json.dumps(data.generated, sort_keys=True).encode()).hexdigest()[:24]
    if not store.exists(key):
        generated = load_dataset(DatasetSpec.model_validate(data.generated))
        columns = {name: generated.x[:, i] for i, name in enumerate(data.features)}
        table = pa.table({**columns, data.label: generated.y})
        with store.writing(key) as staging, store.fs.open_output_stream(staging) as sink:
            pq.write_table(table, sink)
    return store.uri_of(key)


def split_plans(data: JobData, source: TableSource, cv: CVSpec, indices: list[int]) -> list[FoldPlan]:
    """The plans of folds `indices` (services.splits), from the stored label, strata and
    group columns."""
    needed = list(dict.fromkeys([*data.strata, *([data.group] if data.group else [])]))
    table = read_table(source.uri, needed, data.label)
    strata = label_strata(table.label, data.task)
    if cv.stratify:
        strata = combined_strata(strata, [column_strata(table.features[name]) for name in data.strata],
                                 cv.folds)
    groups = table.features[data.group] if data.group else None
    return fold_plans(strata, cv, indices, groups)


def fold_of_each_row(plans: list[FoldPlan], rows: int) -> np.ndarray:
    """The test fold of every row (tests check that each row is tested exactly once)."""
    fold = np.full(rows, -1)
    for plan in plans:
        fold[plan.test] = plan.index
    return fold

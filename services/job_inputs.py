"""What the dispatcher hands a job's fold tasks: where to read (TableSource) and which rows
each fold uses (FoldPlan). It reads only the columns the split needs (the label, the
strata and group columns); the tasks read their features themselves.

The split of a dataset's rows into folds is kept beside the dataset in the store (a fold
map: the test fold of each row, one byte a row), computed once per dataset and cv
settings and read by every later job with the same cv: a dataset larger than memory is
not read again to be split.
"""
from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from services.data_spec import DatasetSpec
from services.dataset_store import DatasetStore
from services.datasets import fits_in_memory, load_dataset, write_generated
from services.job_data import JobData
from services.spec import CVSpec
from services.splits import column_strata, combined_strata, fold_plans, label_strata
from workers.plans import DataInfo, FoldPlan, TableSource
from workers.storage import filesystem_of
from workers.table import read_table

log = logging.getLogger(__name__)

# Part of every fold map's key: bump it when services.splits deals rows differently, so
# that maps dealt the old way are not reused.
FOLD_MAP_SCHEME = 1
FOLD_COLUMN = "fold"
FOLD_MAP_METADATA = b"crossfold.fold_map"  # the settings a map was computed for, to read


class UnusableFoldMap(ValueError):
    """A stored fold map that cannot be this dataset's: damaged, or of another size."""


def source_of(data: JobData, store: DatasetStore) -> TableSource:
    """Where the fold tasks read: the dataset's stored file, or a generated one's."""
    uri = data.uri or generated_file(data, store)
    info = DataInfo(data.task, data.input_shape, len(data.classes), tuple(data.classes))
    return TableSource(uri, data.label, tuple(data.features), info)


def generated_file(data: JobData, store: DatasetStore) -> str:
    """A generated dataset, written to the store once per spec (it is deterministic): in
    memory up to services.datasets' cap, as it always was, in chunks above it."""
    key = generated_key(data)
    if not store.exists(key):
        # Checked at submission: the API's size limits are not the writer's.
        spec = DatasetSpec.model_construct(**data.generated)
        with store.writing(key) as staging, store.fs.open_output_stream(staging) as sink:
            if fits_in_memory(spec):
                write_in_memory(spec, data, sink)
            else:
                write_generated(spec, sink, features=data.features, label=data.label)
    return store.uri_of(key)


def generated_key(data: JobData) -> str:
    """A generated dataset's name in the store: its spec's hash (the spec makes the data)."""
    return "generated-" + digest_of(data.generated)


def write_in_memory(spec: DatasetSpec, data: JobData, sink) -> None:
    generated = load_dataset(spec)
    columns = {name: generated.x[:, i] for i, name in enumerate(data.features)}
    pq.write_table(pa.table({**columns, data.label: generated.y}), sink)


def split_plans(data: JobData, source: TableSource, cv: CVSpec, indices: list[int]) -> list[FoldPlan]:
    """The plans of folds `indices` (services.splits), from the stored label, strata and
    group columns; with repeated k-fold, each from its repetition's split."""
    maps = {repeat: one_split(data, source, repetition(cv, repeat), [0])[0].fold_of_row
            for repeat in {index // cv.folds for index in indices}}
    return [FoldPlan(index, maps[index // cv.folds], cv.folds) for index in indices]


def repetition(cv: CVSpec, repeat: int) -> CVSpec:
    """Repetition `repeat` of a repeated k-fold: a plain k-fold with a seed of its own
    (seed + repeat), as scikit-learn's RepeatedStratifiedKFold draws one a repetition."""
    return cv.model_copy(update={"seed": cv.seed + repeat, "repeats": 1})


def one_split(data: JobData, source: TableSource, cv: CVSpec, indices: list[int]) -> list[FoldPlan]:
    needed = list(dict.fromkeys([*data.strata, *([data.group] if data.group else [])]))
    table = read_table(source.uri, needed, data.label)
    strata = label_strata(table.label, data.task)
    if cv.stratify:
        strata = combined_strata(strata, [column_strata(table.features[name]) for name in data.strata],
                                 cv.folds)
    groups = table.features[data.group] if data.group else None
    return fold_plans(strata, cv, indices, groups)


def split_plans_cached(data: JobData, source: TableSource, cv: CVSpec, indices: list[int],
                       store: DatasetStore) -> list[FoldPlan]:
    """split_plans' plans, from the fold maps kept in the store (computed there if
    missing): one map a repetition."""
    maps = {repeat: fold_map_of(data, source, repetition(cv, repeat), store)
            for repeat in {index // cv.folds for index in indices}}
    return [FoldPlan(index, maps[index // cv.folds], cv.folds) for index in indices]


def fold_map_of(data: JobData, source: TableSource, cv: CVSpec, store: DatasetStore) -> np.ndarray:
    """The test fold of every row (int8), read from the store, or computed (split_plans)
    and stored when missing or unusable. A dataset with no digest to name its map by
    (none should be) is split every time."""
    key = fold_map_key(data, cv)
    if key is None:
        return computed_fold_map(data, source, cv)
    if store.exists(key):
        try:
            return stored_fold_map(store, key, data.rows, cv.folds)
        except UnusableFoldMap as error:  # derived data: computing it again loses nothing
            log.warning("fold map %s is unusable (%s): computing it again", key, error)
    fold_of_row = computed_fold_map(data, source, cv)
    check_fold_map(fold_of_row, data.rows, cv.folds, f"the split of {source.uri}")
    store_fold_map(store, key, fold_of_row, fold_map_settings(data, cv))
    return fold_of_row


def fold_map_key(data: JobData, cv: CVSpec) -> str | None:
    """The fold map's name in the store: a hash of what the split depends on."""
    settings = fold_map_settings(data, cv)
    return None if settings["dataset"] is None else "foldmap-" + digest_of(settings)


def fold_map_settings(data: JobData, cv: CVSpec) -> dict:
    """What decides which fold each row is in: the data (by digest, or a generated one's
    store key), the columns the split reads, and the cv settings."""
    dataset = data.digest or (generated_key(data) if data.generated else None)
    return {"scheme": FOLD_MAP_SCHEME, "dataset": dataset, "label": data.label, "task": data.task,
            # Unstratified, the strata columns are not read: jobs differing by them share a map.
            "strata": list(data.strata) if cv.stratify else [], "group": data.group,
            "folds": cv.folds, "stratify": cv.stratify, "seed": cv.seed}


def computed_fold_map(data: JobData, source: TableSource, cv: CVSpec) -> np.ndarray:
    return one_split(data, source, cv, [0])[0].fold_of_row  # every plan shares the map


def stored_fold_map(store: DatasetStore, key: str, rows: int, folds: int) -> np.ndarray:
    try:
        with store.fs.open_input_file(store.path_of(key)) as file:
            table = pq.read_table(file)
        fold_of_row = np.array(table.column(FOLD_COLUMN).to_numpy())  # writable, as a computed one
    except (pa.ArrowInvalid, KeyError) as error:  # not Parquet, cut short, no fold column
        raise UnusableFoldMap(f"unreadable: {error}") from error
    check_fold_map(fold_of_row, rows, folds, f"fold map {key}")
    return fold_of_row


def check_fold_map(fold_of_row: np.ndarray, rows: int, folds: int, what: str) -> None:
    """One fold in [0, folds) for each of the dataset's rows, as FoldPlan needs."""
    expected = np.int8 if folds <= 127 else np.int16  # as workers.plans.fold_map makes it
    if fold_of_row.dtype != expected:
        raise UnusableFoldMap(f"{what} holds {fold_of_row.dtype}, not {np.dtype(expected)}")
    if len(fold_of_row) != rows:
        raise UnusableFoldMap(f"{what} has {len(fold_of_row):,} rows; the dataset has {rows:,}")
    if rows and not 0 <= fold_of_row.min() <= fold_of_row.max() < folds:
        raise UnusableFoldMap(f"{what} names folds outside 0..{folds - 1}")


def store_fold_map(store: DatasetStore, key: str, fold_of_row: np.ndarray, settings: dict) -> None:
    """Written under a staging name and moved into place (DatasetStore.writing): a reader
    never sees half a map, and two dispatchers writing it at once write the same bytes."""
    table = pa.table({FOLD_COLUMN: fold_of_row})
    table = table.replace_schema_metadata({FOLD_MAP_METADATA: json.dumps(settings, sort_keys=True)})
    with store.writing(key) as staging, store.fs.open_output_stream(staging) as sink:
        pq.write_table(table, sink)


def digest_of(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]


def fold_of_each_row(plans: list[FoldPlan], rows: int) -> np.ndarray:
    """The test fold of every row (tests check that each row is tested exactly once)."""
    fold = np.full(rows, -1)
    for plan in plans:
        fold[plan.test] = plan.index
    return fold


class MissingData(RuntimeError):
    """A job's stored dataset file is gone (removed from the store while the job waited)."""


def check_stored_file(data: JobData) -> None:
    """Before anything is made for the job (MLflow runs, tasks): its dataset's file must be
    there, or the job fails saying so, rather than with a file system's error midway."""
    if data.uri is None:
        return  # generated: made by the dispatcher when needed
    filesystem, path = filesystem_of(data.uri)
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        raise MissingData(f"the file of dataset {data.name!r} is missing from the dataset store; "
                          "upload the data again and resubmit")

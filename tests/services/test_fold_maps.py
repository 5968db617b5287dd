"""The fold map (the test fold of each row) computed once per dataset and cv settings,
kept beside the dataset in the store and read by later jobs: on real files."""
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.dataset_store import DatasetStore
from services.ingest import ingest
from services.job_data import JobData, generated_data
from services.job_inputs import (UnusableFoldMap, fold_map_key, fold_map_of, fold_of_each_row, source_of,
                                 split_plans, split_plans_cached, store_fold_map)
from services.spec import CVSpec, DatasetSpec
from services.splits import column_strata, combined_strata, fold_plans, label_strata

ROWS = 600


@pytest.fixture
def dataset_store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(str(tmp_path / "store"))


def people(rows=ROWS, seed=0) -> dict[str, np.ndarray]:
    """A label, an income, and the lecture's attributes: sex (strings, some missing), age
    (numbers) and a family (the group)."""
    rng = np.random.default_rng(seed)
    sex = np.array([None if rng.random() < 0.05 else str(rng.choice(["f", "m"])) for _ in range(rows)],
                   dtype=object)
    return {"x": rng.normal(size=rows), "sex": sex, "age": rng.normal(40, 12, rows),
            "family": np.array([f"family-{i // 6}" for i in range(rows)], dtype=object),
            "label": rng.integers(0, 3, rows), "income": rng.lognormal(10, 1, rows)}


@pytest.fixture
def columns() -> dict[str, np.ndarray]:
    return people()


@pytest.fixture
def stored(tmp_path: Path, dataset_store: DatasetStore, columns) -> dict:
    """The people as a stored dataset (ingested, so with its real digest)."""
    path = tmp_path / "people.parquet"
    pq.write_table(pa.table(columns), path)
    ingested = ingest(path, dataset_store, "people")
    return {"rows": ingested.rows, "digest": ingested.digest, "uri": dataset_store.uri_of("people")}


def job_data(stored: dict, *, label="label", strata=(), group=None, rows=None) -> JobData:
    task = "classification" if label == "label" else "regression"
    return JobData(name="people", rows=rows or stored["rows"], label=label, features=["x"], task=task,
                   classes=[0, 1, 2] if task == "classification" else [], input_width=1,
                   strata=list(strata), group=group, dataset_id="people", digest=stored["digest"],
                   uri=stored["uri"])


def split_in_memory(columns: dict, cv: CVSpec, *, label="label", strata=(), group=None) -> np.ndarray:
    """The fold of each row as services.splits deals it, from the columns themselves."""
    task = "classification" if label == "label" else "regression"
    row_strata = label_strata(columns[label], task)
    if cv.stratify:
        row_strata = combined_strata(row_strata, [column_strata(columns[name]) for name in strata], cv.folds)
    plans = fold_plans(row_strata, cv, groups=columns[group] if group else None)
    return fold_of_each_row(plans, len(row_strata))


def map_files(store: DatasetStore) -> list[str]:
    return [path for path in store.files() if Path(path).name.startswith("foldmap-")]


def local_path(store: DatasetStore, key: str) -> Path:
    return Path(store.path_of(key))


CASES = {
    "stratified": (CVSpec(folds=5, seed=3), {}),
    "unstratified": (CVSpec(folds=5, stratify=False, seed=3), {}),
    "strata columns": (CVSpec(folds=4, seed=1), {"strata": ("sex", "age")}),
    "groups": (CVSpec(folds=5, seed=1), {"group": "family"}),
    "unstratified groups": (CVSpec(folds=3, stratify=False, seed=2), {"group": "family"}),
    "regression": (CVSpec(folds=5, seed=0), {"label": "income", "strata": ("sex",)}),
}


@pytest.mark.parametrize("cv, settings", CASES.values(), ids=CASES.keys())
def test_the_stored_map_is_the_split_computed_in_memory(cv, settings, stored, columns, dataset_store):
    data = job_data(stored, **settings)
    fold_of_row = fold_map_of(data, source_of(data, dataset_store), cv, dataset_store)
    expected = split_in_memory(columns, cv, **settings)
    assert fold_of_row.dtype == np.int8 and np.array_equal(fold_of_row, expected)
    stored_map = pq.read_table(local_path(dataset_store, fold_map_key(data, cv)))
    assert stored_map.column_names == ["fold"] and stored_map.schema.field("fold").type == pa.int8()
    assert np.array_equal(stored_map.column("fold").to_numpy(), expected)
    assert len(map_files(dataset_store)) == 1 and not any("/staging/" in p for p in dataset_store.files())


def test_a_second_call_reads_the_stored_map_and_does_not_split_again(stored, dataset_store):
    cv, data = CVSpec(folds=5, seed=3), job_data(stored, strata=["sex"])
    source = source_of(data, dataset_store)
    first = fold_map_of(data, source, cv, dataset_store)
    path = local_path(dataset_store, fold_map_key(data, cv))
    written, modified = path.read_bytes(), path.stat().st_mtime_ns
    assert np.array_equal(fold_map_of(data, source, cv, dataset_store), first)
    assert path.read_bytes() == written and path.stat().st_mtime_ns == modified
    # A map that is not the split's, but valid: what comes back is the file's, not a new split.
    other = np.roll(first, 1)
    store_fold_map(dataset_store, fold_map_key(data, cv), other, {})
    assert np.array_equal(fold_map_of(data, source, cv, dataset_store), other)


def test_other_cv_settings_are_another_map(stored, columns, dataset_store):
    data = job_data(stored)
    source = source_of(data, dataset_store)
    maps = {seed: fold_map_of(data, source, CVSpec(folds=5, seed=seed), dataset_store) for seed in (3, 4)}
    assert fold_map_key(data, CVSpec(folds=5, seed=3)) != fold_map_key(data, CVSpec(folds=5, seed=4))
    assert not np.array_equal(maps[3], maps[4]) and len(map_files(dataset_store)) == 2
    assert np.array_equal(maps[4], split_in_memory(columns, CVSpec(folds=5, seed=4)))
    keys = {fold_map_key(data, CVSpec(folds=5, seed=3)), fold_map_key(data, CVSpec(folds=4, seed=3)),
            fold_map_key(data, CVSpec(folds=5, seed=3, stratify=False)),
            fold_map_key(job_data(stored, strata=["sex"]), CVSpec(folds=5, seed=3)),
            fold_map_key(job_data(stored, group="family"), CVSpec(folds=5, seed=3)),
            fold_map_key(job_data(stored, label="income"), CVSpec(folds=5, seed=3))}
    assert len(keys) == 6


def short_map(path: Path) -> None:
    pq.write_table(pa.table({"fold": np.zeros(ROWS - 1, dtype=np.int8)}), path)


def folds_out_of_range(path: Path) -> None:
    pq.write_table(pa.table({"fold": np.full(ROWS, 9, dtype=np.int8)}), path)


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def not_parquet(path: Path) -> None:
    path.write_bytes(b"\x00" * ROWS)


def wide_folds(path: Path) -> None:
    pq.write_table(pa.table({"fold": np.zeros(ROWS, dtype=np.int64)}), path)


@pytest.mark.parametrize("damage", [short_map, folds_out_of_range, cut_short, not_parquet, wide_folds])
def test_a_damaged_map_is_detected_and_computed_again(damage, stored, columns, dataset_store):
    cv, data = CVSpec(folds=5, seed=3), job_data(stored)
    source = source_of(data, dataset_store)
    fold_map_of(data, source, cv, dataset_store)
    path = local_path(dataset_store, fold_map_key(data, cv))
    damage(path)
    expected = split_in_memory(columns, cv)
    assert np.array_equal(fold_map_of(data, source, cv, dataset_store), expected)
    assert np.array_equal(pq.read_table(path).column("fold").to_numpy(), expected)  # repaired


def test_a_dataset_with_other_rows_than_its_description_is_refused(stored, dataset_store):
    data = job_data(stored, rows=ROWS + 1)
    with pytest.raises(UnusableFoldMap, match=f"has {ROWS} rows; the dataset has {ROWS + 1}"):
        fold_map_of(data, source_of(data, dataset_store), CVSpec(folds=5), dataset_store)
    assert map_files(dataset_store) == []


def test_cached_plans_are_split_plans(stored, dataset_store):
    cv, data = CVSpec(folds=5, seed=2), job_data(stored, strata=["sex", "age"], group="family")
    source = source_of(data, dataset_store)
    for _ in range(2):  # computed, then read
        cached = split_plans_cached(data, source, cv, [1, 3], dataset_store)
        plain = split_plans(data, source, cv, [1, 3])
        for mine, theirs in zip(cached, plain, strict=True):
            assert (mine.index, mine.folds) == (theirs.index, theirs.folds)
            for rows in ("train", "val", "test"):
                assert np.array_equal(getattr(mine, rows), getattr(theirs, rows))


def test_a_generated_dataset_s_map_is_named_by_its_store_key(dataset_store):
    cv = CVSpec(folds=5, seed=0)
    specs = [{"name": "synthetic", "rows": 500, "features": 4, "classes": 3, "seed": seed} for seed in (0, 1)]
    maps = []
    for spec in specs:
        data = generated_data(DatasetSpec.model_validate(spec))
        source = source_of(data, dataset_store)
        maps.append(fold_map_of(data, source, cv, dataset_store))
        assert np.array_equal(maps[-1], split_plans(data, source, cv, [0])[0].fold_of_row)
    assert len(map_files(dataset_store)) == 2 and not np.array_equal(*maps)


def test_repeated_folds_test_every_row_once_per_repetition_each_with_its_own_split(stored, dataset_store):
    """cv.repeats = 2 with 4 folds: folds 0-3 are the seed's split, folds 4-7 seed + 1's
    (as RepeatedStratifiedKFold draws one split a repetition), cached or not."""
    cv, data = CVSpec(folds=4, seed=7, repeats=2), job_data(stored, strata=["sex"])
    source = source_of(data, dataset_store)
    plans = split_plans_cached(data, source, cv, list(range(8)), dataset_store)
    assert [p.index for p in plans] == list(range(8)) and [p.position for p in plans] == [0, 1, 2, 3] * 2
    for repetition in (plans[:4], plans[4:]):
        tested = np.concatenate([p.test for p in repetition])
        assert sorted(tested) == list(range(ROWS))  # every row once per repetition
        for plan in repetition:
            assert not set(plan.train) & set(plan.val) and not set(plan.train) & set(plan.test)
    assert not np.array_equal(plans[0].fold_of_row, plans[4].fold_of_row)
    second = split_plans(data, source, CVSpec(folds=4, seed=8), [0])[0]  # repetition 1 is seed + 1
    assert np.array_equal(plans[4].fold_of_row, second.fold_of_row)
    for mine, theirs in zip(plans, split_plans(data, source, cv, list(range(8))), strict=True):
        assert np.array_equal(mine.test, theirs.test) and np.array_equal(mine.train, theirs.train)

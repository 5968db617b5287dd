import numpy as np
import pytest

from services.datasets import load_dataset
from services.spec import DatasetSpec


@pytest.mark.parametrize("name, rows, features, classes", [
    ("digits", 1797, 64, 10), ("iris", 150, 4, 3), ("wine", 178, 13, 3),
    ("breast_cancer", 569, 30, 2)])
def test_bundled_datasets_load_without_downloading(name, rows, features, classes):
    data = load_dataset(DatasetSpec(name=name))
    assert data.x.shape == (rows, features) and data.x.dtype == np.float32
    assert data.y.dtype == np.int64 and data.n_classes == classes


def test_synthetic_follows_its_parameters_and_seed():
    spec = DatasetSpec(name="synthetic", rows=500, features=12, classes=4, seed=3)
    data, again = load_dataset(spec), load_dataset(spec)
    assert data.x.shape == (500, 12) and data.n_classes == 4
    assert np.array_equal(data.x, again.x)
    other = load_dataset(spec.model_copy(update={"seed": 4}))
    assert not np.array_equal(data.x, other.x)


@pytest.mark.parametrize("spec", [
    {"name": "synthetic", "rows": 1003, "features": 7, "classes": 4, "seed": 2},
    {"name": "synthetic_regression", "rows": 1003, "features": 7}])
def test_a_generated_dataset_is_written_once_and_is_what_its_job_expects(spec, store):
    """What the job is told at submission (rows, features, classes) is what the dispatcher
    writes to the store, once; each class has rows // classes rows or one more."""
    from services.job_data import generated_data
    from services.job_inputs import source_of
    from workers.table import read_table
    data = generated_data(DatasetSpec.model_validate(spec))
    source = source_of(data, store)
    assert source_of(data, store).uri == source.uri and len(store.files()) == 1
    table = read_table(source.uri, data.features, data.label)
    assert len(table) == data.rows == spec["rows"] and len(table.features) == data.input_width == 7
    expected = load_dataset(DatasetSpec.model_validate(spec))
    assert np.array_equal(np.stack(list(table.features.values()), 1).astype(np.float32), expected.x)
    if data.classes:
        counts = np.bincount(table.label.astype(int))
        assert list(range(4)) == data.classes and counts.min() >= data.rows // 4


@pytest.mark.parametrize("name", ["digits", "iris", "wine", "breast_cancer", "diabetes"])
def test_a_bundled_dataset_is_stored_as_an_ordinary_one_with_the_same_values(name, sessions, store):
    from services.catalog import get_dataset
    from services.datasets import bundled_id
    from workers.table import read_table
    with sessions() as session:
        stored = get_dataset(session=session, dataset_id=bundled_id(name), owner="someone")
    expected = load_dataset(DatasetSpec(name=name))
    features = [c["name"] for c in stored.columns if c["name"] != "target"]
    table = read_table(stored.uri, features, "target")
    assert stored.owner == "bundled" and stored.rows == len(expected.y) and stored.extra["label"] == "target"
    assert np.array_equal(np.stack(list(table.features.values()), 1).astype(np.float32), expected.x)
    assert np.array_equal(table.label.astype(expected.y.dtype), expected.y)

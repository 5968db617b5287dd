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
    DatasetSpec(name="synthetic", rows=1003, features=7, classes=4, seed=2),
    DatasetSpec(name="synthetic_regression", rows=1003, features=7),
    DatasetSpec(name="digits"), DatasetSpec(name="diabetes")])
def test_describe_agrees_with_the_generated_data(spec):
    from services.datasets import describe
    facts = describe(spec)
    data = load_dataset(spec)
    assert facts.info == data.info and facts.rows == len(data.y) == len(data.x)
    assert facts.smallest_stratum <= data.smallest_stratum() <= facts.smallest_stratum + 1

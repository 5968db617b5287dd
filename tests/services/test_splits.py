import numpy as np
import pytest

from services.datasets import load_dataset
from services.spec import DatasetSpec
from services.splits import fold_rows, make_groups


@pytest.fixture
def labels():
    return load_dataset(DatasetSpec(name="digits")).y


@pytest.mark.parametrize("k", [3, 5, 10])
def test_every_sample_is_tested_exactly_once(labels, k):
    groups = make_groups(labels, k, seed=0)
    tested = np.concatenate([fold_rows(groups, i)[2] for i in range(k)])
    assert np.array_equal(np.sort(tested), np.arange(len(labels)))


def test_train_validation_and_test_rows_are_disjoint_and_cover_the_data(labels):
    groups = make_groups(labels, 5, seed=0)
    for i in range(5):
        train, val, test = fold_rows(groups, i)
        assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
        assert len(train) + len(val) + len(test) == len(labels)


def test_model_i_tests_on_group_i_and_validates_on_the_next(labels):
    groups = make_groups(labels, 5, seed=0)
    for i in range(5):
        _, val, test = fold_rows(groups, i)
        assert np.array_equal(test, groups[i])
        assert np.array_equal(val, groups[(i + 1) % 5])


def test_stratified_groups_keep_class_proportions(labels):
    groups = make_groups(labels, 5, seed=0)
    sizes = [len(g) for g in groups]
    assert max(sizes) - min(sizes) <= 1
    total = np.bincount(labels)
    for group in groups:
        counts = np.bincount(labels[group], minlength=len(total))
        # each class's share in a group is within one sample of its share overall
        assert np.all(np.abs(counts - total / 5) <= 1)


def test_same_seed_same_groups_other_seed_other_groups(labels):
    first, again = make_groups(labels, 5, seed=7), make_groups(labels, 5, seed=7)
    other = make_groups(labels, 5, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_unstratified_groups_still_partition_the_rows():
    y = np.zeros(103, dtype=np.int64)
    groups = make_groups(y, 4, seed=1, stratify=False)
    assert sorted(len(g) for g in groups) == [25, 26, 26, 26]
    assert np.array_equal(np.sort(np.concatenate(groups)), np.arange(103))

import numpy as np
import pytest

from services.datasets import load_dataset
from services.spec import CVSpec, DatasetSpec
from services.splits import (column_strata, combined_strata, fold_plans, fold_rows, label_strata,
                             make_groups)


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


def people(n=300, seed=0):
    """A label, and the lecture's attributes: sex (strings, some missing) and age (numbers)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    sex = np.array([None if rng.random() < 0.05 else rng.choice(["f", "m"]) for _ in range(n)], dtype=object)
    return label, sex, rng.normal(40, 12, n)


def test_folds_keep_the_label_and_the_strata_columns_in_proportion():
    label, sex, age = people()
    k = 5
    strata = combined_strata(label_strata(label, "classification"), [column_strata(sex), column_strata(age)], k)
    plans = fold_plans(strata, CVSpec(folds=k, seed=3))
    tested = np.sort(np.concatenate([p.test for p in plans]))
    assert np.array_equal(tested, np.arange(len(label)))  # every row tested exactly once
    for stratum in np.unique(strata):
        rows = np.flatnonzero(strata == stratum)
        ideal = len(rows) / k
        per_fold = [np.isin(p.test, rows).sum() for p in plans]
        assert all(abs(count - ideal) < 1 for count in per_fold), (stratum, per_fold)
    # Stratifying on the combination keeps each attribute in proportion too.
    for values in (sex, label):
        for value in set(values):
            share = [np.mean(values[p.test] == value) for p in plans]
            assert max(share) - min(share) < 0.1


def test_a_stratum_smaller_than_the_folds_is_merged_never_dropped():
    label = np.array([0] * 30 + [1] * 30)
    rare = np.array(["a"] * 28 + ["b"] * 2 + ["a"] * 30, dtype=object)  # 'b' has 2 rows of class 0
    strata = combined_strata(label, [column_strata(rare)], k=5)
    assert len(strata) == 60 and np.bincount(strata)[np.bincount(strata) > 0].min() >= 5
    assert len({strata[i] for i in (28, 29)}) == 1 and strata[28] == strata[0]  # joined class 0's
    assert all(len(set(label[strata == s])) == 1 for s in np.unique(strata))  # never across classes


def test_a_group_never_spans_two_folds_and_validation_rotates():
    label, sex, age = people()
    groups = np.array([f"family-{i // 6}" for i in range(len(label))], dtype=object)
    plans = fold_plans(label_strata(label, "classification"), CVSpec(folds=5, seed=1), groups=groups)
    tested = np.concatenate([p.test for p in plans])
    assert np.array_equal(np.sort(tested), np.arange(len(label)))
    fold_of = {}
    for plan in plans:
        for group in set(groups[plan.test]):
            assert fold_of.setdefault(group, plan.index) == plan.index, group
    for plan in plans:  # model i validates on the test rows of fold i+1
        assert np.array_equal(plan.val, plans[(plan.index + 1) % 5].test)
        assert not set(plan.train) & (set(plan.val) | set(plan.test))

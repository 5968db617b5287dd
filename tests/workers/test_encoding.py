"""Per-fold encoding of a table (workers.encoding): learnt from the training rows only."""
import numpy as np
import pytest

from workers.encoding import fit_and_encode

TRAIN = np.array([0, 1, 2, 3])


def table():
    return {"age": np.array([30.0, 50.0, np.nan, 40.0, 1000.0]),
            "city": np.array(["Paris", "Lyon", None, "Paris", "Nice"], dtype=object),
            "member": np.array([1.0, 0.0, 1.0, 1.0, 0.0])}


def test_numbers_are_imputed_and_standardized_with_the_training_rows_only():
    x, encoding = fit_and_encode(table(), TRAIN)
    # age: the training rows' mean (30, 50, 40 → 40) fills the gap; row 4's 1000 plays no part.
    train_age = np.array([30.0, 50.0, 40.0, 40.0])
    expected = (np.array([30.0, 50.0, 40.0, 40.0, 1000.0]) - train_age.mean()) / train_age.std()
    assert x[:, 0] == pytest.approx(expected, rel=1e-5)
    assert encoding.numbers["age"]["impute"] == pytest.approx(40.0)
    assert x[TRAIN, 1].mean() == pytest.approx(0.0, abs=1e-6)  # member (0/1), standardized too
    assert encoding.imputed == 2  # the age and the city of row 2


def test_strings_are_one_hot_with_the_training_rows_categories():
    x, encoding = fit_and_encode(table(), TRAIN)
    city = x[:, 2:]
    assert encoding.strings["city"]["categories"] == ["Lyon", "Nice", "Paris"]
    assert encoding.strings["city"]["seen"] == [True, False, True]
    assert city[0].tolist() == [0, 0, 1] and city[1].tolist() == [1, 0, 0]
    assert city[2].tolist() == [0, 0, 1]  # missing: the training rows' most frequent, Paris
    assert city[4].tolist() == [0, 0, 0]  # Nice never occurs in training: all zeros
    assert x.shape == (5, 2 + 3)  # the same width for every fold (packing needs it)


def test_every_fold_gets_the_same_width_whatever_its_training_rows_saw():
    widths = {fit_and_encode(table(), rows)[0].shape[1] for rows in (TRAIN, np.array([1, 2, 4]))}
    assert widths == {5}

"""A fold's encoding fitted by streaming a Parquet file's row groups (workers.stream.stats)
is the one fit_and_encode fits in memory, and encode_with replays it on any rows."""
import numpy as np
import pytest

import workers.encoding
from workers.encoding import encode_with, fit_and_encode
from workers.exported import encode_rows
from workers.stream.source import ParquetSource
from workers.stream.stats import fit_encoding
from workers.table import read_table

pa = pytest.importorskip("pyarrow")  # the source reads Parquet; the GPU machine has no pyarrow
pq = pytest.importorskip("pyarrow.parquet")

ROWS = 1000
ROW_GROUP = 64  # rows: 16 groups of a 1000-row file
FOLDS = 5


@pytest.fixture
def exact(monkeypatch):
    """fit_and_encode in float64: it rounds its inputs to FEATURE_DTYPE before any
    statistic, so only then is the in-memory fit exact enough to compare to 1e-6."""
    monkeypatch.setattr(workers.encoding, "FEATURE_DTYPE", np.float64)


def write(tmp_path, columns: dict, row_group_size: int) -> str:
    path = tmp_path / "data.parquet"
    table = pa.table({**columns, "label": np.zeros(len(next(iter(columns.values()))))})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path.as_uri()


def mixed(rng) -> dict:
    """Numbers, integers, booleans and strings, each with missing values; 'late' only
    outside the first 900 rows (which the fixtures below make the non-training rows)."""
    numbers = rng.normal(3.0, 2.0, ROWS)
    numbers[rng.random(ROWS) < 0.1] = np.nan
    integers = pa.array(rng.integers(-50, 50, ROWS), mask=rng.random(ROWS) < 0.05)
    flags = pa.array(rng.random(ROWS) < 0.3, mask=rng.random(ROWS) < 0.05)
    cities = rng.choice(["Paris", "Lyon", "Nice", "Brest"], ROWS).astype(object)
    cities[rng.random(ROWS) < 0.1] = None
    cities[-3:] = "late"
    return {"numbers": numbers, "integers": integers, "flags": flags, "city": cities,
            "constant": np.full(ROWS, 7.0)}  # no deviation: divided by 1 instead


def fold_mask(rng, rows=ROWS, index=0) -> np.ndarray:
    """A fold's training rows as a fold plan makes them: folds neither `index` nor the next."""
    fold_of_row = rng.integers(0, FOLDS, rows)
    return (fold_of_row != index) & (fold_of_row != (index + 1) % FOLDS)


def in_memory(uri: str, features: list[str], train: np.ndarray):
    return fit_and_encode(read_table(uri, features, "label").features, np.flatnonzero(train))


def streamed(uri: str, features: list[str], train: np.ndarray):
    return fit_encoding(ParquetSource(uri, features, "label"), train)


def assert_same(streamed_encoding, memory_encoding, rel=1e-6):
    assert streamed_encoding.order == memory_encoding.order
    assert streamed_encoding.imputed == memory_encoding.imputed
    assert streamed_encoding.strings == memory_encoding.strings
    assert list(streamed_encoding.numbers) == list(memory_encoding.numbers)
    for name, expected in memory_encoding.numbers.items():
        for key in ("mean", "std", "impute"):
            found = streamed_encoding.numbers[name][key]
            assert found == pytest.approx(expected[key], rel=rel, abs=1e-12), (name, key)


def test_the_streamed_encoding_is_the_in_memory_one(tmp_path, exact):
    rng = np.random.default_rng(0)
    uri = write(tmp_path, mixed(rng), ROW_GROUP)
    features = ["numbers", "integers", "flags", "city", "constant"]
    train = fold_mask(rng)
    train[900:] = False  # 'late' occurs only here: a category unseen in training
    assert len(ParquetSource(uri, features, "label").groups) == 16
    encoding = streamed(uri, features, train)
    assert_same(encoding, in_memory(uri, features, train)[1])
    assert encoding.strings["city"]["categories"] == ["Brest", "Lyon", "Nice", "Paris", "late"]
    assert encoding.strings["city"]["seen"] == [True, True, True, True, False]
    assert encoding.imputed > 0
    assert encoding.numbers["constant"]["std"] == 1.0


def test_in_float32_the_two_agree_to_its_rounding(tmp_path):
    rng = np.random.default_rng(1)
    uri = write(tmp_path, mixed(rng), ROW_GROUP)
    train = fold_mask(rng)
    features = ["numbers", "integers", "flags", "city", "constant"]
    assert_same(streamed(uri, features, train), in_memory(uri, features, train)[1], rel=1e-5)


def test_a_tie_goes_to_the_smallest_value_however_the_groups_split_it(tmp_path, exact):
    # Training rows: 'b' three times, then 'a' three times, 'c' twice, in groups of two
    # rows: the first value counted, or the first group's most frequent, would be 'b'.
    values = np.array(["b", "b", "b", None, "a", "a", "a", "c", "c", None, "z"], dtype=object)
    train = np.array([True] * 9 + [False, False])
    uri = write(tmp_path, {"letter": values}, 2)
    encoding = streamed(uri, ["letter"], train)
    assert encoding.strings["letter"]["impute"] == "a"
    assert_same(encoding, in_memory(uri, ["letter"], train)[1])
    assert encoding.imputed == 2


def test_values_near_1e9_keep_their_small_deviation(tmp_path, exact):
    rng = np.random.default_rng(2)
    values = 1e9 + rng.normal(0.0, 0.5, 20_000)
    train = fold_mask(rng, len(values))
    # What a sum of squares makes of it, in float64: E[x²] and E[x]² are ~1e18, 128
    # apart from their neighbours, so their difference is a multiple of that (here 0),
    # never the true 0.25.
    kept = values[train]
    naive_variance = (kept ** 2).sum() / len(kept) - (kept.sum() / len(kept)) ** 2
    assert abs(naive_variance - kept.var()) > 0.5 * kept.var()
    uri = write(tmp_path, {"big": values}, 256)
    encoding = streamed(uri, ["big"], train)
    assert encoding.numbers["big"]["std"] == pytest.approx(kept.std(), rel=1e-6)
    assert_same(encoding, in_memory(uri, ["big"], train)[1])


def test_a_file_of_one_row_group(tmp_path, exact):
    rng = np.random.default_rng(3)
    uri = write(tmp_path, mixed(rng), ROWS)
    train = fold_mask(rng)
    features = ["numbers", "integers", "flags", "city", "constant"]
    assert len(ParquetSource(uri, features, "label").groups) == 1
    assert_same(streamed(uri, features, train), in_memory(uri, features, train)[1])


def test_groups_without_a_training_row_or_a_training_value(tmp_path, exact):
    rng = np.random.default_rng(4)
    columns = mixed(rng)
    columns["numbers"][128:256] = np.nan  # groups 2 and 3 have no number at all
    train = fold_mask(rng)
    train[:192] = False  # nor do groups 0 to 2 train
    train[500:640] = False
    uri = write(tmp_path, columns, ROW_GROUP)
    features = ["numbers", "integers", "flags", "city", "constant"]
    assert_same(streamed(uri, features, train), in_memory(uri, features, train)[1])


def test_the_mask_must_be_one_boolean_a_row(tmp_path):
    rng = np.random.default_rng(5)
    uri = write(tmp_path, mixed(rng), ROW_GROUP)
    source = ParquetSource(uri, ["numbers"], "label")
    for wrong in (np.flatnonzero(fold_mask(rng)), np.ones(ROWS - 1, dtype=bool), [True] * ROWS):
        with pytest.raises(ValueError, match="boolean mask"):
            fit_encoding(source, wrong)


def test_encode_with_gives_fit_and_encodes_inputs_group_by_group(tmp_path):
    rng = np.random.default_rng(6)
    columns = mixed(rng)
    uri = write(tmp_path, columns, ROW_GROUP)
    features = ["numbers", "integers", "flags", "city", "constant"]
    train = fold_mask(rng)
    train[900:] = False
    x, encoding = in_memory(uri, features, train)
    source = ParquetSource(uri, features, "label")
    for group in source.groups:
        rows = encode_with(source.read(group).features, encoding)
        assert rows.dtype == np.float32
        np.testing.assert_allclose(rows, x[group.start:group.stop], rtol=1e-6, atol=1e-5)
    # And with the streamed fit, the whole table at once.
    np.testing.assert_allclose(encode_with(read_table(uri, features, "label").features,
                                           fit_encoding(source, train)), x, rtol=1e-6, atol=1e-5)


def test_encode_with_zeroes_unknown_and_unseen_categories_as_an_exported_model_does():
    features = {"age": np.array([30.0, 50.0, np.nan, 40.0, 1000.0]),
                "city": np.array(["Paris", "Lyon", None, "Paris", "Nice"], dtype=object)}
    _, encoding = fit_and_encode(features, np.array([0, 1, 2, 3]))
    new = {"age": np.array([np.nan, 45.0, 10.0]),
           "city": np.array([None, "Rome", "Nice"], dtype=object)}  # Rome: unknown, Nice: unseen
    x = encode_with(new, encoding)
    assert x[:, 1:].tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]  # missing: Paris
    np.testing.assert_allclose(x, encode_rows(new, encoding.state()), rtol=1e-6)
    assert x[0, 0] == pytest.approx(0.0, abs=1e-6)  # the imputed mean standardizes to zero

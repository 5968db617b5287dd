"""Generated datasets above the in-memory cap, written in chunks straight into Parquet:
memory bounded by a chunk, the same file for the same spec, a learnable problem."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from services.datasets import (CHUNK_CELLS, CHUNK_ROWS, IN_MEMORY_SYNTHETIC_CELLS, chunk_rows_of,
                               fits_in_memory, load_dataset, write_generated)
from services.spec import DatasetSpec
from workers.table import read_table

ROOT = Path(__file__).resolve().parents[2]


def generated(name="synthetic", **sizes) -> DatasetSpec:
    """A generated dataset's spec, past the API's size limits if need be (the writer has none)."""
    defaults = {"synthetic": {"classes": 2}, "synthetic_regression": {}}[name]
    return DatasetSpec.model_construct(name=name, **{"seed": 0, **defaults, **sizes})


def features_of(path: Path, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    table = read_table(str(path.resolve().as_uri()), [f"f{i}" for i in range(spec.features)], "label")
    return np.stack(list(table.features.values()), axis=1), table.label


# Run in a process of its own. Its peak resident memory is reset (Linux: clear_refs 5) once
# the libraries are loaded and warm, so that the peak read after is this write's alone.
WRITE_THROUGH_THE_DISPATCHER = """
import json, sys, time
import pyarrow as pa
from services.dataset_store import DatasetStore
from services.datasets import write_generated
from services.job_data import generated_data
from services.job_inputs import generated_file
from services.spec import DatasetSpec

def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

spec = DatasetSpec.model_construct(**json.loads(sys.argv[2]))
write_generated(spec.model_copy(update={"rows": 1000}), pa.BufferOutputStream())  # warm the libraries
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # the peak (VmHWM) is now the current resident size
before, start = kib("VmRSS"), time.perf_counter()
uri = generated_file(generated_data(spec), DatasetStore(sys.argv[1]))
seconds = time.perf_counter() - start
print(json.dumps({"uri": uri, "growth": (kib("VmHWM") - before) * 1024, "seconds": seconds}))
"""


def test_a_million_rows_are_written_with_the_memory_of_a_chunk(tmp_path):
    """1,000,000 × 64 float32 (256 MB, above the in-memory cap) through generated_file, as
    the dispatcher writes it: the process grows by far less than the data."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("measures the peak resident memory as Linux resets it")
    spec = generated(rows=1_000_000, features=64, classes=4, seed=5)
    assert not fits_in_memory(spec)
    done = subprocess.run([sys.executable, "-c", WRITE_THROUGH_THE_DISPATCHER, str(tmp_path / "store"),
                           json.dumps(spec.model_dump())], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    data_bytes = spec.rows * spec.features * 4
    print(f"{data_bytes / 2**20:.0f} MiB written in {measured['seconds']:.1f} s, "
          f"peak memory +{measured['growth'] / 2**20:.1f} MiB")
    assert measured["growth"] < min(data_bytes / 4, 3 * CHUNK_CELLS * 4)  # a few chunks' worth
    path = Path(measured["uri"].removeprefix("file://"))
    parquet = pq.ParquetFile(path)
    assert parquet.metadata.num_rows == spec.rows
    assert parquet.metadata.num_row_groups == math.ceil(spec.rows / chunk_rows_of(spec)) == 16
    # What load_dataset makes of a dataset this large is the file's content.
    expected = load_dataset(spec)
    for i in (0, 31, 63):
        assert np.array_equal(parquet.read(columns=[f"f{i}"]).column(0).to_numpy(), expected.x[:, i])
    assert np.array_equal(parquet.read(columns=["label"]).column(0).to_numpy(), expected.y)


def test_a_chunk_is_at_most_chunk_rows_and_chunk_cells():
    assert chunk_rows_of(generated(rows=10**7, features=20)) == CHUNK_ROWS
    assert chunk_rows_of(generated(rows=10**7, features=64)) * 64 == CHUNK_CELLS
    assert chunk_rows_of(generated(rows=10**7, features=1000)) == CHUNK_CELLS // 1000


def test_the_in_memory_path_is_kept_up_to_todays_cap():
    assert fits_in_memory(generated(rows=2_000_000, features=IN_MEMORY_SYNTHETIC_CELLS // 2_000_000))
    assert not fits_in_memory(generated(rows=2_000_000, features=IN_MEMORY_SYNTHETIC_CELLS // 2_000_000 + 1))


@pytest.mark.parametrize("name", ["synthetic", "synthetic_regression"])
def test_the_same_spec_gives_the_same_file(tmp_path, name):
    spec = generated(name, rows=25_000, features=8, seed=7)
    for copy in ("a", "b"):
        write_generated(spec, str(tmp_path / f"{copy}.parquet"), chunk_rows=7_000)
    write_generated(spec.model_copy(update={"seed": 8}), str(tmp_path / "other.parquet"), chunk_rows=7_000)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert (tmp_path / "a.parquet").read_bytes() != (tmp_path / "other.parquet").read_bytes()
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.num_row_groups == 4


@pytest.mark.parametrize("features, classes, better_than", [(16, 5, 0.6), (2, 2, 0.75), (40, 20, 0.5)])
def test_the_classes_are_balanced_and_learnable(tmp_path, features, classes, better_than):
    """Every class has rows // classes rows or one more (services.job_data counts on it), and
    nearest centroids fitted on half the rows classify the other half far above chance."""
    spec = generated(rows=60_001, features=features, classes=classes, seed=3)
    write_generated(spec, str(tmp_path / "data.parquet"), chunk_rows=9_000)
    x, y = features_of(tmp_path / "data.parquet", spec)
    assert x.shape == (spec.rows, features) and y.dtype == np.int64
    counts = np.bincount(y, minlength=classes)
    share = spec.rows // classes
    assert len(counts) == classes and share <= counts.min() <= counts.max() <= share + 1
    train, test = slice(0, 30_000), slice(30_000, None)
    centroids = np.stack([x[train][y[train] == c].mean(axis=0) for c in range(classes)])
    distances = ((x[test][:, None, :] - centroids[None]) ** 2).sum(axis=2)
    accuracy = np.mean(distances.argmin(axis=1) == y[test])
    assert accuracy > better_than > 1 / classes, accuracy


def test_regression_targets_follow_the_features(tmp_path):
    spec = generated("synthetic_regression", rows=40_000, features=16, seed=1)
    write_generated(spec, str(tmp_path / "data.parquet"), chunk_rows=6_000)
    x, y = features_of(tmp_path / "data.parquet", spec)
    assert y.dtype == np.float32 and x.shape == (spec.rows, 16)  # float32 in the file, kept so (exact in float64)
    train, test = slice(0, 20_000), slice(20_000, None)
    weights, *_ = np.linalg.lstsq(np.c_[x[train], np.ones(20_000)], y[train], rcond=None)
    predicted = np.c_[x[test], np.ones(len(y[test]))] @ weights
    assert np.corrcoef(predicted, y[test])[0, 1] > 0.9
    # Half the features carry the target (weights in [0, 100)), the others are noise.
    assert (np.abs(weights[:16]) > 0.5).sum() == 8, weights

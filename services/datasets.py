"""Built-in datasets, all from scikit-learn's bundled files or generated: nothing is downloaded.

The bundled ones are also stored as ordinary datasets (register_bundled), readable by
every owner.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn import datasets as sk
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.dataset_store import DatasetStore
from services.ingest import ingest
from services.models import BUNDLED_OWNER, Dataset as StoredDataset
from services.data_spec import informative_features
from services.spec import DatasetSpec
from workers.plans import DataInfo

BUNDLED = {
    "digits": sk.load_digits,       # 8x8 images, flattened to 64 features
    "iris": sk.load_iris,
    "wine": sk.load_wine,
    "breast_cancer": sk.load_breast_cancer,
    "diabetes": sk.load_diabetes,   # regression: disease progression after one year
}
REGRESSION = {"diabetes", "synthetic_regression"}
IMAGE_SHAPES = {"digits": (1, 8, 8)}
GENERATED = {"synthetic", "synthetic_regression"}

# A generated dataset of at most this many cells is made in memory by scikit-learn, as it
# always was (its values, hence past results, stay the same); a larger one is made in
# chunks straight into Parquet (write_generated). A number of its own, not the API's cap
# (services.data_spec.MAX_SYNTHETIC_CELLS): raising that cap must send the larger datasets
# down the chunked path, not into memory.
IN_MEMORY_SYNTHETIC_CELLS = 50_000_000
# A chunk (one Parquet row group) holds at most CHUNK_ROWS rows and CHUNK_CELLS cells
# (16 MB of float32), so that a wide dataset's chunks are no larger than a narrow one's:
# the writer holds one chunk, and a streaming fold task reads one row group at a time.
CHUNK_ROWS = 100_000
CHUNK_CELLS = 4_000_000
CLASS_SEPARATION = 1.0   # half the side of the hypercube whose corners are the class centroids
REGRESSION_NOISE = 10.0  # as make_regression(noise=10.0) has it
MODEL_STREAM, CHUNK_STREAM = 0, 1  # random streams of a seed: the model drawn once, each chunk's rows


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32, rows × features, not yet standardized
    y: np.ndarray  # int64 class labels 0..n_classes-1, or float32 targets
    info: DataInfo

    @property
    def n_classes(self) -> int:
        return self.info.n_classes


def load_dataset(spec: DatasetSpec) -> Dataset:
    if spec.name in GENERATED and not fits_in_memory(spec):
        return chunked_dataset(spec)
    if spec.name == "synthetic":
        # flip_y=0: no randomly relabelled rows, so each class has exactly rows // classes
        # (or one more) rows, as services.job_data's check of the folds counts on.
        x, y = sk.make_classification(
            n_samples=spec.rows, n_features=spec.features, n_classes=spec.classes,
            n_informative=informative_features(spec.features, spec.classes),
            n_redundant=0, flip_y=0.0, random_state=spec.seed)
    elif spec.name == "synthetic_regression":
        x, y = sk.make_regression(n_samples=spec.rows, n_features=spec.features,
                                  n_informative=max(1, spec.features // 2), noise=10.0,
                                  random_state=spec.seed)
    else:
        x, y = BUNDLED[spec.name](return_X_y=True)
    shape = IMAGE_SHAPES.get(spec.name, (x.shape[1],))
    if spec.name in REGRESSION:
        return Dataset(x.astype(np.float32), y.astype(np.float32), DataInfo("regression", shape))
    y = y.astype(np.int64)
    return Dataset(x.astype(np.float32), y, DataInfo("classification", shape, int(y.max()) + 1))


def fits_in_memory(spec: DatasetSpec) -> bool:
    """Whether a generated dataset is made by scikit-learn in memory (else in chunks)."""
    return spec.rows * spec.features <= IN_MEMORY_SYNTHETIC_CELLS


def chunk_rows_of(spec: DatasetSpec) -> int:
    """The rows of each chunk of a generated dataset: fixed by its width, so that the same
    spec always gives the same chunks, hence the same file."""
    return max(1, min(CHUNK_ROWS, CHUNK_CELLS // spec.features))


def write_generated(spec: DatasetSpec, sink: str | BinaryIO, chunk_rows: int | None = None, *,
                    features: list[str] | None = None, label: str = "label") -> None:
    """A generated dataset of any size written as Parquet to `sink` (a local path or an
    open stream), one row group per chunk: only a chunk is ever held. The same spec and
    chunk size always give the same file. Columns `features` (f0, f1... by default), as
    float32, then `label` (int64 classes, or a float32 target)."""
    names = features or [f"f{i}" for i in range(spec.features)]
    schema = generated_schema(names, label, spec.name in REGRESSION)
    chunk_rows = chunk_rows or chunk_rows_of(spec)
    # Random floats never repeat: a dictionary would only cost time; the classes compress.
    with pq.ParquetWriter(sink, schema, use_dictionary=[label]) as writer:
        for chunk in generated_chunks(spec, chunk_rows):
            writer.write_table(chunk_table(*chunk, schema), row_group_size=chunk_rows)
            del chunk  # not held while the next one is drawn


def chunk_table(x: np.ndarray, y: np.ndarray, schema: pa.Schema) -> pa.Table:
    columns = [pa.array(x[:, i]) for i in range(x.shape[1])]  # each a column of x, not a copy
    return pa.Table.from_arrays([*columns, pa.array(y)], schema=schema)


def generated_schema(features: list[str], label: str, regression: bool) -> pa.Schema:
    target = pa.float32() if regression else pa.int64()
    return pa.schema([*(pa.field(name, pa.float32(), nullable=False) for name in features),
                      pa.field(label, target, nullable=False)])


def chunked_dataset(spec: DatasetSpec) -> Dataset:
    """A dataset above the in-memory cap as write_generated writes it, in memory all the same
    (for whoever asks: the dispatcher writes it chunk by chunk instead)."""
    chunks = list(generated_chunks(spec, chunk_rows_of(spec)))
    x, y = np.concatenate([x for x, _ in chunks]), np.concatenate([y for _, y in chunks])
    if spec.name in REGRESSION:
        return Dataset(x, y, DataInfo("regression", (spec.features,)))
    return Dataset(x, y, DataInfo("classification", (spec.features,), spec.classes))


def generated_chunks(spec: DatasetSpec, chunk_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(features, labels) of each chunk of `chunk_rows` rows (the last one shorter): the
    model (class centroids, or the weights of a linear target) drawn once from the seed,
    each chunk's rows from a random stream of its own (the seed and the chunk's index)."""
    model = np.random.default_rng([spec.seed, MODEL_STREAM])
    regression = spec.name in REGRESSION
    make_chunk = regression_chunk(spec, model) if regression else classification_chunk(spec, model)
    for index, start in enumerate(range(0, spec.rows, chunk_rows)):
        rows = np.arange(start, min(start + chunk_rows, spec.rows))
        yield make_chunk(np.random.default_rng([spec.seed, CHUNK_STREAM, index]), rows)


def classification_chunk(spec: DatasetSpec, model: np.random.Generator):
    """Gaussian points of unit variance around each class's centroid (a distinct corner of
    a hypercube in the informative features, as make_classification places its clusters);
    the other features are noise. Row i is of class i mod classes, shuffled within its
    chunk: each class has rows // classes rows or one more, as services.job_data's check
    of the folds counts on."""
    informative = informative_features(spec.features, spec.classes)
    columns = model.permutation(spec.features)[:informative]  # which features carry the classes
    centroids = hypercube_corners(model, spec.classes, informative) * CLASS_SEPARATION

    def chunk(rng: np.random.Generator, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(rows % spec.classes).astype(np.int64)
        x = gaussian_columns(rng, len(rows), spec.features)
        for column, centre in zip(columns, centroids.T):
            x[:, column] += centre[labels]
        return x, labels
    return chunk


def regression_chunk(spec: DatasetSpec, model: np.random.Generator):
    """A fixed linear model of half the features (weights in [0, 100), as make_regression
    draws them) plus Gaussian noise."""
    informative = max(1, spec.features // 2)
    columns = model.permutation(spec.features)[:informative]
    weights = 100 * model.random(informative)

    def chunk(rng: np.random.Generator, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = gaussian_columns(rng, len(rows), spec.features)
        target = REGRESSION_NOISE * rng.standard_normal(len(rows))
        for column, weight in zip(columns, weights):
            target += weight * x[:, column]
        return x, target.astype(np.float32)
    return chunk


def gaussian_columns(rng: np.random.Generator, rows: int, features: int) -> np.ndarray:
    """rows × features of N(0, 1) in float32, column by column in memory (Fortran order):
    each column goes to Parquet without a copy."""
    return rng.standard_normal((features, rows), dtype=np.float32).T


def hypercube_corners(rng: np.random.Generator, count: int, dimensions: int) -> np.ndarray:
    """`count` distinct corners of the cube [-1, 1]^dimensions (data_spec's `separable`
    makes sure there are enough)."""
    corners: dict[bytes, np.ndarray] = {}
    while len(corners) < count:
        corner = rng.integers(0, 2, dimensions, dtype=np.int8)
        corners.setdefault(corner.tobytes(), corner)
    return np.stack(list(corners.values())).astype(np.float32) * 2 - 1


def bundled_id(name: str) -> str:
    return f"bundled-{name}"


def register_bundled(*, session: Session, store: DatasetStore) -> dict[str, StoredDataset]:
    """Store each bundled dataset as an ordinary dataset of BUNDLED_OWNER, once: several
    processes starting together may each try; the database keeps one. Returns them by
    name, detached from the session (they never change: a process may keep them)."""
    for name in BUNDLED:
        if session.get(StoredDataset, bundled_id(name)) is None:
            register_one(session, store, name)
    found = {name: session.get(StoredDataset, bundled_id(name)) for name in BUNDLED}
    session.expunge_all()
    return found


@lru_cache(maxsize=None)
def bundled_parquet(name: str) -> bytes:
    """The bundled dataset as a Parquet file: its features by name, then `target`."""
    frame = BUNDLED[name](as_frame=True).frame
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    return buffer.getvalue().to_pybytes()


def register_one(session: Session, store: DatasetStore, name: str) -> None:
    task = "regression" if name in REGRESSION else "classification"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.parquet"
        path.write_bytes(bundled_parquet(name))
        stored = ingest(path, store, bundled_id(name))
    extra = {"label": "target", "task": task, "image_shape": list(IMAGE_SHAPES.get(name, ()))}
    session.add(StoredDataset(id=bundled_id(name), name=name, owner=BUNDLED_OWNER, format="parquet",
                              uri=store.uri_of(bundled_id(name)), digest=stored.digest, size=stored.size,
                              rows=stored.rows, columns=stored.columns, extra=extra))
    try:
        session.commit()
    except IntegrityError:  # another process registered it meanwhile: the same file
        session.rollback()

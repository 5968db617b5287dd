"""Built-in datasets, all from scikit-learn's bundled files or generated: nothing is downloaded.

The bundled ones are also stored as ordinary datasets (register_bundled), readable by
every owner.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32, rows × features, not yet standardized
    y: np.ndarray  # int64 class labels 0..n_classes-1, or float32 targets
    info: DataInfo

    @property
    def n_classes(self) -> int:
        return self.info.n_classes


def load_dataset(spec: DatasetSpec) -> Dataset:
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

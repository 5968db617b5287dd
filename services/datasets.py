"""Built-in datasets, all from scikit-learn's bundled files or generated: nothing is downloaded.

The bundled ones are also stored as ordinary datasets (register_bundled), readable by
every owner.
"""
from __future__ import annotations

import math
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
STRATA_FOR_REGRESSION = 5  # regression targets are stratified by their quintile


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32, rows × features, not yet standardized
    y: np.ndarray  # int64 class labels 0..n_classes-1, or float32 targets
    info: DataInfo

    @property
    def n_classes(self) -> int:
        return self.info.n_classes

    def strata(self) -> np.ndarray:
        """Labels whose proportions every fold keeps: the class, or the target's quintile."""
        if self.info.task == "classification":
            return self.y
        edges = np.quantile(self.y, np.linspace(0, 1, STRATA_FOR_REGRESSION + 1)[1:-1])
        return np.searchsorted(edges, self.y, side="right")

    def smallest_stratum(self) -> int:
        return int(np.bincount(self.strata()).min())


@dataclass(frozen=True)
class DatasetFacts:
    """What is true of a dataset, known without generating a synthetic one: submissions
    are checked with it (it must stay cheap) and jobs record it."""
    info: DataInfo
    rows: int
    smallest_stratum: int

    def params(self) -> dict[str, str]:
        """As flat `dataset.*` params, beside the spec's (same keys, same values)."""
        facts = {"dataset.task": self.info.task, "dataset.rows": self.rows,
                 "dataset.features": math.prod(self.info.input_shape)}
        if self.info.task == "classification":
            facts["dataset.classes"] = self.info.n_classes
        return {key: str(value) for key, value in facts.items()}


def describe(spec: DatasetSpec) -> DatasetFacts:
    if spec.name == "synthetic":
        info = DataInfo("classification", (spec.features,), spec.classes)
        return DatasetFacts(info, spec.rows, spec.rows // spec.classes)
    if spec.name == "synthetic_regression":
        info = DataInfo("regression", (spec.features,))
        return DatasetFacts(info, spec.rows, spec.rows // STRATA_FOR_REGRESSION)
    return describe_bundled(spec.name)


def describe_every_bundled_dataset() -> None:
    """Fill describe()'s cache, so that no submission waits for a dataset's first load."""
    for name in BUNDLED:
        describe_bundled(name)


@lru_cache(maxsize=None)
def describe_bundled(name: str) -> DatasetFacts:
    data = load_dataset(DatasetSpec(name=name))
    return DatasetFacts(data.info, len(data.y), data.smallest_stratum())


def load_dataset(spec: DatasetSpec) -> Dataset:
    if spec.name == "synthetic":
        # flip_y=0: no randomly relabelled rows, so each class has exactly rows // classes
        # (or one more) rows, as describe() promises.
        x, y = sk.make_classification(
            n_samples=spec.rows, n_features=spec.features, n_classes=spec.classes,
            n_informative=max(2, min(spec.features, spec.classes * 2)),
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


def register_bundled(*, session: Session, store: DatasetStore) -> None:
    """Store each bundled dataset as an ordinary dataset of BUNDLED_OWNER, once: several
    processes starting together may each try; the database keeps one."""
    for name in BUNDLED:
        if session.get(StoredDataset, bundled_id(name)) is None:
            register_one(session, store, name)


def register_one(session: Session, store: DatasetStore, name: str) -> None:
    frame = BUNDLED[name](as_frame=True).frame  # the features by name, then `target`
    task = "regression" if name in REGRESSION else "classification"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.parquet"
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
        stored = ingest(path, store, bundled_id(name))
    extra = {"label": "target", "task": task, "image_shape": list(IMAGE_SHAPES.get(name, ()))}
    session.add(StoredDataset(id=bundled_id(name), name=name, owner=BUNDLED_OWNER, format="parquet",
                              uri=store.uri_of(bundled_id(name)), digest=stored.digest, size=stored.size,
                              rows=stored.rows, columns=stored.columns, extra=extra))
    try:
        session.commit()
    except IntegrityError:  # another process registered it meanwhile: the same file
        session.rollback()

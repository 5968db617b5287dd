"""Built-in datasets, all from scikit-learn's bundled files or generated: nothing is downloaded."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn import datasets as sk

from services.spec import DatasetSpec

LOADERS = {
    "digits": sk.load_digits,       # 8x8 images, flattened to 64 features
    "iris": sk.load_iris,
    "wine": sk.load_wine,
    "breast_cancer": sk.load_breast_cancer,
}


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32, rows × features, not yet standardized
    y: np.ndarray  # int64 class labels 0..n_classes-1

    @property
    def n_classes(self) -> int:
        return int(self.y.max()) + 1

    def smallest_class(self) -> int:
        return int(np.bincount(self.y).min())


def load_dataset(spec: DatasetSpec) -> Dataset:
    if spec.name == "synthetic":
        x, y = sk.make_classification(
            n_samples=spec.rows, n_features=spec.features, n_classes=spec.classes,
            n_informative=max(2, min(spec.features, spec.classes * 2)),
            n_redundant=0, random_state=spec.seed)
    else:
        x, y = LOADERS[spec.name](return_X_y=True)
    return Dataset(x.astype(np.float32), y.astype(np.int64))

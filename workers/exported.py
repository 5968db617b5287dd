"""A fold's best model as a user gets it: raw rows of the table in, labels (or values) out.

services.tracking saves each fold's model as an MLflow pyfunc model whose loader is this
module (copied into the model with the rest of `workers`), so it loads with MLflow,
torch and numpy alone:

    model = mlflow.pyfunc.load_model("runs:/<fold run>/model")
    model.predict(pandas.read_csv("pets.csv"))   # -> the predicted classes

It replays the fold's encoding (workers.encoding), learnt from the fold's training rows
and saved with the weights: imputation, standardization, one-hot categories (a category
the fold never trained on encodes as zeros), and the class mapping.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from workers.config import CNNConfig, MLPConfig
from workers.models import build_model

MODEL_TYPES = {"mlp": MLPConfig, "cnn": CNNConfig}


class FoldModel:
    def __init__(self, folder: Path):
        self.about = json.loads((folder / "model.json").read_text())
        settings = dict(self.about["model"])
        config = MODEL_TYPES[settings.pop("type")](**{k: tuple(v) if isinstance(v, list) else v
                                                      for k, v in settings.items()})
        self.network = build_model(config, tuple(self.about["input_shape"]), self.about["outputs"])
        self.network.load_state_dict(torch.load(folder / "best.pt", weights_only=True))
        self.network.eval()

    def predict(self, rows, params=None) -> np.ndarray:
        """`rows`: a DataFrame (or anything indexable by column name) of raw feature values."""
        inputs = torch.from_numpy(encode_rows(rows, self.about["preprocessing"]))
        with torch.no_grad():
            outputs = self.network(inputs)
        if self.about["task"] == "classification":
            classes = np.asarray(self.about["preprocessing"]["classes"], dtype=object)
            return classes[outputs.argmax(-1).numpy()]
        target = self.about["preprocessing"]["target"]
        return outputs.squeeze(-1).numpy().astype(np.float64) * target["std"] + target["mean"]


def column(rows, name: str) -> np.ndarray:
    values = rows[name]
    return values.to_numpy() if hasattr(values, "to_numpy") else np.asarray(values)


def encode_rows(rows, state: dict) -> np.ndarray:
    """The fold's encoding, replayed: numbers, then each string column's one-hot block."""
    parts = [encode_number(column(rows, name), how) for name, how in state["numbers"].items()]
    parts += [encode_string(column(rows, name), how) for name, how in state["strings"].items()]
    return np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1).astype(np.float32)


def encode_number(values: np.ndarray, how: dict) -> np.ndarray:
    numbers = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    numbers = np.where(np.isnan(numbers), how["impute"], numbers)
    return ((numbers - how["mean"]) / how["std"]).astype(np.float32)


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def encode_string(values: np.ndarray, how: dict) -> np.ndarray:
    index = {category: i for i, category in enumerate(how["categories"])}
    seen = np.asarray(how["seen"], dtype=bool)
    block = np.zeros((len(values), len(index)), dtype=np.float32)
    for row, value in enumerate(values):
        position = index.get(how["impute"] if missing(value) else value)
        if position is not None and seen[position]:  # unseen in training: all zeros
            block[row, position] = 1.0
    return block


def _load_pyfunc(data_path: str) -> FoldModel:
    """MLflow's entry point for a model whose loader_module is this one."""
    return FoldModel(Path(data_path))

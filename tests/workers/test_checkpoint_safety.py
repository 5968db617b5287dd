"""Checkpoints are data, never code: every checkpoint a fold or a pack saves loads with
torch.load(weights_only=True), and a checkpoint that would run code as it loads is refused
by the resume loader and by the exported model's loader, without running it."""
import enum
import io
import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.workers.helpers import CPU, INFO, OPTIMIZER_VALUES, as_config, blobs, job_for, plans, recording
from workers.checkpointing import checkpoint_epoch, from_bytes, to_bytes, weights_bytes
from workers.config import MLPConfig
from workers.exported import FoldModel
from workers.fold import run_fold
from workers.models import build_model
from workers.packed.fold import run_packed_folds
from workers.plans import DataInfo
from workers.table import Table


class Trap:
    """Unpickled, it writes a file: what a crafted checkpoint could do, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "the checkpoint ran code")


@pytest.fixture
def trap(tmp_path) -> tuple[bytes, Path]:
    """A checkpoint-shaped file (torch.save) whose model would run code, and its marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Trap(marker)))  # the trap works where pickles are trusted
    assert marker.exists()
    marker.unlink()
    buffer = io.BytesIO()
    torch.save({"epoch": 3, "model": {"weight": Trap(marker)}}, buffer)
    return buffer.getvalue(), marker


def regression_data():
    x, _ = blobs()
    return x, (x @ np.arange(1.0, 6.0)).astype(np.float32)


TASKS = {"classification": (INFO, lambda: blobs()), "regression": (DataInfo("regression", (5,)), regression_data)}


def train(task: str, job, packed: bool, **options):
    """A fold (or the pack of three) of `task`; its results and its checkpoint after every epoch."""
    info, data = TASKS[task]
    x, y = data()
    snapshots = []
    if packed:
        results = run_packed_folds(Table.of(x, y), info, plans(len(y)), job, device=CPU,
                                   callbacks=recording({}, snapshots), **options)
    else:
        results = [run_fold(Table.of(x, y), info, plans(len(y))[0], job, device=CPU,
                            callbacks=recording([], snapshots), **options)]
    return results, snapshots


@pytest.mark.parametrize("packed", [False, True], ids=["fold", "pack"])
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("values", OPTIMIZER_VALUES, ids=lambda v: f"{v['name']}-{v.get('bias_correction', '')}")
def test_every_checkpoint_loads_weights_only_and_resumes_exactly(values, task, packed):
    # Dropout: the restored random state must give the same masks.
    job = replace(job_for(as_config(values)), max_epochs=6, model=MLPConfig((16, 8), batch_norm=True, dropout=0.2))
    full, snapshots = train(task, job, packed)
    for snapshot in snapshots:
        torch.load(io.BytesIO(snapshot), weights_only=True)
    torch.manual_seed(999)  # whatever the new process's random state, the checkpoint wins
    resumed, _ = train(task, job, packed, resume_from=snapshots[2])
    for alone, again in zip(full, resumed):
        assert again.status == alone.status and again.epochs_run == alone.epochs_run
        assert again.best_epoch == alone.best_epoch
        assert again.test_metrics == pytest.approx(alone.test_metrics, rel=1e-6)


def test_the_resume_loader_refuses_a_checkpoint_that_runs_code(trap):
    data, marker = trap
    x, y = blobs()
    job = job_for(as_config(OPTIMIZER_VALUES[0]))
    for load in (from_bytes, checkpoint_epoch,
                 lambda d: run_fold(Table.of(x, y), INFO, plans(len(y))[0], job, device=CPU, resume_from=d),
                 lambda d: run_packed_folds(Table.of(x, y), INFO, plans(len(y)), job, device=CPU, resume_from=d)):
        with pytest.raises(pickle.UnpicklingError):
            load(data)
    assert not marker.exists()


def exported_folder(folder: Path, best: bytes) -> Path:
    """What services.tracking writes under an MLflow model's data/: model.json and best.pt."""
    folder.mkdir()
    about = {"model": {"type": "mlp", "hidden": [8], "batch_norm": False, "dropout": 0.0},
             "input_shape": [5], "outputs": 3, "task": "classification", "preprocessing": {}}
    (folder / "model.json").write_text(json.dumps(about))
    (folder / "best.pt").write_bytes(best)
    return folder


def test_the_exported_model_loader_refuses_a_checkpoint_that_runs_code(trap, tmp_path):
    data, marker = trap
    genuine = build_model(MLPConfig((8,), batch_norm=False, dropout=0.0), (5,), 3).state_dict()
    FoldModel(exported_folder(tmp_path / "genuine", weights_bytes(genuine)))  # the folder is right
    with pytest.raises(pickle.UnpicklingError):
        FoldModel(exported_folder(tmp_path / "crafted", data))
    assert not marker.exists()


class Monitor(str, enum.Enum):
    VAL_LOSS = "val_loss"


@pytest.mark.parametrize("value, kind", [(np.float64(0.5), "float64"), (np.arange(3), "ndarray"),
                                         (Monitor.VAL_LOSS, "Monitor"), (INFO, "DataInfo")])
def test_what_weights_only_cannot_load_is_refused_as_it_is_saved(value, kind):
    with pytest.raises(TypeError, match=rf"checkpoint\['stopper'\]\['best_value'\] is a {kind}\b"):
        to_bytes({"epoch": 1, "stopper": {"best_value": value}})

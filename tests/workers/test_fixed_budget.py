"""Fixed-budget training (early stopping off) and the first epoch at a target validation
loss, and that epoch across a resume. (Packed and streamed folds use the same
EarlyStopping and report its target_epoch the same way.)"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from tests.workers.helpers import CPU, recording, stopping, training
from tests.workers.test_training import INFO, blobs, plan_for
from workers.early_stopping import EarlyStopping
from workers.fold import run_fold
from workers.table import Table

OFF = training(max_epochs=12, early_stopping=stopping(patience=None, target_val_loss=0.5))


def test_with_early_stopping_off_every_epoch_runs_and_the_last_is_kept():
    x, y = blobs()
    reports = []
    result = run_fold(Table.of(x, y), INFO, plan_for(len(y)), OFF, device=CPU, callbacks=recording(reports))
    assert result.epochs_run == 12 and result.best_epoch == 12  # the budget, whatever val_loss did
    assert result.best_metrics == reports[-1].metrics
    assert [r.best_epoch for r in reports] == list(range(1, 13))


def test_the_first_epoch_at_the_target_val_loss_is_recorded_once():
    x, y = blobs()
    reports = []
    result = run_fold(Table.of(x, y), INFO, plan_for(len(y)), OFF, device=CPU, callbacks=recording(reports))
    losses = [r.metrics["val_loss"] for r in reports]
    first = next(i + 1 for i, loss in enumerate(losses) if loss <= 0.5)
    assert result.target_epoch == first
    never = replace(OFF, early_stopping=stopping(patience=None, target_val_loss=1e-9))
    assert run_fold(Table.of(x, y), INFO, plan_for(len(y)), never, device=CPU).target_epoch is None
    assert run_fold(Table.of(x, y), INFO, plan_for(len(y)), training(), device=CPU).target_epoch is None


def test_the_target_epoch_survives_a_resume_from_a_checkpoint():
    x, y = blobs()
    snapshots: list = []
    whole = run_fold(Table.of(x, y), INFO, plan_for(len(y)), OFF, device=CPU,
                     callbacks=recording([], snapshots))
    assert whole.target_epoch is not None and whole.target_epoch < 12
    resumed = run_fold(Table.of(x, y), INFO, plan_for(len(y)), OFF, device=CPU,
                       resume_from=snapshots[whole.target_epoch])  # after the target was reached
    assert resumed.target_epoch == whole.target_epoch and resumed.test_metrics == whole.test_metrics


def test_patience_none_never_stops():
    stopper = EarlyStopping(monitor="val_loss", patience=None, min_delta=0.0)
    model = torch.nn.Linear(1, 1)
    assert not any(stopper.on_epoch_end(e, {"val_loss": float(e)}, model) for e in range(1, 50))
    assert stopper.best_epoch == 49 and not np.isnan(stopper.best_value)

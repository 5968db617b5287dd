"""A refit's fold (FoldPlan.everything): every row trains, none validates or tests; a
fixed budget, the last epoch kept. In memory and streamed, classification and regression."""
from __future__ import annotations

import numpy as np
import pytest

from tests.workers.helpers import CPU, recording, stopping, training
from tests.workers.test_stream_fold import INFO, dataset, written
from workers.fold import run_fold
from workers.plans import DataInfo, FoldPlan
from workers.table import Table

REFIT = training(batch_size=64, max_epochs=6, early_stopping=stopping(patience=None))


def test_every_row_trains_and_none_validates_or_tests():
    plan = FoldPlan.everything(10)
    assert plan.train.tolist() == list(range(10))
    assert len(plan.val) == 0 and len(plan.test) == 0


@pytest.mark.parametrize("streamed", [False, True], ids=["memory", "streamed"])
def test_a_refit_trains_its_budget_on_every_row_and_reports_training_figures_only(tmp_path, streamed):
    x, y = dataset(rows=1200)
    reports = []
    plan = FoldPlan.everything(len(y))
    if streamed:
        from workers.stream.fold import run_streamed_fold
        result = run_streamed_fold(written(tmp_path, x, y), INFO, plan, REFIT, device=CPU,
                                   callbacks=recording(reports), buffer_rows=4096)
    else:
        result = run_fold(Table.of(x, y), INFO, plan, REFIT, device=CPU, callbacks=recording(reports))
    assert result.epochs_run == result.best_epoch == 6
    assert result.test_metrics == {} and result.confusion is None and result.checkpoint
    assert set(reports[-1].metrics) == {"train_loss", "train_loss_ewma", "train_loss_ewma_corrected"}
    assert reports[-1].metrics["train_loss"] < reports[0].metrics["train_loss"]  # it learns
    assert result.preprocessing["classes"] == [0, 1, 2]


def test_a_regression_refit_standardizes_its_target_with_every_row():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    y = 100 + 20 * x[:, 0]
    info = DataInfo("regression", (4,), 0, ())
    result = run_fold(Table.of(x, y), info, FoldPlan.everything(500), REFIT, device=CPU)
    assert result.test_metrics == {}
    assert result.preprocessing["target"]["mean"] == pytest.approx(y.mean())
    assert result.preprocessing["target"]["std"] == pytest.approx(y.std())

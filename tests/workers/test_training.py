import io
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.workers.helpers import CPU, optimizer, recording, split_plan, stopping, training
from workers.config import CNNConfig, MLPConfig
from workers.early_stopping import EarlyStopping
from workers.fold import run_fold, standardize
from workers.models import build_mlp
from workers.optimizers import LectureMomentum, build_optimizer
from workers.table import Table
from workers.plans import DataInfo
from workers.tasks import Classification
from workers.training import LossAverage, Split, batch_starts, evaluate, fit, train_one_epoch

INFO = DataInfo("classification", (4,), 3)
TASK = Classification(3)
JOB = training()  # MLP [32] with batch norm and dropout 0.1, Adam 0.01, batch 16, patience 5


def blobs(n=120, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, features)) + 3 * np.eye(classes, features)[y]
    return x.astype(np.float32), y.astype(np.int64)


def plan_for(n):
    rows = np.arange(n)
    return split_plan(rows[: n // 2], rows[n // 2: 3 * n // 4], rows[3 * n // 4:])


def test_batch_starts_cover_every_row_including_the_partial_last_batch():
    assert list(batch_starts(10, 4)) == [0, 4, 8]  # sizes 4, 4, 2
    assert list(batch_starts(10, None)) == [0]      # full batch: one step per epoch
    assert list(batch_starts(3, 1)) == [0, 1, 2]    # stochastic: one step per sample


class CountingSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):
        CountingSGD.steps += 1
        return super().step(closure)


@pytest.mark.parametrize("batch_size, steps", [(None, 1), (1, 10), (4, 3)])
def test_steps_per_epoch_follow_the_batch_regime(batch_size, steps):
    x, y = blobs(10)
    model = build_mlp(4, 3, [8], batch_norm=False, dropout=0.0)
    CountingSGD.steps = 0
    train_one_epoch(model, CountingSGD(model.parameters(), lr=0.1), TASK,
                    Split(torch.tensor(x), torch.tensor(y)), batch_size, torch.Generator().manual_seed(0))
    assert CountingSGD.steps == steps


class RowRecorder(torch.nn.Module):
    """Passes its input on and remembers, per training step, the rows it saw (feature 0
    holds each row's number)."""

    def __init__(self):
        super().__init__()
        self.batches: list[list[int]] = []

    def forward(self, x):
        if self.training:
            self.batches.append(x[:, 0].long().tolist())
        return x


def epochs_of_rows(model_tail: list, n=17, batch_size=8, epochs=3, lr=0.01):
    """The rows of every step of `epochs` epochs, and each epoch's reported loss."""
    x = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], torch.randn(n, 3)], 1)
    data = Split(x, torch.randint(0, 3, (n,)))
    recorder = RowRecorder()
    model = torch.nn.Sequential(recorder, *model_tail)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator, seen, losses = torch.Generator().manual_seed(0), [], []
    for _ in range(epochs):
        recorder.batches = []
        losses.append(train_one_epoch(model, optimizer, TASK, data, batch_size, generator).item())
        seen.append(recorder.batches)
    return seen, losses, model, data


def test_every_epoch_sees_every_row_once_in_a_fresh_order():
    seen, _, _, _ = epochs_of_rows([torch.nn.Linear(4, 3)])
    for batches in seen:
        assert [len(b) for b in batches] == [8, 8, 1]  # the last batch holds the remainder
        assert sorted(sum(batches, [])) == list(range(17))
    orders = [tuple(sum(batches, [])) for batches in seen]
    assert len(set(orders)) == 3  # shuffled again every epoch


def test_batch_norm_skips_a_remainder_of_one_row():
    seen, _, _, _ = epochs_of_rows([torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)])
    for batches in seen:
        assert [len(b) for b in batches] == [8, 8]
        assert len(set(sum(batches, []))) == 16


def test_the_epoch_loss_weighs_every_row_alike():
    """17 rows in batches of 8, 8 and 1: the epoch's loss is the mean over rows, not
    the mean of the three batch means (lr 0 keeps the weights, so both can be recomputed)."""
    seen, losses, model, data = epochs_of_rows([torch.nn.Linear(4, 3)], epochs=1, lr=0.0)
    with torch.no_grad():
        per_row = TASK.loss(model(data.x), data.y, "none")
    assert losses[0] == pytest.approx(per_row.mean().item(), rel=1e-6)
    mean_of_batch_means = np.mean([per_row[rows].mean().item() for rows in seen[0]])
    assert abs(mean_of_batch_means - losses[0]) > 1e-3  # so the check above tells them apart


def test_momentum_follows_the_lecture_formula():
    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    optimizer = LectureMomentum([w], lr=0.1, beta=0.9)
    reference, velocity = w.detach().double().clone(), torch.zeros(5, dtype=torch.float64)
    for _ in range(20):
        loss = (w ** 2).sum() + w.sum()
        optimizer.zero_grad()
        loss.backward()
        grad = w.grad.detach().double().clone()
        optimizer.step()
        velocity = 0.9 * velocity + 0.1 * grad  # V = βV + (1-β)dW, V₀ = 0
        reference -= 0.1 * velocity
        assert torch.allclose(w.detach().double(), reference, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "momentum", "rmsprop", "adam"])
def test_every_optimizer_learns_a_separable_problem(name):
    x, y = blobs()
    job = replace(JOB, optimizer=optimizer(name, lr=0.05 if name in ("sgd", "momentum") else 0.01))
    outcome = run_fold(Table.of(x, y), INFO, plan_for(len(y)), job, device=CPU)
    assert outcome.test_metrics["accuracy"] > 0.9


def test_early_stopping_keeps_the_best_epoch_and_its_weights():
    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopping(**vars(stopping(patience=2)))
    values = [1.0, 0.5, 0.7, 0.6]
    stops = []
    for epoch, value in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        stops.append(stopper.on_epoch_end(epoch, {"val_loss": value}, model))
    assert stops == [False, False, False, True]
    assert stopper.best_epoch == 2
    assert torch.all(stopper.best_state["weight"] == 2)  # a copy, not the live tensor


def test_min_delta_ignores_tiny_improvements():
    stopper = EarlyStopping(**vars(stopping(patience=1, min_delta=0.1)))
    model = torch.nn.Linear(1, 1)
    stopper.on_epoch_end(1, {"val_loss": 1.0}, model)
    assert stopper.on_epoch_end(2, {"val_loss": 0.95}, model) is True
    assert stopper.best_epoch == 1


def test_fit_restores_the_best_weights_before_testing():
    x, y = blobs()
    data = Split(torch.tensor(x), torch.tensor(y))
    model = build_mlp(4, 3, [16], batch_norm=True, dropout=0.2)
    stopper = EarlyStopping(**vars(stopping(patience=3)))
    history = []
    result = fit(model, torch.optim.Adam(model.parameters(), 0.01), TASK, index=0, train=data, val=data,
                 test=data, batch_size=16, max_epochs=30, stopper=stopper, seed=0, ewma_beta=0.9,
                 callbacks=recording(history))
    best = history[result.best_epoch - 1].metrics
    assert best["val_loss"] == min(r.metrics["val_loss"] for r in history)
    assert result.best_metrics == best  # the best epoch's figures travel with the result
    assert [r.best_epoch for r in history][-1] == result.best_epoch
    # The restored model scores exactly what it scored at its best epoch.
    assert evaluate(model, TASK, data)["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert result.test_metrics["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_run_fold_reports_every_epoch_and_returns_a_loadable_checkpoint():
    x, y = blobs()
    reports = []
    outcome = run_fold(Table.of(x, y), INFO, plan_for(len(y)), JOB, device=CPU, callbacks=recording(reports))
    assert outcome.status == "succeeded" and outcome.index == 0
    assert [r.epoch for r in reports] == list(range(1, outcome.epochs_run + 1))
    assert 1 <= outcome.best_epoch <= outcome.epochs_run
    state = torch.load(io.BytesIO(outcome.checkpoint), weights_only=True)
    model = build_mlp(4, 3, [32], batch_norm=True, dropout=0.1)
    model.load_state_dict(state)  # plain torch is enough to use it


def test_same_seed_gives_the_same_fold():
    x, y = blobs()
    runs = [run_fold(Table.of(x, y), INFO, plan_for(len(y)), JOB, device=CPU) for _ in range(2)]
    assert runs[0].test_metrics == runs[1].test_metrics


def test_standardize_uses_training_rows_only():
    x = np.array([[0.0], [2.0], [100.0]], dtype=np.float32)
    scaled = standardize(x, np.array([0, 1]))
    assert scaled[:2, 0].tolist() == [-1.0, 1.0]
    assert scaled[2, 0] == pytest.approx(99.0)


def test_a_diverging_loss_stops_the_fold_with_its_epoch():
    x, y = blobs()
    job = replace(JOB, model=MLPConfig((32,), batch_norm=False, dropout=0.0),
                  optimizer=optimizer("sgd", lr=1e6))
    result = run_fold(Table.of(x * 1e3, y), INFO, plan_for(len(y)), job, device=CPU)
    assert result.status == "failed" and result.checkpoint is None and not result.test_metrics
    assert re.search(r"loss became (nan|inf) at epoch \d+", result.error), result.error


def test_build_optimizer_maps_the_lecture_hyperparameters():
    params = [torch.nn.Parameter(torch.zeros(1))]
    rms = build_optimizer(params, optimizer("rmsprop", lr=0.1, beta=0.8, eps=1e-6))
    assert rms.defaults["alpha"] == 0.8 and rms.defaults["eps"] == 1e-6
    adam = build_optimizer(params, optimizer("adam", lr=0.1, beta1=0.8, beta2=0.97))
    assert adam.defaults["betas"] == (0.8, 0.97)


def test_epoch_reports_carry_the_loss_average_beside_the_raw_loss():
    x, y = blobs()
    reports = []
    run_fold(Table.of(x, y), INFO, plan_for(len(y)), replace(JOB, loss_ewma_beta=0.5), device=CPU,
             callbacks=recording(reports))
    average = LossAverage(0.5)
    for report in reports:
        raw, corrected = average.update(report.metrics["train_loss"])
        assert report.metrics["train_loss_ewma"] == pytest.approx(raw)
        assert report.metrics["train_loss_ewma_corrected"] == pytest.approx(corrected)
    assert {"val_loss", "val_accuracy", "val_f1"} <= set(reports[0].metrics)


@pytest.mark.parametrize("second, stops", [(0.84, True), (0.86, False)])
def test_min_delta_applies_to_validation_accuracy_too(second, stops):
    stopper = EarlyStopping(monitor="val_accuracy", patience=1, min_delta=0.05)
    model = torch.nn.Linear(1, 1)
    stopper.on_epoch_end(1, {"val_accuracy": 0.80}, model)
    assert stopper.on_epoch_end(2, {"val_accuracy": second}, model) is stops
    assert stopper.best_epoch == (1 if stops else 2)


def test_loss_average_follows_the_lecture():
    average = LossAverage(0.9)
    assert average.update(10.0) == pytest.approx((1.0, 10.0))  # v₁ = 0.1·10; v₁/(1-0.9) = 10
    assert average.update(10.0) == pytest.approx((1.9, 10.0))  # v₂ = 0.9·1 + 1; /(1-0.81) = 10


def test_early_stopping_can_monitor_validation_accuracy():
    stopper = EarlyStopping(monitor="val_accuracy", patience=1, min_delta=0.0)
    model = torch.nn.Linear(1, 1)
    stopper.on_epoch_end(1, {"val_accuracy": 0.5}, model)
    assert stopper.on_epoch_end(2, {"val_accuracy": 0.7}, model) is False
    assert stopper.on_epoch_end(3, {"val_accuracy": 0.6}, model) is True
    assert stopper.best_epoch == 2


def test_regression_fold_reports_mae_and_r2():
    # scikit-learn's copies, not services.datasets: these tests also run on a GPU machine
    # that has torch and scikit-learn but not the service's packages.
    from sklearn.datasets import load_diabetes
    x, y = load_diabetes(return_X_y=True)
    job = replace(JOB, model=MLPConfig((32,), batch_norm=False, dropout=0.0), max_epochs=60)
    rows = np.random.default_rng(0).permutation(len(y))
    plan = split_plan(rows[:260], rows[260:350], rows[350:])
    outcome = run_fold(Table.of(x, y), DataInfo("regression", (10,)), plan, job, device=CPU)
    assert set(outcome.test_metrics) == {"loss", "mae", "r2"}
    # Predicting the mean scores r2 = 0 and mae ≈ 65; Adam at 0.01 overfits these 260
    # rows within a few epochs, so early stopping keeps an early model (r2 0.30-0.40
    # across splits).
    assert outcome.test_metrics["r2"] > 0.25 and 30 < outcome.test_metrics["mae"] < 60


def test_cnn_fold_learns_digits():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    job = replace(JOB, model=CNNConfig((8, 16), (32,), batch_norm=True, dropout=0.1), max_epochs=8)
    rows = np.random.default_rng(0).permutation(len(y))
    plan = split_plan(rows[:1000], rows[1000:1400], rows[1400:])
    outcome = run_fold(Table.of(x, y), DataInfo("classification", (1, 8, 8), 10), plan, job, device=CPU)
    assert outcome.test_metrics["accuracy"] > 0.9


def test_a_fold_resumed_from_a_checkpoint_continues_exactly():
    x, y = blobs()
    job = replace(JOB, max_epochs=12, early_stopping=stopping(patience=20))
    whole, snapshots = [], []
    full = run_fold(Table.of(x, y), INFO, plan_for(len(y)), job, device=CPU, callbacks=recording(whole, snapshots))
    assert len(snapshots) == 12
    resumed_reports = []
    # As if the worker died after epoch 5: a new process starts from that checkpoint.
    torch.manual_seed(12345)  # whatever the new process's random state, the checkpoint wins
    resumed = run_fold(Table.of(x, y), INFO, plan_for(len(y)), job, device=CPU, callbacks=recording(resumed_reports),
                       resume_from=snapshots[4])
    assert [r.epoch for r in resumed_reports] == list(range(6, 13))
    for before, after in zip(whole[5:], resumed_reports):
        assert after.metrics == pytest.approx(before.metrics, rel=1e-6)
    assert resumed.test_metrics == pytest.approx(full.test_metrics, rel=1e-6)
    assert resumed.best_epoch == full.best_epoch and resumed.epochs_run == 12

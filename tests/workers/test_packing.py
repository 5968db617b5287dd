"""Packed training (all folds as one stacked model) against unpacked training."""
import io
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.workers.helpers import (CPU, INFO, OPTIMIZERS, blobs, float64, job_for,  # noqa: F401
                                   name_of, optimizer, plans, recording, run_both, stopping)
from workers.config import MLPConfig
from workers.fold import run_fold
from workers.models import build_model
from workers.packed.fold import run_packed_folds
from workers.table import Table
from workers.plans import DataInfo


def assert_same_training(unpacked, unpacked_reports, packed, packed_reports):
    """Same best and last epochs, test metrics and epoch reports, to float64 rounding."""
    for alone, together in zip(unpacked, packed):
        assert together.best_epoch == alone.best_epoch and together.epochs_run == alone.epochs_run
        assert together.test_metrics == pytest.approx(alone.test_metrics, rel=1e-9, abs=1e-12)
        assert together.best_metrics == pytest.approx(alone.best_metrics, rel=1e-9, abs=1e-12)
        assert len(packed_reports[alone.index]) == len(unpacked_reports[alone.index])
        for a, b in zip(unpacked_reports[alone.index], packed_reports[alone.index]):
            assert b.metrics == pytest.approx(a.metrics, rel=1e-9, abs=1e-12)
            assert (b.epoch, b.best_epoch) == (a.epoch, a.best_epoch)


@pytest.mark.parametrize("optimizer_config", OPTIMIZERS, ids=name_of)
@pytest.mark.parametrize("batch_size", [8, 17, "full"])
def test_packed_folds_train_exactly_like_unpacked_ones(float64, optimizer_config, batch_size):
    x, y = blobs()
    assert_same_training(*run_both(job_for(optimizer_config, batch_size), x, y, plans(len(y))))


def test_packed_regression_folds_train_exactly_like_unpacked_ones(float64):
    x, _ = blobs()
    target = x @ np.arange(1.0, 6.0) + np.random.default_rng(2).normal(size=len(x))
    job = job_for(optimizer("adam", lr=0.01, bias_correction=False), 17)
    outcomes = run_both(job, x, target, plans(len(x)), DataInfo("regression", (5,)))
    assert all(set(o.test_metrics) == {"loss", "mae", "r2"} for o in outcomes[0])
    assert_same_training(*outcomes)


@pytest.mark.parametrize("optimizer_config", OPTIMIZERS[2:], ids=name_of)
def test_packed_folds_agree_in_float32_too(optimizer_config):
    x, y = blobs()
    unpacked, _, packed, _ = run_both(job_for(optimizer_config), x, y, plans(len(y)))
    for alone, together in zip(unpacked, packed):  # ~1e-6 apart here; training amplifies rounding
        assert together.best_epoch == alone.best_epoch and together.epochs_run == alone.epochs_run
        assert together.test_metrics["loss"] == pytest.approx(alone.test_metrics["loss"], rel=1e-3)


def test_a_stopped_fold_is_frozen_while_the_others_train(float64):
    from workers.checkpointing import from_bytes
    x, y = blobs()
    # Patience 1: the folds stop early, at different epochs.
    job = replace(job_for(OPTIMIZERS[3]), max_epochs=30, early_stopping=stopping(patience=1))
    unpacked = [run_fold(Table.of(x, y), INFO, p, job, device=CPU) for p in plans(len(y))]
    snapshots = []  # the pack's state after every epoch
    packed = run_packed_folds(Table.of(x, y), INFO, plans(len(y)), job, device=CPU,
                              callbacks=recording({}, snapshots))
    assert len({p.epochs_run for p in packed}) > 1  # folds stopped at different epochs
    for alone, together in zip(unpacked, packed):
        assert together.epochs_run == alone.epochs_run
        assert together.test_metrics == pytest.approx(alone.test_metrics, rel=1e-9)
    # The best weights are restored before testing, so the metrics above would not notice
    # a stopped fold that kept moving: compare its state when it stopped with the last one.
    states = {state["epoch"]: state for state in map(from_bytes, snapshots)}
    last = states[max(states)]
    for k, fold in enumerate(packed):
        stopped = states[fold.epochs_run]
        for name, value in last["model"].items():
            assert torch.equal(value[k], stopped["model"][name][k]), name
        for moments, before in zip(last["optimizer"]["state"], stopped["optimizer"]["state"]):
            assert all(torch.equal(moments[m][k], before[m][k]) for m in ("V", "S"))
        assert last["optimizer"]["t"][k] == stopped["optimizer"]["t"][k]


PACKED_CONFIGS = OPTIMIZERS + [optimizer("adam", lr=0.01, bias_correction=False),
                                optimizer("rmsprop", lr=0.01, eps=0.1),  # ε large enough to
                                optimizer("adam", lr=0.01, eps=0.1)]     # show where it goes


@pytest.mark.parametrize("config", PACKED_CONFIGS, ids=lambda c: "-".join(map(str, vars(c).values())))
def test_the_packed_optimizer_steps_each_fold_as_its_own_optimizer_would(config):
    """Folds active at random steps: an active fold moves exactly as its own optimizer
    moves it; an inactive one keeps weights and state (its gradient, here garbage, is
    ignored, and Adam's step count t does not advance)."""
    from workers.optimizers import build_optimizer
    from workers.packed.optimizer import PackedOptimizer
    rng = np.random.default_rng(0)
    k, shapes = 3, [(4, 5), (5,)]
    stacked = [torch.tensor(rng.normal(size=(k, *shape)), requires_grad=True) for shape in shapes]
    alone = [[p[i].detach().clone().requires_grad_() for p in stacked] for i in range(k)]
    packed = PackedOptimizer(stacked, config, k)
    own = [build_optimizer(params, config) for params in alone]
    for _ in range(30):
        active = torch.tensor(rng.random(k) < 0.6)
        grads = [torch.tensor(rng.normal(size=p.shape)) for p in stacked]
        for p, g in zip(stacked, grads):
            p.grad = g.clone()
        packed.step(active)
        for i in np.flatnonzero(active.numpy()):
            for p, g in zip(alone[i], grads):
                p.grad = g[i].clone()
            own[i].step()
    for i in range(k):
        for p, q in zip(stacked, alone[i]):
            torch.testing.assert_close(p[i], q, rtol=1e-10, atol=1e-12)


def test_packed_checkpoints_load_into_the_plain_model():
    x, y = blobs()
    job = job_for(OPTIMIZERS[3])
    for outcome in run_packed_folds(Table.of(x, y), INFO, plans(len(y)), job, device=CPU):
        model = build_model(job.model, (5,), 3)
        model.load_state_dict(torch.load(io.BytesIO(outcome.checkpoint), weights_only=True))


def test_each_packed_fold_draws_its_own_dropout_masks():
    from workers.packed.model import PackedMLP
    torch.manual_seed(0)
    models = [build_model(MLPConfig((64,), batch_norm=False, dropout=0.5), (5,), 3) for _ in range(3)]
    packed = PackedMLP(models)
    for k in range(1, 3):  # same weights everywhere, so only the masks can differ
        packed.load_fold_state_dict(k, packed.fold_state_dict(0))
    packed.train()
    out = packed(torch.randn(1, 4, 5).expand(3, 4, 5).contiguous())
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[1], out[2])


def test_diverging_folds_fail_with_their_epoch_and_the_rest_finish():
    x, y = blobs()
    job = job_for(optimizer("sgd", lr=1e6), batch_norm=False)
    results = run_packed_folds(Table.of(x, y), INFO, plans(len(y)), job, device=CPU)
    failed = [r.error for r in results if r.status == "failed"]
    # With this seed folds 0 and 1 blow up at once; fold 2's ReLUs die and it carries on.
    assert failed == ["loss became nan at epoch 1 (train_loss)"] * 2
    assert results[2].status == "succeeded" and results[2].epochs_run > 1


def test_a_diverging_fold_stops_alone_and_the_others_go_on():
    from workers.callbacks import Callbacks
    from workers.early_stopping import EarlyStopping
    from workers.packed.model import PackedMLP
    from workers.packed.training import PackedFold, end_epoch
    from workers.tasks import Classification
    from workers.training import LossAverage
    task = Classification(2)
    folds = [PackedFold(i, i, task, EarlyStopping(**vars(stopping(patience=5))), LossAverage(0.9))
             for i in range(3)]
    model = PackedMLP([build_model(MLPConfig((4,), batch_norm=False, dropout=0.0), (2,), 2)
                       for _ in range(3)])
    sums = [1.0, 5.0, 0.0, 0.0, 5.0]  # loss sum, then a 2×2 confusion matrix
    values = [0.5, float("nan"), 0.5] + sums * 3
    reported = []
    end_epoch(model, folds, 1, values, [10, 10, 10], Callbacks(lambda i, r: reported.append(i)))
    assert reported == [0, 2]
    assert [f.active for f in folds] == [True, False, True]
    assert folds[1].error == "loss became nan at epoch 1 (train_loss)"


def test_packed_evaluation_is_the_same_in_small_chunks(monkeypatch):
    import workers.packed.training as packed
    from workers.packed.model import PackedMLP
    from workers.packed.training import Stack, packed_evaluation_sums
    from workers.tasks import Classification
    from workers.training import Split
    torch.manual_seed(0)
    model = PackedMLP([build_model(MLPConfig((8,), batch_norm=True, dropout=0.0), (5,), 3)
                       for _ in range(3)])
    splits = [Split(torch.randn(n, 5), torch.randint(0, 3, (n,))) for n in (10, 7, 9)]
    whole = packed_evaluation_sums(model, Classification(3), Stack.of(splits))
    monkeypatch.setattr(packed, "EVAL_CHUNK", 4)  # chunks that end inside each fold's rows
    chunked = packed_evaluation_sums(model, Classification(3), Stack.of(splits))
    assert torch.allclose(whole, chunked, atol=1e-5)


def test_a_packed_task_resumed_from_a_checkpoint_continues_exactly():
    x, y = blobs()
    # Dropout: the restored random state must give the same masks. Patience 3: some folds
    # stop before others.
    job = replace(job_for(OPTIMIZERS[3]), max_epochs=10, early_stopping=stopping(patience=3),
                  model=MLPConfig((16, 8), batch_norm=True, dropout=0.2))
    snapshots, whole = [], {}
    full = run_packed_folds(Table.of(x, y), INFO, plans(len(y)), job, device=CPU, callbacks=recording(whole, snapshots))
    resumed_reports = {}
    torch.manual_seed(999)
    resumed = run_packed_folds(Table.of(x, y), INFO, plans(len(y)), job, device=CPU,
                               callbacks=recording(resumed_reports), resume_from=snapshots[3])
    for fold, (alone, again) in enumerate(zip(full, resumed)):
        assert again.epochs_run == alone.epochs_run and again.best_epoch == alone.best_epoch
        assert again.test_metrics == pytest.approx(alone.test_metrics, rel=1e-6)
        after = [r for r in whole[fold] if r.epoch > 4]
        assert [r.epoch for r in resumed_reports.get(fold, [])] == [r.epoch for r in after]

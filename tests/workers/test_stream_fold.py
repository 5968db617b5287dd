"""A fold trained on a Parquet file read a row group at a time (workers.stream.fold),
against the same fold in memory (workers.fold): the same encoding, exactly the same
batch gradient descent, the same metrics within what the buffered shuffle changes, and
an exact resume after a checkpoint."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.workers.helpers import CPU, float64, optimizer, recording, stopping, training  # noqa: F401
from workers.config import MLPConfig
from workers.fold import run_fold
from workers.plans import DataInfo, plans_from_groups
from workers.table import Table

pa = pytest.importorskip("pyarrow")  # the GPU machine's worker tests run without pyarrow
pq = pytest.importorskip("pyarrow.parquet")
from workers.stream.fold import run_streamed_fold  # noqa: E402  (needs pyarrow)
from workers.stream.source import ParquetSource  # noqa: E402

INFO = DataInfo("classification", (6,), 3, (0, 1, 2))


def dataset(rows=3000, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows)
    x = rng.normal(size=(rows, 6)) + 3.0 * np.eye(3, 6)[y]
    x[:, 5] = 1e6 + rng.normal(size=rows)  # a far-off mean: the statistics must not cancel
    return x, y


def written(tmp_path, x, y, group_rows=400) -> ParquetSource:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({**{f"f{i}": x[:, i] for i in range(x.shape[1])}, "label": y}), path,
                   row_group_size=group_rows)
    return ParquetSource(str(path), [f"f{i}" for i in range(x.shape[1])], "label")


def fold_plan(rows, folds=5, seed=1):
    groups = np.array_split(np.random.default_rng(seed).permutation(rows), folds)
    return plans_from_groups(groups, [0])[0]


def both(tmp_path, config, x, y, info=INFO, buffer_rows=4096):
    plan = fold_plan(len(y))
    in_memory = run_fold(Table.of(x, y), info, plan, config, device=CPU)
    streamed = run_streamed_fold(written(tmp_path, x, y), info, plan, config, device=CPU, buffer_rows=buffer_rows)
    return in_memory, streamed


def test_a_streamed_fold_learns_what_the_fold_in_memory_learns(tmp_path):
    x, y = dataset()
    config = training(batch_size=64, max_epochs=8, early_stopping=stopping(patience=8))
    in_memory, streamed = both(tmp_path, config, x, y)
    assert in_memory.test_metrics["accuracy"] > 0.8 and streamed.test_metrics["accuracy"] > 0.8
    # Another order of the same rows (a buffered shuffle, other dropout masks): the same
    # model to within a few points of accuracy, not the same weights.
    assert abs(in_memory.test_metrics["accuracy"] - streamed.test_metrics["accuracy"]) < 0.04
    for name, fitted in in_memory.preprocessing["numbers"].items():
        streamed_fit = streamed.preprocessing["numbers"][name]
        for key in ("mean", "std", "impute"):
            assert streamed_fit[key] == pytest.approx(fitted[key], rel=1e-6), (name, key)


def test_full_batch_streams_the_exact_batch_gradient_step(tmp_path, float64):
    """Batch gradient descent: one step per epoch on the mean loss of every training row,
    accumulated row group by row group, gives the in-memory full batch's weights."""
    x, y = dataset(rows=1200)
    config = training(model=MLPConfig((12,), batch_norm=False, dropout=0.0), batch_size=None,
                      optimizer=optimizer("momentum", lr=0.5, beta=0.9), max_epochs=6,
                      early_stopping=stopping(patience=6))
    in_memory, streamed = both(tmp_path, config, x, y)
    assert streamed.best_epoch == in_memory.best_epoch
    for name, value in in_memory.test_metrics.items():
        assert streamed.test_metrics[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    memory_weights = torch.load(__import__("io").BytesIO(in_memory.checkpoint), weights_only=True)
    streamed_weights = torch.load(__import__("io").BytesIO(streamed.checkpoint), weights_only=True)
    for name, tensor in memory_weights.items():
        torch.testing.assert_close(streamed_weights[name], tensor, rtol=1e-9, atol=1e-12)


def test_regression_targets_are_standardized_with_the_training_rows_statistics(tmp_path):
    x, y = dataset(rows=900)
    target = 1e5 + x[:, 0] * 3 + np.random.default_rng(2).normal(size=len(y))
    info = DataInfo("regression", (6,), 0, ())
    config = training(batch_size=32, max_epochs=3)
    in_memory, streamed = both(tmp_path, config, x, target, info=info)
    for key in ("mean", "std"):
        assert streamed.preprocessing["target"][key] == pytest.approx(in_memory.preprocessing["target"][key],
                                                                      rel=1e-6)


def test_a_streamed_fold_resumed_from_a_checkpoint_ends_as_the_uninterrupted_one(tmp_path):
    x, y = dataset(rows=1500)
    source, plan = written(tmp_path, x, y), fold_plan(1500)
    config = training(batch_size=32, max_epochs=6, early_stopping=stopping(patience=6))
    snapshots: list[bytes] = []
    whole = run_streamed_fold(source, INFO, plan, config, device=CPU, callbacks=recording([], snapshots),
                              buffer_rows=2048)
    resumed = run_streamed_fold(source, INFO, plan, config, device=CPU, resume_from=snapshots[2],
                                buffer_rows=2048)
    assert resumed.best_epoch == whole.best_epoch and resumed.test_metrics == whole.test_metrics
    assert resumed.checkpoint == whole.checkpoint

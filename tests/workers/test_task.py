"""The fold task as a Ray worker runs it (workers.task), here without Ray: the board is
an in-memory stand-in for services.cluster.BoardClient, which tests/services/test_cluster.py
checks on a real Ray."""
from dataclasses import replace

import numpy as np
import pytest

from tests.workers.helpers import INFO, blobs, job_for, optimizer, plans, stopping
from workers.events import EpochEnded, FoldStarted
from workers.plans import TableSource
from workers.task import PACK, run_task

pa = pytest.importorskip("pyarrow")  # the task reads Parquet; the GPU machine has no pyarrow
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def source(tmp_path) -> TableSource:
    """The blobs as a Parquet file, as the dataset store holds a dataset."""
    x, y = blobs()
    path = tmp_path / "blobs.parquet"
    pq.write_table(pa.table({**{f"f{i}": x[:, i] for i in range(x.shape[1])}, "label": y}), path)
    return TableSource(path.as_uri(), "label", tuple(f"f{i}" for i in range(x.shape[1])), INFO)


class MemoryBoard:
    def __init__(self, checkpoints=None):
        self.events, self.checkpoints, self.flushed = [], dict(checkpoints or {}), 0
        self.saved = []  # every checkpoint, oldest first

    def report(self, event):
        self.events.append(event)

    def save_checkpoint(self, key, data):
        self.checkpoints[key] = data
        self.saved.append((key, data))

    def checkpoint(self, key):
        return self.checkpoints.get(key)

    def flush(self):
        self.flushed = len(self.events)


def a_job(packed: bool):
    return replace(job_for(optimizer("adam", lr=0.01)), pack_folds=packed, checkpoint_interval_s=0,
                   max_epochs=6, early_stopping=stopping(patience=100))


@pytest.mark.parametrize("packed", [False, True], ids=["one-fold", "packed"])
def test_a_task_reports_its_start_and_every_epoch_then_returns_one_result_per_fold(source, packed):
    x, y = blobs()
    board = MemoryBoard()
    task_plans = plans(len(y)) if packed else plans(len(y))[1:2]
    results = run_task(source, task_plans, a_job(packed), job_id="j", board=board, gpu_assigned=False)
    assert [r.index for r in results] == [p.index for p in task_plans]
    assert all(r.status == "succeeded" and r.epochs_run == 6 for r in results)
    started = [e for e in board.events if isinstance(e, FoldStarted)]
    assert [(e.fold, e.device, e.resumed_after_epoch) for e in started] == \
        [(p.index, "cpu", 0) for p in task_plans]
    for result in results:
        epochs = [e for e in board.events if isinstance(e, EpochEnded) and e.fold == result.index]
        assert [e.epoch for e in epochs] == list(range(1, 7)) and {e.job_id for e in epochs} == {"j"}
        assert epochs[-1].best_epoch == result.best_epoch
    assert board.flushed == len(board.events)  # every event on the board before the result
    assert set(board.checkpoints) == {PACK if packed else 1}


@pytest.mark.parametrize("packed", [False, True], ids=["one-fold", "packed"])
def test_a_retried_task_resumes_from_the_boards_checkpoint(source, packed):
    x, y = blobs()
    task_plans = plans(len(y)) if packed else plans(len(y))[:1]
    first = MemoryBoard()
    whole = run_task(source, task_plans, a_job(packed), job_id="j", board=first, gpu_assigned=False)
    key = PACK if packed else 0
    assert [k for k, _ in first.saved] == [key] * 6  # one after every epoch (interval 0)
    # As Ray's retry finds it after a worker died in epoch 4: the checkpoint of epoch 3.
    saved = MemoryBoard({key: first.saved[2][1]})
    retried = run_task(source, task_plans, a_job(packed), job_id="j", board=saved, gpu_assigned=False)
    assert {e.resumed_after_epoch for e in saved.events if isinstance(e, FoldStarted)} == {3}
    assert sorted({e.epoch for e in saved.events if isinstance(e, EpochEnded)}) == [4, 5, 6]
    for before, after in zip(whole, retried):
        assert after.test_metrics == pytest.approx(before.test_metrics, rel=1e-6)
        assert np.isclose(after.best_metrics["val_loss"], before.best_metrics["val_loss"], rtol=1e-6)

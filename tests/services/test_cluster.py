"""services.cluster on the test session's real local Ray: the progress board, and fold
tasks run as Ray runs them. (Whole jobs go through it in tests/test_end_to_end.py.)"""
from __future__ import annotations

import time

import pytest
import ray

from services.cluster import BoardClient, Cluster
from services.job_data import resolve
from services.job_inputs import source_of, split_plans
from services.spec import JobSpec
from tests.helpers import small_job
from workers.events import EpochEnded, FoldStarted


def epoch(job: str, number: int) -> EpochEnded:
    return EpochEnded(job, 0, number, {"val_loss": 1.0 / number}, best_epoch=number, time_ms=0)


def test_progress_stays_on_the_board_until_the_dispatcher_acknowledges_it(ray_session, tmp_path):
    cluster = Cluster(checkpoints=str(tmp_path))
    job = "ack-test-job"
    for number in (1, 2):
        cluster.board.report.remote(epoch(job, number))
    first = cluster.pending_progress([job])[job]
    assert [e.epoch for e in first] == [1, 2]
    assert cluster.pending_progress([job])[job] == first  # read again: still there
    cluster.board.report.remote(epoch(job, 3))
    cluster.acknowledge_progress({job: len(first)})
    assert [e.epoch for e in cluster.pending_progress([job])[job]] == [3]  # arrived meanwhile
    cluster.forget(job)


def test_a_board_client_keeps_a_jobs_checkpoints_apart_and_flushes_in_order(ray_session, tmp_path):
    cluster = Cluster(checkpoints=str(tmp_path))
    mine, other = (BoardClient(cluster.board, job, cluster.checkpoints) for job in ("job-a", "job-b"))
    mine.save_checkpoint(0, b"a0")
    other.save_checkpoint(0, b"b0")
    for number in range(1, 51):
        mine.report(epoch("job-a", number))
    mine.flush()  # returns once every report is on the board
    assert [e.epoch for e in cluster.pending_progress(["job-a"])["job-a"]] == list(range(1, 51))
    assert mine.checkpoint(0) == b"a0" and other.checkpoint(0) == b"b0" and mine.checkpoint(1) is None
    cluster.forget("job-a")
    assert mine.checkpoint(0) is None and other.checkpoint(0) == b"b0"
    cluster.forget("job-b")
    assert cluster.checkpoints.jobs() == [] and not list(tmp_path.iterdir())  # nothing left behind


@pytest.mark.parametrize("packed", [False, True], ids=["task-per-fold", "packed"])
def test_fold_tasks_read_their_data_and_return_one_result_per_fold(ray_session, sessions, store, packed, tmp_path):
    spec = JobSpec.model_validate(small_job(max_epochs=4, pack_folds=packed))
    with sessions() as session:
        data = resolve(spec, session=session, owner="local")
    source = source_of(data, store)
    cluster = Cluster(checkpoints=str(tmp_path / "checkpoints"))
    job = f"results-{packed}"
    tasks = cluster.submit(source, split_plans(data, source, spec.cv, [0, 1, 2]), spec.training_config(), job)
    assert len(tasks) == (1 if packed else 3)
    # What a task returns is small, its best checkpoints left in the store: Ray keeps it
    # with the dispatcher, and never runs a finished task again to remake it.
    assert all(r.checkpoint is None for ref in tasks for r in ray.get(ref))
    results = [r for ref, indices in tasks.items() for r in cluster.results(ref, job, indices)]
    assert sorted(r.index for r in results) == [0, 1, 2]
    assert all(r.status == "succeeded" and r.checkpoint and r.best_metrics for r in results)
    events = cluster.pending_progress([job])[job]
    assert sorted(e.fold for e in events if isinstance(e, FoldStarted)) == [0, 1, 2]
    for result in results:
        epochs = [e for e in events if isinstance(e, EpochEnded) and e.fold == result.index]
        assert [e.epoch for e in epochs] == list(range(1, result.epochs_run + 1))
        assert epochs[-1].best_epoch == result.best_epoch
        assert epochs[result.best_epoch - 1].metrics == result.best_metrics
    cluster.forget(job)
    assert cluster.checkpoints.jobs() == []


def test_a_cancelled_task_and_a_crashed_one_become_fold_results(ray_session, tmp_path):
    cluster = Cluster(checkpoints=str(tmp_path))

    @ray.remote
    def sleeper():
        import time
        time.sleep(60)

    @ray.remote
    def crasher():
        raise KeyError("no such column")

    sleeping, crashed = sleeper.remote(), crasher.remote()
    cluster.cancel(sleeping)
    assert [(r.index, r.status) for r in cluster.results(sleeping, "job", [0, 1])] == [(0, "cancelled"), (1, "cancelled")]
    [failed] = cluster.results(crashed, "job", [2])
    assert failed.status == "failed" and failed.error == "KeyError: 'no such column'"


def kill_and_wait(actor) -> None:
    """ray.kill only asks: calls made before it lands are still answered."""
    ray.kill(actor)
    with pytest.raises(ray.exceptions.RayActorError):
        for _ in range(300):
            ray.get(actor.forget.remote("nobody"))
            time.sleep(0.1)


def test_a_dead_board_is_made_anew_and_its_clients_find_the_new_one(ray_session, tmp_path):
    cluster = Cluster(checkpoints=str(tmp_path))
    client = BoardClient(cluster.board, "job-d", cluster.checkpoints)
    client.report(epoch("job-d", 1))
    client.flush()
    kill_and_wait(cluster.board)  # its process gone, as when its node is lost
    assert cluster.pending_progress(["job-d"]) == {}  # a new board: the dead one's events went with it
    client.report(epoch("job-d", 2))  # sent to the dead one: lost
    # A report never waits (see BoardClient.report): the failure of the one above shows
    # by the next epoch, which in a real fold is at least milliseconds later.
    deadline = time.monotonic() + 30
    while not client.last.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    client.report(epoch("job-d", 3))  # it notices, and reports to the new one
    client.flush()
    assert [e.epoch for e in cluster.pending_progress(["job-d"])["job-d"]] == [3]
    cluster.forget("job-d")


def test_the_board_hands_out_a_bounded_share_of_each_jobs_events(ray_session, tmp_path):
    cluster = Cluster(checkpoints=str(tmp_path))
    for number in range(1, 101):
        cluster.board.report.remote(epoch("busy", number))
    cluster.board.report.remote(epoch("calm", 1))
    pending = cluster.pending_progress(["busy", "calm"], limit=20)
    assert [e.epoch for e in pending["busy"]] == list(range(1, 11)) and len(pending["calm"]) == 1
    cluster.forget("busy")
    cluster.forget("calm")

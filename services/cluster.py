"""Ray, and the only module that talks to it. Three parts, marked below:

- What runs inside a Ray worker, on a GPU (or CPU) node: `fold_task`, which only adapts
  workers.task.run_task (the fold task itself: data, training, reports) to Ray, and
  BoardClient, the task's link to the progress board.
- The ProgressBoard, a detached actor: the progress events of every job, small ones only.
- What runs in the dispatcher: Cluster, which starts fold tasks with the job's CPU and
  GPU share, reads progress and collects each fold's FoldResult.

Workers hold no database credentials: they report progress to the board, which the
dispatcher reads (and acknowledges once stored), and return their results through Ray.
Checkpoints go to the checkpoint store (workers.checkpoint_store), which every node
reaches: epoch checkpoints for a retry to resume from, on any node, and each fold's best
checkpoint, so that what a task returns is small. Ray keeps a small return value with
the caller (the dispatcher); a large one stays in the object store of the node that made
it, and were that node lost before the dispatcher read it, Ray would run the finished
task again to make it anew.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

import ray

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from services.capacity import NodeShape
from workers.checkpoint_store import CheckpointStore
from workers.config import TrainingConfig
from workers.events import ProgressEvent
from workers.plans import FoldPlan, TableSource
from workers.results import Ending, FoldResult
from workers.task import run_task

log = logging.getLogger(__name__)

# The board is detached and found by name, so it outlives this process, and on a long-lived
# Ray cluster it outlives an upgrade of crossfold too. Its name carries the version of the
# events' shape (workers/events.py): a new version starts a board of its own instead of
# handing typed events to an old board that expects dicts.
BOARD_NAME, NAMESPACE = "crossfold-board-3", "crossfold"  # 3: pending(limit), no checkpoints


# -- Runs inside a Ray worker (a GPU or CPU node) ------------------------------------
@ray.remote
def fold_task(source: TableSource, plans: list[FoldPlan], config: TrainingConfig, job_id: str,
              board, checkpoints_uri: str) -> list[FoldResult]:
    """One fold, or all of a job's folds when packed: workers.task does the work, reading
    its data from the dataset store itself. Each best checkpoint is left in the store and
    the result returned without it (see the module's docstring)."""
    checkpoints = CheckpointStore(checkpoints_uri)
    results = run_task(source, plans, config, job_id=job_id, board=BoardClient(board, job_id, checkpoints),
                       gpu_assigned=bool(ray.get_gpu_ids()), node=ray.get_runtime_context().get_node_id())
    return [without_checkpoint(result, checkpoints, job_id) for result in results]


def without_checkpoint(result: FoldResult, checkpoints: CheckpointStore, job_id: str) -> FoldResult:
    if result.checkpoint is None:
        return result
    checkpoints.save(job_id, best_key(result.index), result.checkpoint)
    return replace(result, checkpoint=None)


def best_key(fold: int) -> str:
    return f"best-{fold}"


class BoardClient:
    """workers.task.Board for one job's task: events to the board actor, checkpoints to
    the checkpoint store."""

    def __init__(self, board, job_id: str, checkpoints: CheckpointStore):
        self.board, self.job_id, self.checkpoints, self.last = board, job_id, checkpoints, None

    def report(self, event: ProgressEvent) -> None:
        if self.board_died():
            self.board = board_by_name()
        # Watched as a future, never with ray.wait or ray.get on the reference: a task
        # that waits on one tells Ray it is blocked, and Ray lends its CPU to a queued
        # fold task on a new worker process (seconds of imports), then ends an idle warm
        # one: every wave of a job's folds paid that (bench/job_latency.py).
        self.last = self.board.report.remote(event).future()

    def board_died(self) -> bool:
        """Whether the last report found the board dead (the dispatcher then makes a new
        one): one cheap look, not a wait."""
        if self.last is None or not self.last.done():
            return False
        return isinstance(self.last.exception(), ray.exceptions.RayActorError)

    def save_checkpoint(self, key: int, data: bytes) -> None:
        self.checkpoints.save(self.job_id, key, data)

    def checkpoint(self, key: int) -> bytes | None:
        return self.checkpoints.load(self.job_id, key)

    def flush(self) -> None:
        # Calls from one caller to an actor run in order: once the last report is in,
        # every earlier one is too. A board that died meanwhile took them with it.
        if self.last is not None:
            try:
                self.last.result()
            except ray.exceptions.RayActorError:
                self.board = board_by_name()


def board_by_name(wait_s: float = 60.0):
    """The board as the dispatcher made it anew (it does so at its next tick)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return ray.get_actor(BOARD_NAME, namespace=NAMESPACE)
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# -- The progress board: a detached actor of its own ---------------------------------
@ray.remote(num_cpus=0)
class ProgressBoard:
    """The progress events of every job not yet stored by its dispatcher.

    Detached and named: it outlives the dispatcher that created it, so a dispatcher
    started after a crash finds the events of the jobs it adopts. Made on the node of the
    dispatcher that first needs it (the head node, in the compose file), not on a worker
    node that may be lost.
    """

    def __init__(self) -> None:
        self.events: dict[str, list[ProgressEvent]] = {}

    def report(self, event: ProgressEvent) -> None:
        self.events.setdefault(event.job_id, []).append(event)

    def pending(self, job_ids: list[str], limit: int | None = None) -> dict[str, list[ProgressEvent]]:
        """The events of these jobs not yet acknowledged, oldest first (other
        dispatchers' jobs stay for them); at most `limit` in all, shared out evenly, so
        that one busy job does not make a tick of its thousands of epochs while the
        others wait."""
        waiting = {job_id: self.events[job_id] for job_id in job_ids if self.events.get(job_id)}
        if limit is None:
            return {job_id: list(events) for job_id, events in waiting.items()}
        share = max(1, limit // max(1, len(waiting)))
        return {job_id: events[:share] for job_id, events in waiting.items()}

    def acknowledge(self, counts: dict[str, int]) -> None:
        """Drop the first `count` events of each job: its dispatcher has stored them.
        Until then they stay, for a dispatcher that fails before storing them (or its
        successor) to read again."""
        for job_id, count in counts.items():
            del self.events.get(job_id, [])[:count]

    def forget(self, job_id: str) -> None:
        self.events.pop(job_id, None)


# -- Runs in the dispatcher -------------------------------------------------------
class Cluster:
    def __init__(self, *, checkpoints: str, address: str = "", max_retries: int = 2):
        """`checkpoints`: the checkpoint store's URI (or folder), which every node reaches."""
        if not ray.is_initialized():
            ray.init(address=address or None, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        self.max_retries = max_retries
        self.checkpoints = CheckpointStore(checkpoints)
        # On this process's node, strictly: "soft" placed it on a worker node once, which
        # took every job's progress with it when that node was lost.
        self.board = self.find_or_make_board()

    @staticmethod
    def find_or_make_board():
        # On this process's node, strictly: "soft" placed it on a worker node once, which
        # took every job's progress with it when that node was lost.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        return ProgressBoard.options(name=BOARD_NAME, namespace=NAMESPACE, lifetime="detached",
                                     get_if_exists=True, scheduling_strategy=here).remote()

    def on_board(self, call):
        """`call(board)`'s result; should the board have died (its node lost, its process
        killed), it is made anew and asked again. Its events not yet stored die with it:
        their epochs stay unlogged (a fold's later epochs still come)."""
        try:
            return ray.get(call(self.board))
        except ray.exceptions.RayActorError as error:
            log.warning("the progress board died (%s); starting a new one", type(error).__name__)
            self.board = self.find_or_make_board()
            return ray.get(call(self.board))

    def submit(self, source: TableSource, plans: list[FoldPlan], config: TrainingConfig, job_id: str
               ) -> dict[ray.ObjectRef, list[int]]:
        """Start a job's folds: one task per fold, or one task for all when packed.
        Returns each task and the fold indices it runs."""
        # max_retries re-runs a task whose worker process died; an exception raised by
        # the training itself is not retried.
        options = {"num_cpus": config.resources.cpus_per_fold,
                   "num_gpus": config.resources.gpus_per_fold, "max_retries": self.max_retries}
        groups = [plans] if config.pack_folds else [[plan] for plan in plans]
        return {fold_task.options(**options).remote(source, group, config, job_id, self.board,
                                                    self.checkpoints.uri):
                [plan.index for plan in group] for group in groups}

    def nodes(self) -> list[NodeShape]:
        """The alive nodes and their CPUs and GPUs (the head's 0 CPUs included)."""
        return [NodeShape(node["NodeID"], node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0))
                for node in ray.nodes() if node["Alive"]]

    def pending_progress(self, job_ids: list[str], limit: int | None = None) -> dict[str, list[ProgressEvent]]:
        return self.on_board(lambda board: board.pending.remote(job_ids, limit)) if job_ids else {}

    def acknowledge_progress(self, counts: dict[str, int]) -> None:
        self.on_board(lambda board: board.acknowledge.remote(counts))

    def forget(self, job_id: str) -> None:
        """A finished job's events and resume checkpoints (its best ones are in MLflow)."""
        self.board.forget.remote(job_id)
        self.checkpoints.delete_job(job_id)

    def ready(self, refs: list[ray.ObjectRef]) -> list[ray.ObjectRef]:
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        return done

    def results(self, ref: ray.ObjectRef, job_id: str, indices: list[int]) -> list[FoldResult]:
        """What became of each fold a finished task ran, best checkpoints included."""
        try:
            return [self.with_checkpoint(result, job_id) for result in ray.get(ref)]
        except ray.exceptions.TaskCancelledError:
            return [FoldResult.cancelled(i) for i in indices]
        except ray.exceptions.RayTaskError as error:
            cause = error.cause if getattr(error, "cause", None) is not None else error
            return [FoldResult.failed(i, f"{type(cause).__name__}: {cause}") for i in indices]
        except ray.exceptions.RayError as error:
            return [FoldResult.failed(i, f"{type(error).__name__}: {error}") for i in indices]

    def with_checkpoint(self, result: FoldResult, job_id: str) -> FoldResult:
        if result.status is not Ending.SUCCEEDED:
            return result
        return replace(result, checkpoint=self.checkpoints.load(job_id, best_key(result.index)))

    def cancel(self, ref: ray.ObjectRef) -> None:
        ray.cancel(ref, force=True)

    def wait_any(self, refs: list[ray.ObjectRef], timeout_s: float) -> bool:
        """Whether one of these tasks ended within `timeout_s`; it returns as soon as one does."""
        done, _ = ray.wait(refs, num_returns=1, timeout=timeout_s, fetch_local=False)
        return bool(done)

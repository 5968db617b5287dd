"""Ray, and the only module that talks to it. Three parts, marked below:

- What runs inside a Ray worker, on a GPU (or CPU) node: `fold_task`, which only adapts
  workers.task.run_task (the fold task itself: data, training, reports) to Ray, and
  BoardClient, the task's link to the progress board.
- The ProgressBoard, a detached actor: progress events and epoch checkpoints per job.
- What runs in the dispatcher: Cluster, which starts fold tasks with the job's CPU and
  GPU share, reads progress and collects each fold's FoldResult.

Workers hold no database credentials: they report progress to the board, which the
dispatcher reads (and acknowledges once stored), and return their results through Ray.
"""
from __future__ import annotations

import logging

import ray

from workers.config import TrainingConfig
from workers.events import ProgressEvent
from workers.plans import FoldPlan, TableSource
from workers.results import FoldResult
from workers.task import run_task

log = logging.getLogger(__name__)

# The board is detached and found by name, so it outlives this process, and on a long-lived
# Ray cluster it outlives an upgrade of crossfold too. Its name carries the version of the
# events' shape (workers/events.py): a new version starts a board of its own instead of
# handing typed events to an old board that expects dicts.
BOARD_NAME, NAMESPACE = "crossfold-board-2", "crossfold"


# -- Runs inside a Ray worker (a GPU or CPU node) ------------------------------------
@ray.remote
def fold_task(source: TableSource, plans: list[FoldPlan], config: TrainingConfig, job_id: str,
              board) -> list[FoldResult]:
    """One fold, or all of a job's folds when packed: workers.task does the work, reading
    its data from the dataset store itself."""
    return run_task(source, plans, config, job_id=job_id, board=BoardClient(board, job_id),
                    gpu_assigned=bool(ray.get_gpu_ids()))


class BoardClient:
    """workers.task.Board over the board actor, for one job's task."""

    def __init__(self, board, job_id: str):
        self.board, self.job_id, self.last = board, job_id, None

    def report(self, event: ProgressEvent) -> None:
        self.last = self.board.report.remote(event)

    def save_checkpoint(self, key: int, data: bytes) -> None:
        self.board.save_checkpoint.remote(self.job_id, key, data)

    def checkpoint(self, key: int) -> bytes | None:
        return ray.get(self.board.checkpoint.remote(self.job_id, key))

    def flush(self) -> None:
        # Calls from one caller to an actor run in order: once the last report is in,
        # every earlier one is too.
        if self.last is not None:
            ray.get(self.last)


# -- The progress board: a detached actor of its own ---------------------------------
@ray.remote(num_cpus=0)
class ProgressBoard:
    """Progress events and the latest epoch checkpoint of every fold, per job.

    Detached and named: it outlives the dispatcher that created it, so a dispatcher
    started after a crash finds the events and checkpoints of the jobs it adopts.
    """

    def __init__(self) -> None:
        self.events: dict[str, list[ProgressEvent]] = {}
        self.checkpoints: dict[tuple[str, int], bytes] = {}

    def report(self, event: ProgressEvent) -> None:
        self.events.setdefault(event.job_id, []).append(event)

    def save_checkpoint(self, job_id: str, fold: int, data: bytes) -> None:
        self.checkpoints[(job_id, fold)] = data

    def checkpoint(self, job_id: str, fold: int) -> bytes | None:
        return self.checkpoints.get((job_id, fold))

    def pending(self, job_ids: list[str]) -> dict[str, list[ProgressEvent]]:
        """The events of these jobs not yet acknowledged, oldest first (other
        dispatchers' jobs stay for them)."""
        return {job_id: list(self.events[job_id]) for job_id in job_ids if self.events.get(job_id)}

    def acknowledge(self, counts: dict[str, int]) -> None:
        """Drop the first `count` events of each job: its dispatcher has stored them.
        Until then they stay, for a dispatcher that fails before storing them (or its
        successor) to read again."""
        for job_id, count in counts.items():
            del self.events.get(job_id, [])[:count]

    def forget(self, job_id: str) -> None:
        """A finished job's checkpoints are no longer needed."""
        self.events.pop(job_id, None)
        for key in [k for k in self.checkpoints if k[0] == job_id]:
            del self.checkpoints[key]


# -- Runs in the dispatcher -------------------------------------------------------
class Cluster:
    def __init__(self, *, address: str = "", max_retries: int = 2):
        if not ray.is_initialized():
            ray.init(address=address or None, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        self.max_retries = max_retries
        self.board = ProgressBoard.options(name=BOARD_NAME, namespace=NAMESPACE, lifetime="detached",
                                           get_if_exists=True).remote()

    def submit(self, source: TableSource, plans: list[FoldPlan], config: TrainingConfig, job_id: str
               ) -> dict[ray.ObjectRef, list[int]]:
        """Start a job's folds: one task per fold, or one task for all when packed.
        Returns each task and the fold indices it runs."""
        # max_retries re-runs a task whose worker process died; an exception raised by
        # the training itself is not retried.
        options = {"num_cpus": config.resources.cpus_per_fold,
                   "num_gpus": config.resources.gpus_per_fold, "max_retries": self.max_retries}
        groups = [plans] if config.pack_folds else [[plan] for plan in plans]
        return {fold_task.options(**options).remote(source, group, config, job_id, self.board):
                [plan.index for plan in group] for group in groups}

    def pending_progress(self, job_ids: list[str]) -> dict[str, list[ProgressEvent]]:
        return ray.get(self.board.pending.remote(job_ids)) if job_ids else {}

    def acknowledge_progress(self, counts: dict[str, int]) -> None:
        ray.get(self.board.acknowledge.remote(counts))

    def forget(self, job_id: str) -> None:
        self.board.forget.remote(job_id)

    def ready(self, refs: list[ray.ObjectRef]) -> list[ray.ObjectRef]:
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        return done

    def results(self, ref: ray.ObjectRef, indices: list[int]) -> list[FoldResult]:
        """What became of each fold a finished task ran."""
        try:
            return ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return [FoldResult.cancelled(i) for i in indices]
        except ray.exceptions.RayTaskError as error:
            cause = error.cause if getattr(error, "cause", None) is not None else error
            return [FoldResult.failed(i, f"{type(cause).__name__}: {cause}") for i in indices]
        except ray.exceptions.RayError as error:
            return [FoldResult.failed(i, f"{type(error).__name__}: {error}") for i in indices]

    def cancel(self, ref: ray.ObjectRef) -> None:
        ray.cancel(ref, force=True)

"""Ray, and the only module that talks to its scheduling API.

Each fold runs as one Ray task with the job's CPU and GPU share. Workers hold no
database credentials: they report progress to a ProgressBoard actor, which the
dispatcher reads (and acknowledges once stored), and return their outcome as the task's result.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

import numpy as np
import ray
import torch

from workers.checkpointing import checkpoint_epoch
from workers.fold import DataInfo, FoldOutcome, FoldPlan, run_fold, run_packed_folds
from workers.training import EpochReport

log = logging.getLogger(__name__)


BOARD_NAME, NAMESPACE = "crossfold-board", "crossfold"
PACK = -1  # the checkpoint key of a packed task (it holds all of a job's folds)


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Progress events and the latest epoch checkpoint of every fold, per job.

    Detached and named: it outlives the dispatcher that created it, so a dispatcher
    started after a crash finds the events and checkpoints of the jobs it adopts.
    """

    def __init__(self) -> None:
        self.events: dict[str, list[dict]] = {}
        self.checkpoints: dict[tuple[str, int], bytes] = {}

    def report(self, event: dict) -> None:
        self.events.setdefault(event["job_id"], []).append(event)

    def save_checkpoint(self, job_id: str, fold: int, data: bytes) -> None:
        self.checkpoints[(job_id, fold)] = data

    def checkpoint(self, job_id: str, fold: int) -> bytes | None:
        return self.checkpoints.get((job_id, fold))

    def pending(self, job_ids: list[str]) -> dict[str, list[dict]]:
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


class Reporter:
    """Sends a fold task's events and checkpoints to the board."""

    def __init__(self, board, job_id: str):
        self.board, self.job_id, self.last = board, job_id, None

    def send(self, fold: int, kind: str, **fields) -> None:
        self.last = self.board.report.remote({"job_id": self.job_id, "fold": fold, "kind": kind,
                                              **fields})

    def epoch(self, fold: int, report: EpochReport) -> None:
        # Stamped here, once: an event stored twice (a dispatcher failed between storing
        # and acknowledging it) is then the same MLflow metric, which MLflow keeps once.
        self.send(fold, "epoch", time_ms=int(time.time() * 1000), **vars(report))

    def checkpoint(self, fold: int, data: bytes) -> None:
        self.board.save_checkpoint.remote(self.job_id, fold, data)

    def resume_point(self, fold: int) -> bytes | None:
        return ray.get(self.board.checkpoint.remote(self.job_id, fold))

    def flush(self) -> None:
        # Calls from one caller to an actor run in order: once the last report is in,
        # every earlier one is too, so the dispatcher sees all epochs before the result.
        ray.get(self.last)


def task_device(job: dict) -> torch.device:
    torch.set_num_threads(max(1, int(job["resources"]["cpus_per_fold"])))  # the task's CPU share
    use_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    return torch.device("cuda" if use_gpu else "cpu")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@ray.remote
def fold_task(data: tuple[np.ndarray, np.ndarray, DataInfo], plan: FoldPlan, job: dict,
              job_id: str, board) -> FoldOutcome:
    device, reporter = task_device(job), Reporter(board, job_id)
    resume_from = reporter.resume_point(plan.index)  # set when this is a retry
    reporter.send(plan.index, "started", device=str(device), worker=worker_name(),
                  resumed_after_epoch=checkpoint_epoch(resume_from) if resume_from else 0)
    x, y, info = data
    outcome = run_fold(x, y, info, plan, job, device=device,
                       report=lambda epoch: reporter.epoch(plan.index, epoch),
                       checkpoint=lambda snapshot: reporter.checkpoint(plan.index, snapshot),
                       resume_from=resume_from)
    reporter.flush()
    return outcome


@ray.remote
def packed_task(data: tuple[np.ndarray, np.ndarray, DataInfo], plans: list[FoldPlan], job: dict,
                job_id: str, board) -> list[FoldOutcome | str]:
    """All folds of a job in one task, as one stacked model (pack_folds)."""
    device, reporter = task_device(job), Reporter(board, job_id)
    resume_from = reporter.resume_point(PACK)  # set when this is a retry
    for plan in plans:
        reporter.send(plan.index, "started", device=str(device), worker=worker_name(),
                      resumed_after_epoch=checkpoint_epoch(resume_from) if resume_from else 0)
    x, y, info = data
    outcomes = run_packed_folds(x, y, info, plans, job, device=device, report=reporter.epoch,
                                checkpoint=lambda snapshot: reporter.checkpoint(PACK, snapshot),
                                resume_from=resume_from)
    reporter.flush()
    return outcomes


@dataclass
class FoldResult:
    """What became of a fold task: an outcome, or an error, or a cancellation."""
    outcome: FoldOutcome | None = None
    error: str | None = None
    cancelled: bool = False


class Cluster:
    def __init__(self, *, address: str = "", max_retries: int = 2):
        if not ray.is_initialized():
            ray.init(address=address or None, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        self.max_retries = max_retries
        self.board = ProgressBoard.options(name=BOARD_NAME, namespace=NAMESPACE, lifetime="detached",
                                           get_if_exists=True).remote()

    def put(self, value) -> ray.ObjectRef:
        """Store a job's data once in the object store; every fold task reads that copy."""
        return ray.put(value)

    def submit(self, data: ray.ObjectRef, plans: list[FoldPlan], job: dict, job_id: str
               ) -> dict[ray.ObjectRef, list[int]]:
        """Start a job's folds: one task per fold, or one task for all when packed.
        Returns each task and the fold indices it runs."""
        resources = job["resources"]
        # max_retries re-runs a task whose worker process died; an exception raised by
        # the training itself is not retried.
        options = {"num_cpus": resources["cpus_per_fold"], "num_gpus": resources["gpus_per_fold"],
                   "max_retries": self.max_retries}
        if job.get("pack_folds"):
            ref = packed_task.options(**options).remote(data, plans, job, job_id, self.board)
            return {ref: [plan.index for plan in plans]}
        return {fold_task.options(**options).remote(data, plan, job, job_id, self.board): [plan.index]
                for plan in plans}

    def pending_progress(self, job_ids: list[str]) -> dict[str, list[dict]]:
        return ray.get(self.board.pending.remote(job_ids)) if job_ids else {}

    def acknowledge_progress(self, counts: dict[str, int]) -> None:
        ray.get(self.board.acknowledge.remote(counts))

    def forget(self, job_id: str) -> None:
        self.board.forget.remote(job_id)

    def ready(self, refs: list[ray.ObjectRef]) -> list[ray.ObjectRef]:
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        return done

    def results(self, ref: ray.ObjectRef, indices: list[int]) -> dict[int, FoldResult]:
        """What became of each fold a finished task ran."""
        try:
            value = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return {i: FoldResult(cancelled=True) for i in indices}
        except ray.exceptions.RayTaskError as error:
            cause = error.cause if getattr(error, "cause", None) is not None else error
            return {i: FoldResult(error=f"{type(cause).__name__}: {cause}") for i in indices}
        except ray.exceptions.RayError as error:
            return {i: FoldResult(error=f"{type(error).__name__}: {error}") for i in indices}
        outcomes = value if isinstance(value, list) else [value]
        return {i: FoldResult(error=o) if isinstance(o, str) else FoldResult(outcome=o)
                for i, o in zip(indices, outcomes)}

    def cancel(self, ref: ray.ObjectRef) -> None:
        ray.cancel(ref, force=True)

"""Ray, and the only module that talks to its scheduling API.

Each fold runs as one Ray task with the job's CPU and GPU share. Workers hold no
database credentials: they report progress to a ProgressBoard actor, which the
dispatcher drains, and return their outcome as the task's result.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import ray
import torch

from workers.fold import DataInfo, FoldOutcome, FoldPlan, run_fold, run_packed_folds
from workers.training import EpochReport

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class ProgressBoard:
    """A mailbox for progress events from fold tasks, emptied by the dispatcher."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def report(self, event: dict) -> None:
        self.events.append(event)

    def drain(self) -> list[dict]:
        events, self.events = self.events, []
        return events


class Reporter:
    """Sends a fold task's events to the board, remembering the last one sent."""

    def __init__(self, board, job_id: str):
        self.board, self.job_id, self.last = board, job_id, None

    def send(self, fold: int, kind: str, **fields) -> None:
        self.last = self.board.report.remote({"job_id": self.job_id, "fold": fold, "kind": kind,
                                              **fields})

    def epoch(self, fold: int, report: EpochReport) -> None:
        self.send(fold, "epoch", **vars(report))

    def flush(self) -> None:
        # Calls from one caller to an actor run in order: once the last report is in,
        # every earlier one is too, so the dispatcher sees all epochs before the result.
        ray.get(self.last)


def task_device(job: dict) -> torch.device:
    torch.set_num_threads(max(1, int(job["resources"]["cpus_per_fold"])))  # the task's CPU share
    use_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    return torch.device("cuda" if use_gpu else "cpu")


@ray.remote
def fold_task(data: tuple[np.ndarray, np.ndarray, DataInfo], plan: FoldPlan, job: dict,
              job_id: str, board) -> FoldOutcome:
    device, reporter = task_device(job), Reporter(board, job_id)
    reporter.send(plan.index, "started", device=str(device))
    x, y, info = data
    outcome = run_fold(x, y, info, plan, job, device=device,
                       report=lambda epoch: reporter.epoch(plan.index, epoch))
    reporter.flush()
    return outcome


@ray.remote
def packed_task(data: tuple[np.ndarray, np.ndarray, DataInfo], plans: list[FoldPlan], job: dict,
                job_id: str, board) -> list[FoldOutcome | str]:
    """All folds of a job in one task, as one stacked model (pack_folds)."""
    device, reporter = task_device(job), Reporter(board, job_id)
    for plan in plans:
        reporter.send(plan.index, "started", device=str(device))
    x, y, info = data
    outcomes = run_packed_folds(x, y, info, plans, job, device=device, report=reporter.epoch)
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
        self.board = ProgressBoard.remote()

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

    def drain_progress(self) -> list[dict]:
        return ray.get(self.board.drain.remote())

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

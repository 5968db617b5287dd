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

from workers.fold import DataInfo, FoldOutcome, FoldPlan, run_fold
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


@ray.remote
def fold_task(data: tuple[np.ndarray, np.ndarray, DataInfo], plan: FoldPlan, job: dict,
              tag: dict, board) -> FoldOutcome:
    cpus = job["resources"]["cpus_per_fold"]
    torch.set_num_threads(max(1, int(cpus)))  # no more threads than the task's CPU share
    use_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    last = board.report.remote({**tag, "kind": "started", "device": str(device)})

    def report(epoch: EpochReport) -> None:
        nonlocal last
        last = board.report.remote({**tag, "kind": "epoch", **vars(epoch)})

    x, y, info = data
    outcome = run_fold(x, y, info, plan, job, device=device, report=report)
    # Calls from one caller to an actor run in order: once the last report is in,
    # every earlier one is too, so the dispatcher sees all epochs before the result.
    ray.get(last)
    return outcome


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

    def submit_fold(self, data: ray.ObjectRef, plan: FoldPlan, job: dict, tag: dict) -> ray.ObjectRef:
        resources = job["resources"]
        # max_retries re-runs a fold whose worker process died; an exception raised by
        # the training itself (a diverged loss) is not retried.
        return fold_task.options(num_cpus=resources["cpus_per_fold"],
                                 num_gpus=resources["gpus_per_fold"],
                                 max_retries=self.max_retries).remote(data, plan, job, tag, self.board)

    def drain_progress(self) -> list[dict]:
        return ray.get(self.board.drain.remote())

    def ready(self, refs: list[ray.ObjectRef]) -> list[ray.ObjectRef]:
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        return done

    def result(self, ref: ray.ObjectRef) -> FoldResult:
        try:
            return FoldResult(outcome=ray.get(ref))
        except ray.exceptions.TaskCancelledError:
            return FoldResult(cancelled=True)
        except ray.exceptions.RayTaskError as error:
            cause = error.cause if getattr(error, "cause", None) is not None else error
            return FoldResult(error=f"{type(cause).__name__}: {cause}")
        except ray.exceptions.RayError as error:
            return FoldResult(error=f"{type(error).__name__}: {error}")

    def cancel(self, ref: ray.ObjectRef) -> None:
        ray.cancel(ref, force=True)

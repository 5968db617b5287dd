"""What runs on a GPU (or CPU) node: one fold task, inside a Ray worker.

services.cluster makes `run_task` a Ray task and hands it a Board, its link to the
progress board; nothing here imports Ray, so the same task runs in tests without a
cluster. A task trains one fold, or all of a job's folds when they are packed. It
reports each attempt's start and every epoch, saves epoch checkpoints for a retry to
resume from, and returns one FoldResult per fold.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Protocol

import torch

from workers.callbacks import Callbacks, EpochReport
from workers.checkpointing import checkpoint_epoch
from workers.config import TrainingConfig
from workers.events import EpochEnded, FoldStarted, ProgressEvent
from workers.fold import run_fold
from workers.packed.fold import run_packed_folds
from workers.plans import DataInfo, FoldPlan, TableSource
from workers.results import FoldResult
from workers.table import Table, read_table

PACK = -1  # the checkpoint key of a packed task (it holds all of a job's folds)


class Board(Protocol):
    """A task's side of the progress board, for one job (services.cluster.BoardClient)."""

    def report(self, event: ProgressEvent) -> None: ...

    def save_checkpoint(self, key: int, data: bytes) -> None: ...

    def checkpoint(self, key: int) -> bytes | None: ...

    def flush(self) -> None:
        """Return once every event reported so far has reached the board."""


def use_task_resources(config: TrainingConfig, gpu_assigned: bool) -> torch.device:
    """Keep torch to the task's CPU share (its threads), and say where it trains."""
    torch.set_num_threads(max(1, int(config.resources.cpus_per_fold)))
    return torch.device("cuda" if gpu_assigned and torch.cuda.is_available() else "cpu")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_task(source: TableSource, plans: list[FoldPlan], config: TrainingConfig, *, job_id: str,
             board: Board, gpu_assigned: bool, node: str = "") -> list[FoldResult]:
    """Train these folds (one, or all of a job's when packed) and report on the board.
    The task reads its own data: only the columns its job uses."""
    if not config.pack_folds and len(plans) != 1:
        raise ValueError(f"an unpacked task trains one fold, not {len(plans)}")
    device = use_task_resources(config, gpu_assigned)
    key = PACK if config.pack_folds else plans[0].index  # where its checkpoints go
    resume_from = board.checkpoint(key)  # set when this is a retry
    resumed_after = checkpoint_epoch(resume_from) if resume_from else 0
    for plan in plans:
        board.report(FoldStarted(job_id, plan.index, str(device), worker_name(), resumed_after, node))

    def report(fold: int, epoch: EpochReport) -> None:
        board.report(EpochEnded(job_id, fold, epoch.epoch, epoch.metrics, epoch.best_epoch,
                                time_ms=int(time.time() * 1000)))

    callbacks = Callbacks(report, lambda snapshot: board.save_checkpoint(key, snapshot),
                          config.checkpoint_interval_s)
    if config.data_loading == "stream":
        results = [train_streamed(source, plans[0], config, device=device, callbacks=callbacks,
                                  resume_from=resume_from)]
    else:
        table = read_table(source.uri, list(source.features), source.label)
        results = train_folds(table, source.info, plans, config, device=device, callbacks=callbacks,
                              resume_from=resume_from)
    board.flush()  # the dispatcher then sees every epoch before it sees the result
    return results


def train_streamed(source: TableSource, plan: FoldPlan, config: TrainingConfig, *, device: torch.device,
                   callbacks: Callbacks | None = None, resume_from: bytes | None = None) -> FoldResult:
    """One fold read from its Parquet file a row group at a time (workers.stream)."""
    from workers.stream.fold import run_streamed_fold
    from workers.stream.source import ParquetSource
    parquet = ParquetSource(source.uri, list(source.features), source.label)
    return run_streamed_fold(parquet, source.info, plan, config, device=device, callbacks=callbacks,
                             resume_from=resume_from, buffer_rows=config.shuffle_buffer_rows)


def train_folds(table: Table, info: DataInfo, plans: list[FoldPlan], config: TrainingConfig, *,
                device: torch.device, callbacks: Callbacks | None = None,
                resume_from: bytes | None = None) -> list[FoldResult]:
    """These folds one after the other, or together as one stacked model when the job
    packs them. `resume_from` is the checkpoint of the pack, or of the one fold."""
    if resume_from is not None and not config.pack_folds and len(plans) != 1:
        raise ValueError("a checkpoint resumes a pack or one fold, not several unpacked folds")
    if config.pack_folds:
        return run_packed_folds(table, info, plans, config, device=device, callbacks=callbacks,
                                resume_from=resume_from)
    return [run_fold(table, info, plan, config, device=device, callbacks=callbacks, resume_from=resume_from)
            for plan in plans]

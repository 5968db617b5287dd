"""Terminal output for the CLI: per-fold progress bars and the fold table."""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from services.states import FINISHED_FOLD, FINISHED_JOB

FINISHED = {status.value for status in FINISHED_JOB | FINISHED_FOLD}
BAR_WIDTH = 24


def fold_line(fold: dict, max_epochs: int) -> str:
    """Progress, the latest epoch's validation loss and the best one's, and the status."""
    done = fold["status"] in FINISHED
    fraction = 1.0 if done else min(fold["epoch"] / max_epochs, 1.0)
    filled = int(fraction * BAR_WIDTH)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    loss = f"val_loss {fold['val_loss']:.4f}" if fold["val_loss"] is not None else ""
    best = (f"best {fold['best_val_loss']:.4f} @ {fold['best_epoch']}"
            if fold.get("best_val_loss") is not None else "")
    return f"fold {fold['index']} [{bar}] epoch {fold['epoch']:>4} {loss:<17} {best:<19} {fold['status']}"


def job_lines(job: dict) -> list[str]:
    header = f"job {job['id']} ({job['name']}): {job['status']}"
    return [header] + [fold_line(f, job["spec"]["max_epochs"]) for f in job["folds"]]


def follow(fetch: Callable[[], dict], out: TextIO | None = None, interval: float = 1.0) -> dict:
    """Show a job's progress until it ends; redraws in place on a terminal."""
    out = out or sys.stdout
    shown: list[str] = []
    while True:
        job = fetch()
        lines = job_lines(job)
        if out.isatty():
            if shown:
                out.write(f"\x1b[{len(shown)}A")  # back to the top of the previous frame
            out.write("".join(f"\x1b[2K{line}\n" for line in lines))
        elif lines != shown:
            out.write("\n".join(lines) + "\n")
        out.flush()
        shown = lines
        if job["status"] in FINISHED:
            return job
        time.sleep(interval)


BEST_COLUMNS = ("best_val_loss", "best_val_accuracy")  # the best epoch's, not the latest's


def fold_table(job: dict) -> str:
    """Per fold: the best epoch and its validation figures, the test metrics of its
    weights; then the test metrics' mean and standard deviation."""
    metrics = sorted({k for f in job["folds"] for k in (f["test_metrics"] or {})})
    best = [c for c in BEST_COLUMNS if any(f.get(c) is not None for f in job["folds"])]
    rows = [["fold", "status", "best_epoch", *best, *(f"test_{m}" for m in metrics)]]
    for fold in job["folds"]:
        values = fold["test_metrics"] or {}
        rows.append([str(fold["index"]), fold["status"], str(fold["best_epoch"] or "-"),
                     *(number(fold.get(c)) for c in best), *(number(values.get(m)) for m in metrics)])
    summary = job.get("summary") or {}
    for stat in ("mean", "std"):
        rows.append([stat, "", "", *([""] * len(best)),
                     *(number(summary.get(f"test_{m}_{stat}")) for m in metrics)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"

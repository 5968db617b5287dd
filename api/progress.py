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


def follow(fetch: Callable[[], dict], out: TextIO | None = None, interval: float = 1.0,
           lines_of: Callable[[dict], list[str]] = job_lines) -> dict:
    """Show a job's progress (or, with `lines_of`, whatever `fetch` returns that has a
    status) until it ends; redraws in place on a terminal."""
    out = out or sys.stdout
    shown: list[str] = []
    while True:
        job = fetch()
        lines = lines_of(job)
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


def upload_bar(out: TextIO | None = None, min_bytes: int = 8 << 20) -> Callable[[int, int], None]:
    """A progress bar for an upload, drawn on a terminal for files of `min_bytes` or more."""
    out = out or sys.stderr
    shown = [-1]

    def draw(sent: int, total: int) -> None:
        if total < min_bytes or not out.isatty():
            return
        percent = int(100 * sent / max(total, 1))
        if percent != shown[0]:
            filled = percent * BAR_WIDTH // 100
            out.write(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {percent:3d}% of "
                      f"{total / 2**20:,.0f} MiB" + ("\n" if sent >= total else ""))
            out.flush()
            shown[0] = percent
    return draw


def dataset_lines(dataset: dict) -> list[str]:
    """A dataset and a line per column: type, missing values, summary."""
    lines = [f"dataset {dataset['id']} ({dataset['name']}{', bundled' if dataset['bundled'] else ''}): "
             f"{dataset['rows']:,} rows, {len(dataset['columns'])} columns, {dataset['format']}, "
             f"{dataset['size']:,} bytes, sha256 {dataset['digest'][:12]}"]
    width = max(len(c["name"]) for c in dataset["columns"])
    for column in dataset["columns"]:
        lines.append(f"  {column['name']:<{width}}  {column['type']:<12} missing {column['missing']:<6} "
                     f"{summary_text(column['summary'])}")
    return lines


def summary_text(summary: dict) -> str:
    if "mean" in summary:
        infinite = f" infinite {summary['infinite']}" if summary.get("infinite") else ""
        return (f"min {summary['min']:.4g} max {summary['max']:.4g} mean {summary['mean']:.4g} "
                f"std {summary['std']:.4g}{infinite}")
    if "top" in summary:
        distinct = summary["distinct"] if summary["distinct"] is not None else f">{summary['distinct_over']}"
        top = ", ".join(f"{value} ({count})" for value, count in summary["top"][:5])
        return f"distinct {distinct}: {top}"
    return " ".join(f"{key} {value}" for key, value in summary.items() if value is not None)

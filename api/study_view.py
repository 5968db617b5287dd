"""A study as the CLI prints it: each variant's progress while it runs, then the
leaderboard with its statistics."""
from __future__ import annotations

from typing import Callable, TextIO

from api.progress import follow


def progress_lines(study: dict, jobs: dict[str, dict]) -> list[str]:
    """One line per variant: its status and how many folds have ended, from its job."""
    lines = [f"study {study['id']} ({study['name']}): {study['status']}"]
    for variant in study["variants"]:
        job = jobs.get(variant["job_id"], {})
        folds = job.get("folds", [])
        ended = sum(f["status"] in ("succeeded", "failed", "cancelled") for f in folds)
        epochs = sum(f["epoch"] for f in folds)
        lines.append(f"  {variant['label']:<28} {variant['status']:<10} folds {ended}/{len(folds)}  "
                     f"epochs {epochs}")
    return lines


def follow_study(fetch: Callable[[], tuple[dict, dict[str, dict]]], out: TextIO | None = None) -> dict:
    """Each variant's progress until the study ends (api.progress.follow); the study."""
    latest: dict = {}

    def fetch_study() -> dict:
        study, jobs = fetch()
        latest["jobs"] = jobs
        return study
    return follow(fetch_study, out, lines_of=lambda study: progress_lines(study, latest["jobs"]))


def leaderboard_table(study: dict) -> str:
    """Rank, variant, the metric's mean ± std, mean best epoch, epochs to target, wall
    time, and against the best: the mean difference, the corrected t-test's p and the
    Bayesian P(worse) / P(equivalent) / P(better)."""
    metric = study["metric"]
    rows = [["rank", "variant", f"test {metric}", "best epoch", "to target", "wall s",
             "Δ vs best", "p (corrected t)", "P(worse/equiv/better)"]]
    for v in study["variants"]:
        score = v["test"].get(metric)
        against = v["against_best"]
        reached = v["epochs_to_target"]
        rows.append([str(v["rank"] or "-"), v["label"],
                     f"{score['mean']:.4f} ± {score['std']:.4f}" if score else "-",
                     number(v["mean_best_epoch"], 1),
                     f"{number(reached['mean'], 1)} ({reached['reached']}/{reached['of']})" if study["target_val_loss"]
                     else "-",
                     number(v["wall_time_s"], 1),
                     number(against["mean_difference"], 4) if against else "(best)" if v["rank"] == 1 else "-",
                     number(against["p_value"], 4) if against else "-",
                     "/".join(f"{against[k]:.2f}" for k in ("p_worse", "p_equivalent", "p_better"))
                     if against else "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)
    return table + f"\n{metric}: {'higher' if study['higher_is_better'] else 'lower'} is better; " \
                   f"rope ±{study['rope']}"


def number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"

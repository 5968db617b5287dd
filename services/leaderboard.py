"""A study's leaderboard: each variant's test metrics over its folds, its rank on the
study's metric, and how it compares with the best variant on the same folds
(services.study_stats)."""
from __future__ import annotations

import statistics

from services.models import Job, Study
from services.states import FoldStatus, JobStatus
from services.study_stats import compare

HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "r2": True, "loss": False, "mae": False}
METRICS = {"classification": ("accuracy", "f1", "loss"), "regression": ("loss", "mae", "r2")}


def default_metric(task: str) -> str:
    return "accuracy" if task == "classification" else "loss"


def leaderboard(study: Study, jobs: list[Job]) -> dict:
    """{"metric", "higher_is_better", "rope", "best", "variants": [...]}: the variants in
    rank order (those without every fold tested come last, unranked)."""
    metric = study.spec["metric"]
    higher = HIGHER_IS_BETTER[metric]
    rows = [variant_row(job, metric) for job in jobs]
    complete = [r for r in rows if r["scores"] is not None]
    complete.sort(key=lambda r: r["mean"], reverse=higher)
    for rank, row in enumerate(complete, 1):
        row["rank"] = rank
    best = complete[0] if complete else None
    cv = study.spec["base_spec"]["cv"]
    for row in complete:
        if row is not best:
            row["against_best"] = compare(row["scores"], best["scores"], folds=cv["folds"],
                                          repeats=cv.get("repeats", 1), rope=study.spec["rope"],
                                          higher_is_better=higher).as_json()
    ordered = complete + [r for r in rows if r["scores"] is None]
    return {"metric": metric, "higher_is_better": higher, "rope": study.spec["rope"],
            "best": best["label"] if best else None, "variants": [public(r) for r in ordered]}


def variant_row(job: Job, metric: str) -> dict:
    folds = sorted(job.folds, key=lambda f: f.index)
    tested = [f for f in folds if f.status is FoldStatus.SUCCEEDED and f.test_metrics]
    complete = job.status is JobStatus.SUCCEEDED and len(tested) == len(folds)
    reached = [f.target_epoch for f in tested if f.target_epoch is not None]
    wall = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else None
    return {"label": job.variant, "job_id": job.id, "status": job.status.value, "rank": None,
            "folds": len(folds), "folds_tested": len(tested),
            "test": spread({name: [f.test_metrics[name] for f in tested] for name in
                            (tested[0].test_metrics if tested else {})}),
            "mean_best_epoch": mean([f.best_epoch for f in tested if f.best_epoch is not None]),
            "epochs_to_target": {"mean": mean(reached), "reached": len(reached), "of": len(tested)},
            "wall_time_s": wall, "against_best": None,
            "scores": [f.test_metrics[metric] for f in tested] if complete else None,
            "mean": statistics.fmean(f.test_metrics[metric] for f in tested) if complete else None}


def spread(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {name: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
            for name, v in values.items() if v}


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def public(row: dict) -> dict:
    """The row as the API shows it: its fold scores by name, not as the sort key."""
    return {("fold_scores" if k == "scores" else k): v for k, v in row.items() if k != "mean"}

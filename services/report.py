"""A study's report: one self-contained HTML page (the figures inline as PNG data URIs)
with the leaderboard, the statistics and links to the MLflow runs, written for a reader
who never opened MLflow."""
from __future__ import annotations

import base64
from html import escape

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.label { text-align: left; font-weight: 600; }
tr.best td { background: #eef8ee; } figure { margin: 1.5em 0; } img { max-width: 100%; }
p.note { color: #555; font-size: 0.9em; }
"""


def report_html(study: dict, figures: dict[str, bytes], run_links: dict[str, str | None]) -> str:
    """`study`: as GET /studies/{id} gives it; `figures`: name → PNG; `run_links`: variant
    label → its job's run in the MLflow UI."""
    metric, rope = study["metric"], study["rope"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>Study {escape(study['name'])}</title><style>{STYLE}</style></head><body>",
             f"<h1>Study {escape(study['name'])}</h1>",
             f"<p>Status: <strong>{escape(study['status'])}</strong>. {len(study['variants'])} variants, "
             f"each an ordinary job on the same folds of the same data "
             f"({escape(describe_cv(study['spec']))}). Ranked on the test <strong>{escape(metric)}</strong> "
             f"({'higher' if study['higher_is_better'] else 'lower'} is better).</p>",
             leaderboard_table(study, run_links),
             refit_html(study.get("refit"), study.get("best")),
             how_to_read(metric, rope),
             *(figure_html(name, png) for name, png in figures.items()),
             links(study), "</body></html>"]
    return "\n".join(parts)


def describe_cv(spec: dict) -> str:
    cv = spec.get("base", {}).get("cv", {})
    folds, repeats = cv.get("folds", 5), cv.get("repeats", 1)
    return f"{folds}-fold cross-validation" + (f", repeated {repeats} times" if repeats > 1 else "")


def leaderboard_table(study: dict, run_links: dict[str, str | None]) -> str:
    metric = study["metric"]
    head = ("<tr><th>rank</th><th>variant</th><th>status</th><th>test " + escape(metric) + " (mean ± std)</th>"
            "<th>mean best epoch</th><th>epochs to target</th><th>wall time (s)</th>"
            "<th>difference with the best</th><th>corrected t-test p</th>"
            "<th>P(worse)</th><th>P(equivalent)</th><th>P(better)</th></tr>")
    rows = [row_html(variant, metric, study, run_links.get(variant["label"])) for variant in study["variants"]]
    return f"<h2>Leaderboard</h2><table>{head}{''.join(rows)}</table>"


def row_html(variant: dict, metric: str, study: dict, link: str | None) -> str:
    score = variant["test"].get(metric)
    against = variant["against_best"] or {}
    reached = variant["epochs_to_target"]
    label = escape(variant["label"])
    cells = [str(variant["rank"] or "–"),
             f"<a href='{escape(link)}'>{label}</a>" if link else label, escape(variant["status"]),
             f"{score['mean']:.4f} ± {score['std']:.4f}" if score else "–",
             number(variant["mean_best_epoch"], 1),
             f"{number(reached['mean'], 1)} ({reached['reached']}/{reached['of']} folds)"
             if study["target_val_loss"] else "–",
             number(variant["wall_time_s"], 1),
             "best" if variant["rank"] == 1 else number(against.get("mean_difference"), 4),
             *(number(against.get(k), 3) for k in ("p_value", "p_worse", "p_equivalent", "p_better"))]
    first = " class='label'"
    tds = "".join(f"<td{first if i == 1 else ''}>{cell}</td>" for i, cell in enumerate(cells))
    return f"<tr{' class=best' if variant['rank'] == 1 else ''}>{tds}</tr>"


def how_to_read(metric: str, rope: float) -> str:
    return (f"<h2>How to read the statistics</h2><p class='note'>Each variant is compared with the best "
            f"one fold by fold: the same rows were tested by both, so their scores pair up. The folds' "
            f"training sets overlap, which makes a plain paired t-test far too confident; crossfold gives "
            f"the <strong>corrected resampled t-test</strong> of Nadeau and Bengio (its variance grows by "
            f"the ratio of test to training rows), whose p-value says how surprising the difference would "
            f"be if the two variants were equally good; and the <strong>Bayesian correlated t-test</strong> "
            f"(Benavoli et al., with the same correction), which gives the probabilities that the variant "
            f"is worse than, practically equivalent to (within ±{rope:g} {escape(metric)}) or better than "
            f"the best. A difference within that range is too small to matter in practice.</p>")


def figure_html(name: str, png: bytes) -> str:
    captions = {"validation_loss": "Validation loss by epoch: each variant's mean over its folds, "
                                   "with a band of ±1 standard deviation.",
                "training_loss": "Training loss of fold 0 by epoch: the raw value (thin) and its "
                                 "exponentially weighted average (thick).",
                "fold_scores": "The test metric of every fold of every variant; the bar is the mean."}
    data = base64.b64encode(png).decode()
    return (f"<figure><img alt='{escape(name)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{escape(captions.get(name, name))}</figcaption></figure>")


def refit_html(refit: dict | None, best: str | None) -> str:
    """The best variant's refit on every row (refit: true), once asked for."""
    if refit is None:
        return ""
    model = refit.get("registered_model")
    where = (f"registered in the MLflow Model Registry as <a href='{escape(model['mlflow_url'])}'>"
             f"{escape(model['name'])} version {model['version']}</a>" if model else
             f"{escape(refit['status'])}, not registered yet")
    return (f"<p>Refit: the best variant, {escape(best or '')}, trained again on every row for "
            f"{refit['epochs']} epochs (its folds' mean best epoch): {where}.</p>")


def links(study: dict) -> str:
    url = study.get("mlflow_experiment_url")
    return f"<p>All runs in MLflow: <a href='{escape(url)}'>the study's experiment</a>.</p>" if url else ""


def number(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"

"""The lecture's comparison figures, drawn with matplotlib (Agg, no display), as PNG bytes.

Each function takes plain numbers (services.curves reads them from MLflow), so the
figures are tested on fixed data: validation-loss curves of each variant with a band
over folds, the raw training loss against its exponentially weighted average, the test
metric per fold per variant, and a job's learning curves with each fold's best epoch.
"""
from __future__ import annotations

import functools
import io
import threading

import numpy as np
# Figure objects, never pyplot: pyplot keeps global state (the current figure), which
# the API's request threads drawing at once would share. A Figure draws with Agg.
from matplotlib.figure import Figure

SIZE = (8, 5)  # inches, at 100 dpi: 800 × 500 pixels
DPI = 100
# One figure drawn at a time in a process: matplotlib's text layout (its mathtext parser,
# which the log axes' tick labels go through) is not thread-safe, and the API's request
# threads and the dispatcher (a study's results) may draw at once.
DRAWING = threading.Lock()


def one_at_a_time(draw):
    @functools.wraps(draw)
    def drawn(*args, **kwargs) -> bytes:
        with DRAWING:
            return draw(*args, **kwargs)
    return drawn


def png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def new_figure():
    figure = Figure(figsize=SIZE)
    return figure, figure.subplots()


def mean_and_spread(curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per epoch: the mean and std over the folds still training at that epoch (folds
    stopped early end sooner), and the epochs (1-based)."""
    length = max(len(c) for c in curves)
    grid = np.full((len(curves), length), np.nan)
    for row, curve in zip(grid, curves):
        row[:len(curve)] = curve
    return np.arange(1, length + 1), np.nanmean(grid, axis=0), np.nanstd(grid, axis=0)


@one_at_a_time
def validation_curves(variants: dict[str, list[list[float]]], title: str) -> bytes:
    """Each variant's mean validation loss over epochs, with a band of ±1 std over folds."""
    figure, axes = new_figure()
    for label, curves in variants.items():
        if not any(curves):
            continue
        epochs, mean, std = mean_and_spread([c for c in curves if c])
        axes.plot(epochs, mean, label=label, linewidth=1.8)
        axes.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    axes.set(xlabel="epoch", ylabel="validation loss (mean over folds, ±1 std)", title=title)
    axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    if axes.lines:
        axes.legend(fontsize=9)
    return png(figure)


@one_at_a_time
def training_loss(variants: dict[str, tuple[list[float], list[float]]], title: str) -> bytes:
    """Each variant's raw training loss (fold 0, thin) against its exponentially weighted
    average (bias-corrected, thick), as the lecture draws the noisy loss of mini-batches."""
    figure, axes = new_figure()
    for index, (label, (raw, average)) in enumerate(variants.items()):
        color = f"C{index % 10}"
        epochs = np.arange(1, len(raw) + 1)
        axes.plot(epochs, raw, color=color, alpha=0.35, linewidth=0.9, label=f"{label}: raw")
        axes.plot(epochs[:len(average)], average, color=color, linewidth=2, label=f"{label}: average")
    axes.set(xlabel="epoch", ylabel="training loss", title=title)
    axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    if axes.lines:  # none for a study whose variants never ran
        axes.legend(fontsize=8, ncol=2)
    return png(figure)


@one_at_a_time
def fold_scores(variants: dict[str, list[float]], metric: str, title: str) -> bytes:
    """The test metric of every fold of every variant (a strip plot), with each mean."""
    figure, axes = new_figure()
    labels = list(variants)
    jitter = np.random.default_rng(0)
    for position, label in enumerate(labels):
        scores = variants[label]
        if not scores:
            continue
        x = position + jitter.uniform(-0.12, 0.12, len(scores))
        axes.scatter(x, scores, s=24, alpha=0.75, color=f"C{position % 10}")
        axes.hlines(np.mean(scores), position - 0.3, position + 0.3, color="black", linewidth=2)
    axes.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 4 else 0, ha="right"
                    if len(labels) > 4 else "center")
    axes.set(ylabel=f"test {metric} (one dot a fold; bar: mean)", title=title)
    axes.grid(True, axis="y", alpha=0.3)
    return png(figure)


@one_at_a_time
def learning_curves(folds: dict[int, tuple[list[float], list[float], int | None]], title: str) -> bytes:
    """Every fold's training and validation loss, its best epoch marked."""
    figure, axes = new_figure()
    for index, (train, val, best) in sorted(folds.items()):
        color = f"C{index % 10}"
        axes.plot(np.arange(1, len(train) + 1), train, color=color, linestyle="--", linewidth=1,
                  label=f"fold {index} training")
        axes.plot(np.arange(1, len(val) + 1), val, color=color, linewidth=1.6, label=f"fold {index} validation")
        if best and best <= len(val):
            axes.scatter([best], [val[best - 1]], color=color, marker="*", s=140, zorder=3,
                         edgecolor="black", linewidth=0.5)
    axes.set(xlabel="epoch", ylabel="loss (★: the epoch kept)", title=title)
    axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, ncol=2)
    return png(figure)

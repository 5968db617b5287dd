"""services.plots on fixed curves: valid PNGs of the stated size, each figure drawn even
where folds stopped at different epochs or a variant has no scores yet."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.plots import (fold_scores, learning_curves, mean_and_spread, training_loss,
                            validation_curves)

CURVES = {"sgd": [[1.0, 0.8, 0.7], [1.1, 0.9]], "adam": [[0.9, 0.5, 0.3, 0.25], [0.8, 0.4, 0.3]]}


def image(png: bytes) -> Image.Image:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    picture = Image.open(io.BytesIO(png))
    picture.load()
    return picture


def test_the_band_covers_the_folds_still_training_at_each_epoch():
    epochs, mean, std = mean_and_spread([[1.0, 0.8, 0.7], [1.1, 0.9]])
    assert list(epochs) == [1, 2, 3]
    assert mean == pytest.approx([1.05, 0.85, 0.7]) and std == pytest.approx([0.05, 0.05, 0.0])


@pytest.mark.parametrize("draw", [
    lambda: validation_curves(CURVES, "validation"),
    lambda: training_loss({"sgd": ([1.0, 0.9, 0.95, 0.7], [0.95, 0.9, 0.85, 0.8])}, "training"),
    lambda: fold_scores({"sgd": [0.9, 0.92, 0.88], "adam": [0.95, 0.97, 0.96], "waiting": []}, "accuracy", "scores"),
    lambda: learning_curves({0: ([1.0, 0.6, 0.5], [1.1, 0.7, 0.8], 2), 1: ([0.9, 0.5], [1.0, 0.6], None)}, "job"),
], ids=["validation_loss", "training_loss", "fold_scores", "learning_curves"])
def test_each_figure_is_a_png_of_800_by_500_pixels(draw):
    assert image(draw()).size == (800, 500)


def test_a_figure_shows_what_it_is_given():
    """Not blank: a figure with curves has far more colours than an empty one."""
    empty = np.asarray(image(validation_curves({"none": [[]]}, "nothing")).convert("RGB"))
    drawn = np.asarray(image(validation_curves(CURVES, "validation")).convert("RGB"))
    assert len(np.unique(drawn.reshape(-1, 3), axis=0)) > 2 * len(np.unique(empty.reshape(-1, 3), axis=0))


def test_figures_drawn_from_several_threads_at_once_all_come_out():
    """The API's request threads and the dispatcher draw at once: unguarded, matplotlib's
    mathtext parser (log-axis tick labels) raised ParseException under such a race."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(4) as pool:
        pngs = list(pool.map(lambda _: validation_curves(CURVES, "together"), range(12)))
    assert all(image(png).size == (800, 500) for png in pngs)

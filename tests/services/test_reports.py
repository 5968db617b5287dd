"""The per-class report and the confusion matrix's picture (services.reports)."""
from __future__ import annotations

import io
import time

from PIL import Image

from services.reports import CELL, DARK, LIGHT, class_report, confusion_png, summed


def picture(classes: list, confusion: list[list[int]]) -> Image.Image:
    return Image.open(io.BytesIO(confusion_png(classes, confusion))).convert("RGB")


def test_the_matrix_is_a_heat_map_of_its_counts():
    confusion = [[50, 0, 0], [0, 47, 3], [0, 2, 50]]  # two peaks, four zeros
    image = picture(["setosa", "versicolor", "virginica"], confusion)
    colors = dict((color, count) for count, color in image.getcolors(maxcolors=1 << 20))
    # A cell is CELL × CELL pixels, its count written over part of it.
    assert 2 * CELL * CELL > colors.get(DARK, 0) > CELL * CELL, "the peaks' cells are dark"
    assert colors.get(LIGHT, 0) > 3 * CELL * CELL, "the zeros' cells are light"


def test_long_labels_and_counts_many_classes_and_speed():
    classes = [f"class number {i} with a long name" for i in range(30)]
    confusion = [[123_456 if i == j else i * j for j in range(30)] for i in range(30)]
    began = time.perf_counter()
    image = picture(classes, confusion)
    assert time.perf_counter() - began < 2.0  # matplotlib took about 0.5 s for 10 classes
    assert image.size[0] > 30 * CELL and image.size[1] > 30 * CELL


def test_class_report_and_summed():
    confusion = summed([[[2, 1], [0, 3]], [[1, 0], [1, 1]]])
    assert confusion == [[3, 1], [1, 4]]
    report = class_report(["a", "b"], confusion)
    assert report[0] == {"class": "a", "support": 4, "precision": 0.75, "recall": 0.75, "f1": 0.75}
    assert report[1]["support"] == 5 and report[1]["recall"] == 0.8

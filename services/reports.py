"""What a classification job's folds add up to, per class: precision, recall and F1 from
the confusion matrix summed over the test folds (every row tested once), and a picture
of that matrix."""
from __future__ import annotations

import io


def summed(confusions: list[list[list[int]]]) -> list[list[int]]:
    size = len(confusions[0])
    return [[sum(c[i][j] for c in confusions) for j in range(size)] for i in range(size)]


def class_report(classes: list, confusion: list[list[int]]) -> list[dict]:
    """Per class: its rows (support), precision, recall and F1, as scikit-learn defines them."""
    report = []
    for i, name in enumerate(classes):
        true_positive = confusion[i][i]
        predicted = sum(row[i] for row in confusion)
        actual = sum(confusion[i])
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report.append({"class": name, "support": actual, "precision": precision, "recall": recall,
                       "f1": f1})
    return report


def confusion_png(classes: list, confusion: list[list[int]]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")  # no display: drawn to a file
    import matplotlib.pyplot as plt

    size = max(4.0, 0.5 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(confusion, cmap="Blues")
    labels = [str(c) for c in classes]
    axes.set_xticks(range(len(classes)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), labels)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title("confusion matrix, summed over the test folds")
    peak = max(max(row) for row in confusion) or 1
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            axes.text(j, i, str(count), ha="center", va="center",
                      color="white" if count > peak / 2 else "black")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, mean_absolute_error, r2_score

from workers.tasks import Classification, Regression


def test_classification_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, 200)
    logits = torch.tensor(rng.normal(size=(200, 4)), dtype=torch.float32)
    logits[torch.arange(120), torch.tensor(target[:120])] += 3  # mostly right
    task = Classification(4)
    halves = [task.sums(logits[s], torch.tensor(target[s])) for s in (slice(0, 90), slice(90, 200))]
    metrics = task.metrics((halves[0] + halves[1]).tolist(), 200)
    predicted = logits.argmax(1).numpy()
    assert metrics["accuracy"] == pytest.approx((predicted == target).mean())
    assert metrics["f1"] == pytest.approx(f1_score(target, predicted, average="macro"))
    full_loss = torch.nn.functional.cross_entropy(logits, torch.tensor(target)).item()
    assert metrics["loss"] == pytest.approx(full_loss, rel=1e-5)


def test_macro_f1_counts_a_class_predicted_but_absent_as_scikit_learn_does():
    target = torch.tensor([0, 0, 1, 1])
    predicted = torch.tensor([0, 2, 1, 1])  # class 2 is predicted once, never true; 3 neither
    task = Classification(4)
    metrics = task.metrics(task.sums(torch.nn.functional.one_hot(predicted, 4).float(), target).tolist(), 4)
    assert metrics["f1"] == pytest.approx(f1_score(target, predicted, average="macro"))  # 5/9


def test_regression_metrics_match_scikit_learn():
    rng = np.random.default_rng(1)
    target = rng.normal(size=100).astype(np.float32)
    output = (target + rng.normal(scale=0.3, size=100)).astype(np.float32)
    task = Regression(target_scale=2.0)
    sums = task.sums(torch.tensor(output)[:, None], torch.tensor(target)).tolist()
    metrics = task.metrics(sums, 100)
    assert metrics["loss"] == pytest.approx(np.mean((output - target) ** 2), rel=1e-5)
    assert metrics["mae"] == pytest.approx(2.0 * mean_absolute_error(target, output), rel=1e-5)
    assert metrics["r2"] == pytest.approx(r2_score(target, output), rel=1e-4)

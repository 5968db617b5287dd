"""Comparing two variants of a study on their paired fold scores.

Every variant ran on identical folds, so fold i of one and fold i of the other were
tested on the same rows: their scores pair up. The folds' training sets overlap, so
the scores are not independent and a plain paired t-test is too confident (Nadeau and
Bengio, 2003; Bouckaert and Frank, 2004); it is not offered. Two tests are:

- the corrected resampled t-test: t = mean(d) / sqrt((1/n + n_test/n_train) · var(d)),
  n - 1 degrees of freedom, where d are the n paired differences and n_test/n_train is
  1/(k-1) for k folds (the test fold against the rest: its training and validation
  folds both shape the model);
- the Bayesian correlated t-test (Benavoli et al., 2017) from baycomp, with the same
  correction and a region of practical equivalence (rope): the probabilities that the
  variant is worse than, equivalent to and better than the best one.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Comparison:
    differences: list[float]   # variant − best, fold by fold (in the metric's units)
    mean_difference: float
    t: float | None            # None when every difference is the same: no spread to test
    p_value: float             # two-sided, corrected resampled t-test
    p_worse: float             # Bayesian correlated t-test, with the rope
    p_equivalent: float
    p_better: float

    def as_json(self) -> dict:
        return asdict(self)


def compare(variant: list[float], best: list[float], *, folds: int, repeats: int, rope: float,
            higher_is_better: bool) -> Comparison:
    """`variant` against `best`, fold by fold (both in fold order, folds × repeats long)."""
    x, y = np.asarray(variant, dtype=float), np.asarray(best, dtype=float)
    d = x - y
    t, p = corrected_t_test(d, folds)
    p_lower, p_rope, p_higher = bayesian_probabilities(d, repeats, rope)
    worse, better = (p_lower, p_higher) if higher_is_better else (p_higher, p_lower)
    return Comparison([float(v) for v in d], float(d.mean()), t, p, worse, p_rope, better)


def corrected_t_test(d: np.ndarray, folds: int) -> tuple[float | None, float]:
    """(t, two-sided p) of the Nadeau–Bengio corrected resampled t-test."""
    from scipy import stats  # imported here, as baycomp below: the API starts without them
    n = len(d)
    mean, var = float(d.mean()), float(d.var(ddof=1)) if n > 1 else 0.0
    if var == 0.0:
        return None, 1.0 if mean == 0.0 else 0.0
    t = mean / math.sqrt((1 / n + 1 / (folds - 1)) * var)
    return t, float(2 * stats.t.sf(abs(t), n - 1))


def bayesian_probabilities(d: np.ndarray, repeats: int, rope: float) -> tuple[float, float, float]:
    """(P(d < -rope), P(|d| ≤ rope), P(d > rope)) under the correlated t-test's posterior,
    from baycomp (it takes the second model minus the first: zeros and d)."""
    from baycomp import CorrelatedTTest
    if rope == 0:
        lower, higher = CorrelatedTTest.probs(np.zeros_like(d), d, rope=0, runs=repeats)
        return float(lower), 0.0, float(higher)
    lower, within, higher = CorrelatedTTest.probs(np.zeros_like(d), d, rope=rope, runs=repeats)
    return float(lower), float(within), float(higher)

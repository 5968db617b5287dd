"""services.study_stats against values worked out by hand on fixed score vectors."""
from __future__ import annotations

import math

import pytest

from services.study_stats import compare

BEST = [0.90, 0.92, 0.88, 0.91, 0.89]
VARIANT = [0.88, 0.91, 0.85, 0.90, 0.86]
# d = variant − best = [-0.02, -0.01, -0.03, -0.01, -0.03]: mean -0.02, squared deviations
# 0 + 1e-4 + 1e-4 + 1e-4 + 1e-4, so var(d) = 4e-4 / 4 = 1e-4. With k = 5 folds the
# correction is 1/n + n_test/n_train = 1/5 + 1/4 = 0.45: t = -0.02 / sqrt(0.45e-4) =
# -2.98142, 4 degrees of freedom, two-sided p = 0.04068 (Student's t table: between
# 0.05 at 2.776 and 0.02 at 3.747). The plain paired t-test would say t = -4.472, p = 0.011.
T, P = -2.9814239699997196, 0.040681525827486575
# The Bayesian posterior of d is Student's t(4) at -0.02 with scale sqrt(0.45e-4) = 0.0067082:
# P(d < -0.01) = T4((−0.01 + 0.02) / 0.0067082 = 1.4907) = 0.89485,
# P(d > 0.01) = 1 − T4((0.01 + 0.02) / 0.0067082 = 4.4721) = 0.0055282.
WORSE, EQUIVALENT, BETTER = 0.8948523084408265, 0.09961944486244843, 0.0055282466967250385


def test_the_corrected_t_test_and_the_bayesian_probabilities_match_hand_computed_values():
    result = compare(VARIANT, BEST, folds=5, repeats=1, rope=0.01, higher_is_better=True)
    assert result.differences == pytest.approx([-0.02, -0.01, -0.03, -0.01, -0.03])
    assert result.mean_difference == pytest.approx(-0.02)
    assert result.t == pytest.approx(T) and result.p_value == pytest.approx(P)
    assert result.t != pytest.approx(-0.02 / math.sqrt(1e-4 / 5))  # not the plain paired t-test
    assert (result.p_worse, result.p_equivalent, result.p_better) == pytest.approx((WORSE, EQUIVALENT, BETTER))


def test_for_a_loss_lower_is_better_so_worse_and_better_swap():
    losses_best, losses_variant = [-v for v in BEST], [-v for v in VARIANT]  # d = +0.02 on average
    result = compare(losses_variant, losses_best, folds=5, repeats=1, rope=0.01, higher_is_better=False)
    assert result.t == pytest.approx(-T)
    assert (result.p_worse, result.p_equivalent, result.p_better) == pytest.approx((WORSE, EQUIVALENT, BETTER))


def test_repeated_folds_count_each_score_and_keep_the_fold_correction():
    # Two repetitions of 3 folds: d = [0.01, 0.03, 0.02, 0.02, 0.01, 0.03], mean 0.02,
    # var = (4 × 1e-4) / 5 = 8e-5; correction 1/6 + 1/(3-1) = 2/3: t = 0.02 / sqrt(5.3333e-5) = 2.7386.
    best = [0.5] * 6
    variant = [0.51, 0.53, 0.52, 0.52, 0.51, 0.53]
    result = compare(variant, best, folds=3, repeats=2, rope=0.0, higher_is_better=True)
    assert result.t == pytest.approx(0.02 / math.sqrt(8e-5 * (1 / 6 + 1 / 2)))
    assert result.p_equivalent == 0.0 and result.p_better > 0.95 and result.p_worse < 0.05


def test_identical_scores_have_no_spread_to_test():
    same = compare(BEST, BEST, folds=5, repeats=1, rope=0.01, higher_is_better=True)
    assert same.t is None and same.p_value == 1.0 and same.p_equivalent == 1.0
    shifted = compare([v + 0.05 for v in BEST], BEST, folds=5, repeats=1, rope=0.01, higher_is_better=True)
    assert shifted.t is None and shifted.p_value == 0.0 and shifted.p_better == 1.0

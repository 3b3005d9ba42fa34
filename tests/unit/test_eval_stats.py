"""Bootstrap intervals: contain the estimate, shrink with n, stratify and pair as documented, reproducible."""

import numpy as np

from arm.eval.stats import bootstrap_ci, mean_of, mean_of_means, number, sum_of_means, weighted_mean_of_means


def test_interval_contains_estimate_and_shrinks_with_n():
    rng = np.random.default_rng()
    small = rng.random(40) < 0.3
    large = rng.random(4000) < 0.3
    p_small, (lo_s, hi_s) = bootstrap_ci([small], mean_of, seed=1)
    p_large, (lo_l, hi_l) = bootstrap_ci([large], mean_of, seed=1)
    assert p_small == small.mean() and p_large == large.mean()
    assert lo_s <= p_small <= hi_s and lo_l <= p_large <= hi_l
    # The width of a proportion's interval scales like 1/sqrt(n): 100x the samples, about a tenth the width.
    assert (hi_l - lo_l) < 0.3 * (hi_s - lo_s)
    # Normal-approximation check on the large sample: the half-width is close to 1.96 * standard error.
    se = np.sqrt(p_large * (1 - p_large) / large.size)
    assert abs((hi_l - lo_l) / 2 - 1.96 * se) < 0.25 * 1.96 * se


def test_seeded_and_degenerate_cases():
    x = np.random.default_rng().random(30)
    assert bootstrap_ci([x], mean_of, seed=7) == bootstrap_ci([x], mean_of, seed=7)
    assert bootstrap_ci([[1.0, 1.0, 1.0]], mean_of) == (1.0, [1.0, 1.0])
    assert bootstrap_ci([[0.4]], mean_of) == (0.4, [0.4, 0.4])
    value, ci = bootstrap_ci([[]], mean_of)
    assert np.isnan(value) and number(value, ci) == {"value": None, "ci95": [None, None]}


def test_stratified_statistics_by_hand():
    a, b, c = [1.0, 0.0, 1.0, 1.0], [0.0, 0.0], [1.0]  # means 0.75, 0, 1
    value, (lo, hi) = bootstrap_ci([a, b, c], mean_of_means, seed=0, stratified=True)
    assert np.isclose(value, (0.75 + 0 + 1) / 3) and lo <= value <= hi
    # Only stratum a varies; resampling it moves the mean of means by at most a third of its own range.
    assert lo >= (0 + 0 + 1) / 3 - 1e-12 and hi <= (1 + 0 + 1) / 3 + 1e-12
    w_value, _ = bootstrap_ci([a, b], weighted_mean_of_means([0.4, 0.1]), stratified=True)
    assert np.isclose(w_value, (0.4 * 0.75 + 0.1 * 0) / 0.5)
    s_value, _ = bootstrap_ci([a, b, c], sum_of_means, stratified=True)
    assert np.isclose(s_value, 1.75)


def test_paired_statistic_keeps_rows_together():
    # Columns that are always equal stay equal under a paired resample: agreement is 1 in every resample.
    x = np.random.default_rng().integers(0, 2, 50).astype(float)
    value, ci = bootstrap_ci([x, x.copy()], lambda p, q, axis=-1: np.mean(p == q, axis=axis), paired=True)
    assert value == 1.0 and ci == [1.0, 1.0]

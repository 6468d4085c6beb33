"""Tests for labeling.uncertainty: pure maths, no database."""

from __future__ import annotations

import numpy as np
import pytest

from labeling import bradley_terry as bt
from labeling import uncertainty as unc


def _simulate(
    rng: np.random.Generator, *, true_scores: np.ndarray, n_judgments: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_items = true_scores.size
    first = rng.integers(0, n_items, n_judgments)
    second = (first + rng.integers(1, n_items, n_judgments)) % n_items
    p = 1.0 / (1.0 + np.exp(true_scores[second] - true_scores[first]))
    return first, second, (rng.random(n_judgments) < p).astype(np.float64)


def _exact_centred_covariance(comparisons: bt.Comparisons, scores: np.ndarray, l2: float):  # noqa: ANN202
    hessian = unc.hessian_at(scores=scores, comparisons=comparisons, l2=l2).toarray()
    n = comparisons.n_items
    centring = np.eye(n) - 1.0 / n
    return centring @ np.linalg.pinv(hessian) @ centring, hessian


# --- the Hessian and the Laplace variances ---------------------------------------------


def test_hessian_is_minus_the_gradients_jacobian() -> None:
    rng = np.random.default_rng(0)
    first, second, outcome = _simulate(rng, true_scores=rng.normal(size=6), n_judgments=60)
    c = bt.comparisons_from_outcomes(n_items=6, first=first, second=second, outcome=outcome)
    s = rng.normal(size=6)
    hessian = unc.hessian_at(scores=s, comparisons=c, l2=0.3).toarray()
    step = 1e-6
    numeric = np.empty((6, 6))
    for k in range(6):
        e = np.zeros(6)
        e[k] = step
        numeric[:, k] = -(
            bt.gradient(scores=s + e, comparisons=c, l2=0.3)
            - bt.gradient(scores=s - e, comparisons=c, l2=0.3)
        ) / (2 * step)
    np.testing.assert_allclose(hessian, numeric, atol=1e-6)


@pytest.mark.parametrize("l2", [0.0, 0.05, 2.0])
def test_dense_variances_are_the_centred_inverse(l2: float) -> None:
    rng = np.random.default_rng(1)
    first, second, outcome = _simulate(rng, true_scores=rng.normal(size=15), n_judgments=400)
    c = bt.comparisons_from_outcomes(n_items=15, first=first, second=second, outcome=outcome)
    fitted = bt.fit(comparisons=c, l2=l2)
    covariance, hessian = _exact_centred_covariance(c, fitted.scores, l2)
    centred = unc.laplace_variances(comparisons=c, scores=fitted.scores, l2=l2, method="dense")
    np.testing.assert_allclose(centred, np.diag(covariance), rtol=1e-9, atol=1e-12)
    if l2 > 0:
        raw = unc.laplace_variances(
            comparisons=c, scores=fitted.scores, l2=l2, method="dense", centred=False
        )
        np.testing.assert_allclose(raw, np.diag(np.linalg.inv(hessian)), rtol=1e-9)
        # The identity the docstring uses: the raw variance adds 1/(n l2) of shift.
        np.testing.assert_allclose(raw - centred, 1.0 / (15 * l2), rtol=1e-9)


def test_stochastic_variances_match_dense() -> None:
    rng = np.random.default_rng(2)
    n = 400
    first, second, outcome = _simulate(rng, true_scores=rng.normal(size=n), n_judgments=4000)
    c = bt.comparisons_from_outcomes(n_items=n, first=first, second=second, outcome=outcome)
    fitted = bt.fit(comparisons=c)
    exact = unc.laplace_variances(comparisons=c, scores=fitted.scores, l2=fitted.l2, method="dense")
    estimate = unc.laplace_variances(
        comparisons=c, scores=fitted.scores, l2=fitted.l2, method="stochastic", seed=3
    )
    relative = np.abs(np.sqrt(estimate / exact) - 1.0)
    assert np.median(relative) < 0.01
    assert relative.max() < 0.05
    again = unc.laplace_variances(
        comparisons=c, scores=fitted.scores, l2=fitted.l2, method="stochastic", seed=3
    )
    np.testing.assert_array_equal(estimate, again)  # seeded


def test_stochastic_handles_weak_prior_and_uncompared_items() -> None:
    # l2 = 1e-3 puts 1/(n l2) = 25 of shift variance into H^-1; the centred estimate must
    # not inherit its noise. Items 38, 39 are never compared: their centred variance is
    # the prior's, 1/l2, less the shift.
    rng = np.random.default_rng(4)
    n, l2 = 40, 1e-3
    first, second, outcome = _simulate(rng, true_scores=rng.normal(size=38), n_judgments=800)
    c = bt.comparisons_from_outcomes(n_items=n, first=first, second=second, outcome=outcome)
    fitted = bt.fit(comparisons=c, l2=l2)
    exact = unc.laplace_variances(comparisons=c, scores=fitted.scores, l2=l2, method="dense")
    estimate = unc.laplace_variances(
        comparisons=c, scores=fitted.scores, l2=l2, method="stochastic", probes=64
    )
    np.testing.assert_allclose(estimate[:38], exact[:38], rtol=0.05)
    np.testing.assert_allclose(estimate[38:], exact[38:], rtol=0.05)
    assert exact[38] > 100 * exact[:38].max()


def test_laplace_intervals_shape_and_level() -> None:
    rng = np.random.default_rng(5)
    first, second, outcome = _simulate(rng, true_scores=rng.normal(size=10), n_judgments=300)
    c = bt.comparisons_from_outcomes(n_items=10, first=first, second=second, outcome=outcome)
    fitted = bt.fit(comparisons=c)
    at_95 = unc.laplace_intervals(comparisons=c, fitted=fitted)
    at_50 = unc.laplace_intervals(comparisons=c, fitted=fitted, level=0.5)
    np.testing.assert_allclose(at_95.width, 2 * 1.959963984540054 * at_95.standard_error)
    np.testing.assert_allclose(at_50.width, 2 * 0.6744897501960817 * at_50.standard_error)
    assert np.all(at_95.lower < fitted.scores) and np.all(fitted.scores < at_95.upper)
    with pytest.raises(ValueError, match="level"):
        unc.laplace_intervals(comparisons=c, fitted=fitted, level=1.0)


# --- Laplace against the bootstrap, and coverage -------------------------------------------


def test_laplace_and_bootstrap_widths_agree_when_well_conditioned() -> None:
    rng = np.random.default_rng(6)
    n = 8
    first, second, outcome = _simulate(rng, true_scores=np.linspace(-1.0, 1.0, n), n_judgments=3000)
    c = bt.comparisons_from_outcomes(n_items=n, first=first, second=second, outcome=outcome)
    fitted = bt.fit(comparisons=c, l2=0.01)
    laplace = unc.laplace_intervals(comparisons=c, fitted=fitted)
    boot = unc.bootstrap_intervals(
        n_items=n, first=first, second=second, outcome=outcome, l2=0.01, resamples=300, seed=7
    )
    np.testing.assert_allclose(boot.scores, fitted.scores)
    # 300 resamples estimate a 95% width to about +-8%.
    np.testing.assert_allclose(boot.width, laplace.width, rtol=0.2)
    np.testing.assert_allclose(boot.standard_error, laplace.standard_error, rtol=0.15)


def test_bootstrap_is_seeded_and_respects_weights() -> None:
    rng = np.random.default_rng(8)
    first, second, outcome = _simulate(rng, true_scores=rng.normal(size=5), n_judgments=200)
    kwargs = {"n_items": 5, "first": first, "second": second, "outcome": outcome, "l2": 0.5}
    one = unc.bootstrap_intervals(**kwargs, resamples=20, seed=1)
    two = unc.bootstrap_intervals(**kwargs, resamples=20, seed=1)
    np.testing.assert_array_equal(one.lower, two.lower)
    ones = unc.bootstrap_intervals(**kwargs, weight=np.ones(200), resamples=20, seed=1)
    np.testing.assert_array_equal(one.upper, ones.upper)
    with pytest.raises(ValueError, match="l2 > 0"):
        unc.bootstrap_intervals(**{**kwargs, "l2": 0.0}, resamples=20)


def test_laplace_intervals_cover_true_centred_scores() -> None:
    # True scores are fixed; what the data identify is their centred version, and the MAP is
    # shrunk towards 0 by l2. With l2 = 0.01 and ~150 judgments per item the shrinkage is
    # about 1% of a score, far inside an interval of half-width ~0.3, so the 95% intervals
    # should cover ~95% of items (binomial sd over 200 items: 1.5%).
    rng = np.random.default_rng(9)
    n = 200
    truth = rng.normal(size=n)
    first, second, outcome = _simulate(rng, true_scores=truth, n_judgments=15000)
    c = bt.comparisons_from_outcomes(n_items=n, first=first, second=second, outcome=outcome)
    fitted = bt.fit(comparisons=c, l2=0.01)
    intervals = unc.laplace_intervals(comparisons=c, fitted=fitted)
    centred_truth = truth - truth.mean()
    covered = (intervals.lower <= centred_truth) & (centred_truth <= intervals.upper)
    assert covered.mean() >= 0.88
    assert covered.mean() <= 0.995  # not vacuously wide


# --- judgment weights ------------------------------------------------------------------


def test_unit_weights_change_nothing() -> None:
    rng = np.random.default_rng(10)
    first, second, outcome = _simulate(rng, true_scores=rng.normal(size=30), n_judgments=500)
    outcome[::7] = 0.5
    plain = bt.comparisons_from_outcomes(n_items=30, first=first, second=second, outcome=outcome)
    weighted = bt.comparisons_from_outcomes(
        n_items=30, first=first, second=second, outcome=outcome, weight=np.ones(500)
    )
    for field in ("i", "j", "wins_i", "total"):
        np.testing.assert_array_equal(getattr(plain, field), getattr(weighted, field))
    a, b = bt.fit(comparisons=plain), bt.fit(comparisons=weighted)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.l2 == b.l2


def test_integer_weights_equal_repeated_judgments() -> None:
    rng = np.random.default_rng(11)
    first, second, outcome = _simulate(rng, true_scores=rng.normal(size=12), n_judgments=150)
    weight = rng.integers(0, 4, 150).astype(np.float64)
    weighted = bt.comparisons_from_outcomes(
        n_items=12, first=first, second=second, outcome=outcome, weight=weight
    )
    repeat = weight.astype(np.int64)
    repeated = bt.comparisons_from_outcomes(
        n_items=12,
        first=np.repeat(first, repeat),
        second=np.repeat(second, repeat),
        outcome=np.repeat(outcome, repeat),
    )
    a, b = bt.fit(comparisons=weighted, l2=0.2), bt.fit(comparisons=repeated, l2=0.2)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-9)
    se_a = unc.laplace_intervals(comparisons=weighted, fitted=a).standard_error
    se_b = unc.laplace_intervals(comparisons=repeated, fitted=b).standard_error
    np.testing.assert_allclose(se_a, se_b, rtol=1e-8)


# --- per-source scores -----------------------------------------------------------------


def test_source_scores_drop_same_source_pairs_and_count_wins() -> None:
    # Items 0, 1 from source 0; 2 from source 1; 3 from source 2.
    item_source = [0, 0, 1, 2]
    first = [0, 0, 1, 2, 3, 1]
    second = [1, 2, 2, 3, 0, 0]
    outcome = [1.0, 1.0, 0.5, 1.0, 0.0, 0.0]
    result = unc.source_scores(
        n_sources=3, item_source=item_source, first=first, second=second, outcome=outcome, l2=1.0
    )
    assert result.dropped_same_source == 2
    # Source 0 beat 1 (0 v 2), tied 1 (1 v 2), beat 2 (3 v 0, outcome 0); source 1 beat 2.
    np.testing.assert_allclose(result.judgments, [3.0, 3.0, 2.0])
    np.testing.assert_allclose(result.win_rate, [2.5 / 3, 1.5 / 3, 0.0])
    assert result.scores[0] > result.scores[1] > result.scores[2]
    assert np.all(result.intervals.lower < result.scores)


def test_source_scores_recover_model_ranking_with_intervals() -> None:
    rng = np.random.default_rng(12)
    n_sources, per_source = 4, 50
    source_ability = np.array([-1.0, 0.0, 0.5, 1.5])
    item_source = np.repeat(np.arange(n_sources), per_source)
    item_scores = source_ability[item_source] + 0.1 * rng.normal(size=item_source.size)
    first, second, outcome = _simulate(rng, true_scores=item_scores, n_judgments=4000)
    laplace = unc.source_scores(
        n_sources=n_sources,
        item_source=item_source,
        first=first,
        second=second,
        outcome=outcome,
        l2=0.01,
    )
    assert list(np.argsort(laplace.scores)) == [0, 1, 2, 3]
    truth = source_ability - source_ability.mean()
    assert np.all(np.abs(laplace.scores - truth) < 3 * laplace.intervals.standard_error)
    assert np.all(np.diff(laplace.win_rate) > 0)
    boot = unc.source_scores(
        n_sources=n_sources,
        item_source=item_source,
        first=first,
        second=second,
        outcome=outcome,
        l2=0.01,
        interval="bootstrap",
        resamples=100,
    )
    np.testing.assert_allclose(boot.scores, laplace.scores)
    np.testing.assert_allclose(boot.intervals.width, laplace.intervals.width, rtol=0.3)


def test_source_scores_validate_inputs() -> None:
    with pytest.raises(ValueError, match="item_source"):
        unc.source_scores(n_sources=2, item_source=[0, 2], first=[0], second=[1], outcome=[1.0])
    with pytest.raises(ValueError, match="item indices"):
        unc.source_scores(n_sources=2, item_source=[0, 1], first=[0], second=[2], outcome=[1.0])

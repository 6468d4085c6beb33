"""Tests for labeling.orl: pure maths, no database."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import log_expit, logit

from labeling import orl


def _pairs(n: int, rows: list[tuple[int, int, int, int, float]], weight=None) -> orl.Pairs:
    s1, l1, s2, l2, y = (np.array(col) for col in zip(*rows, strict=True))
    return orl.pairs_from_arrays(
        n_transitions=n, start_1=s1, length_1=l1, start_2=s2, length_2=l2, y=y, weight=weight
    )


def _random_pairs(rng: np.random.Generator, *, n: int, k: int, max_len: int = 6) -> orl.Pairs:
    l1 = rng.integers(1, max_len + 1, k)
    l2 = rng.integers(1, max_len + 1, k)
    s1 = rng.integers(0, n - l1 + 1)
    s2 = rng.integers(0, n - l2 + 1)
    y = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=k)
    w = rng.integers(0, 4, k).astype(float)
    return orl.pairs_from_arrays(
        n_transitions=n, start_1=s1, length_1=l1, start_2=s2, length_2=l2, y=y, weight=w
    )


def _naive_closed_form(pairs: orl.Pairs) -> tuple[np.ndarray, np.ndarray]:
    num = np.zeros(pairs.n_transitions)
    den = np.zeros(pairs.n_transitions)
    for k in range(pairs.n_pairs):
        mu = 2 * pairs.y[k] - 1
        w = pairs.weight[k]
        for t in range(pairs.start_1[k], pairs.start_1[k] + pairs.length_1[k]):
            num[t] += w * mu
            den[t] += w
        for t in range(pairs.start_2[k], pairs.start_2[k] + pairs.length_2[k]):
            num[t] -= w * mu
            den[t] += w
    covered = den > 0
    out = np.zeros_like(num)
    out[covered] = num[covered] / den[covered]
    return out, covered


# --- closed form -------------------------------------------------------------------------


def test_closed_form_by_hand_with_overlap_tie_and_uncovered():
    # Pair 0: rows 0-2 beat rows 3-5 (y = 1). Pair 1: rows 2-3 against rows 6-7 with
    # y = 0.25, mu = -0.5: segment 1 gets -0.5, segment 2 +0.5. Rows 2 and 3 average two
    # labels. Pair 2: a tie between rows 8 and 9 (0 each). Rows 10 and 11 are not covered.
    pairs = _pairs(12, [(0, 3, 3, 3, 1.0), (2, 2, 6, 2, 0.25), (8, 1, 9, 1, 0.5)])
    labels = orl.closed_form(pairs=pairs, fill=-7.0)
    expected = [1, 1, (1 - 0.5) / 2, (-1 - 0.5) / 2, -1, -1, 0.5, 0.5, 0, 0, -7, -7]
    np.testing.assert_allclose(labels.rewards, expected, atol=1e-7)
    assert labels.covered.tolist() == [True] * 10 + [False] * 2
    assert labels.rewards.dtype == np.float32
    assert labels.method == "closed_form" and labels.n_pairs == 3
    assert labels.coverage == pytest.approx(10 / 12)
    assert labels.objective is None and labels.iterations is None


def test_closed_form_weighted_mean_and_zero_weight_pairs_dropped():
    # Row 1: +1 from pair 0's segment 1 (weight 3) and -1 from pair 1's segment 1 (y = 0,
    # weight 1): (3 - 1) / 4. Pair 2 has weight 0 and counts nowhere.
    pairs = _pairs(5, [(0, 2, 3, 1, 1.0), (1, 2, 4, 1, 0.0), (2, 1, 3, 1, 1.0)], weight=[3, 1, 0])
    labels = orl.closed_form(pairs=pairs)
    assert labels.n_pairs == 2
    np.testing.assert_allclose(labels.rewards, [1.0, (3 - 1) / 4, -1.0, -1.0, 1.0], atol=1e-7)
    assert labels.covered.all()


def test_closed_form_equals_naive_loop_on_random_inputs():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        pairs = _random_pairs(rng, n=n, k=int(rng.integers(1, 40)), max_len=min(6, n))
        labels = orl.closed_form(pairs=pairs)
        values, covered = _naive_closed_form(pairs)
        np.testing.assert_array_equal(labels.covered, covered)
        np.testing.assert_allclose(labels.rewards, values, atol=1e-6)
        assert np.all(labels.rewards[~covered] == 0)


# --- exact -------------------------------------------------------------------------------


def _disjoint(rng: np.random.Generator, *, k: int) -> tuple[orl.Pairs, np.ndarray, np.ndarray]:
    l1 = rng.integers(1, 5, k)
    l2 = rng.integers(1, 5, k)
    offsets = np.concatenate(([0], np.cumsum(l1 + l2 + 1)))  # a gap row between pairs
    s1 = offsets[:-1]
    s2 = s1 + l1
    y = rng.uniform(0.02, 0.98, k)
    # Short pairs with near-certain labels, so that the box binds: |logit(y)| > 2.
    l1[:3] = l2[:3] = 1
    y[:3] = [0.999, 0.001, 0.99]
    pairs = orl.pairs_from_arrays(
        n_transitions=int(offsets[-1]), start_1=s1, length_1=l1, start_2=s2, length_2=l2, y=y
    )
    return pairs, l1 + l2, y


def _segment_gaps(rewards: np.ndarray, pairs: orl.Pairs) -> np.ndarray:
    r = rewards.astype(np.float64)
    sums = [
        np.array([r[s : s + n].sum() for s, n in zip(start, length, strict=True)])
        for start, length in ((pairs.start_1, pairs.length_1), (pairs.start_2, pairs.length_2))
    ]
    return sums[0] - sums[1]


def test_exact_gaps_of_disjoint_pairs_are_clipped_logits():
    rng = np.random.default_rng(5)
    pairs, box, y = _disjoint(rng, k=40)
    labels = orl.exact(pairs=pairs)
    assert labels.converged and labels.method == "exact"
    gaps = _segment_gaps(labels.rewards, pairs)
    expected = np.clip(logit(y), -box, box)
    np.testing.assert_allclose(gaps, expected, atol=2e-3)
    assert np.any(np.abs(logit(y)) > box)  # the box binds somewhere
    # The objective against the independent per-pair optimum (closed form in the gap).
    best = float(np.sum(y * log_expit(expected) + (1 - y) * log_expit(-expected)))
    assert labels.objective == pytest.approx(best, abs=1e-5)
    assert labels.objective == pytest.approx(
        orl.log_likelihood(rewards=labels.rewards, pairs=pairs), abs=1e-4
    )


def test_exact_matches_an_independent_solve_over_segment_sums_with_overlaps():
    # Overlapping, shared segments: an independent derivative-free solve (Powell, from zero)
    # over the per-step rewards reaches no better objective.
    rng = np.random.default_rng(8)
    pairs = _random_pairs(rng, n=16, k=12, max_len=4)
    labels = orl.exact(pairs=pairs)

    def negative(r: np.ndarray) -> float:
        return -orl.log_likelihood(rewards=r, pairs=pairs)

    reference = minimize(
        negative,
        np.zeros(16),
        method="Powell",
        bounds=[(-1, 1)] * 16,
        options={"xtol": 1e-8, "ftol": 1e-12, "maxiter": 100000},
    )
    assert labels.objective >= -reference.fun - 1e-4
    assert labels.objective == pytest.approx(-reference.fun, abs=1e-2)


def test_exact_objective_beats_closed_form_and_zero_and_respects_bounds():
    rng = np.random.default_rng(11)
    for _ in range(3):
        pairs = _random_pairs(rng, n=40, k=30, max_len=6)
        labels = orl.exact(pairs=pairs, fill=0.0)
        closed = orl.closed_form(pairs=pairs)
        assert labels.objective >= orl.log_likelihood(rewards=closed.rewards, pairs=pairs) - 1e-9
        assert labels.objective >= orl.log_likelihood(rewards=np.zeros(40), pairs=pairs) - 1e-9
        assert np.all(np.abs(labels.rewards) <= 1.0)
        assert np.all(labels.rewards[~labels.covered] == 0)
        np.testing.assert_array_equal(labels.covered, closed.covered)


def test_exact_chain_of_shared_segments_is_ordered():
    # Segments a = rows 0-3, b = rows 4-7, c = rows 8-11: a > b (y = 0.8), b > c (y = 0.8).
    pairs = _pairs(14, [(0, 4, 4, 4, 0.8), (4, 4, 8, 4, 0.8)], weight=[2, 2])
    labels = orl.exact(pairs=pairs, fill=5.0)
    r = labels.rewards.astype(np.float64)
    a, b, c = r[0:4].sum(), r[4:8].sum(), r[8:12].sum()
    assert a > b > c
    # Each segment is one piece (rows in the same segments), so its labels are equal.
    for rows in (r[0:4], r[4:8], r[8:12]):
        np.testing.assert_allclose(rows, rows[0], atol=1e-6)
    np.testing.assert_allclose([a - b, b - c], [logit(0.8)] * 2, atol=2e-3)
    assert r[12] == r[13] == 5.0 and labels.coverage == pytest.approx(12 / 14)


def test_exact_tiny_l2_picks_the_even_split():
    pairs = _pairs(4, [(0, 2, 2, 2, 0.7)])
    labels = orl.exact(pairs=pairs, l2=1e-8)
    r = labels.rewards
    assert r[0] == pytest.approx(r[1], abs=1e-4) and r[2] == pytest.approx(r[3], abs=1e-4)
    assert float(r[:2].sum() - r[2:].sum()) == pytest.approx(logit(0.7), abs=2e-3)


def test_exact_with_no_pairs():
    pairs = orl.pairs_from_arrays(
        n_transitions=3, start_1=[], length_1=[], start_2=[], length_2=[], y=[]
    )
    labels = orl.exact(pairs=pairs, fill=1.5)
    assert labels.rewards.tolist() == [1.5] * 3 and labels.coverage == 0.0


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"length_2": [2]}, "differ in length"),
        ({"start_1": [0, 9]}, r"segment 1 of pair 1 .*start_1\[1\] = 9"),
        ({"start_2": [-1, 0]}, r"start_2\[0\] = -1"),
        ({"length_1": [2, 0]}, r"length_1\[1\] must be >= 1"),
        ({"y": [0.5, 1.5]}, r"y\[1\] must lie in \[0, 1\]"),
        ({"y": [np.nan, 0.5]}, r"y\[0\]"),
        ({"weight": [1.0, np.nan]}, r"weight\[1\]"),
        ({"weight": [-1.0, 1.0]}, r"weight\[0\]"),
        ({"start_1": [0.5, 1]}, r"start_1\[0\] must be an integer"),
    ],
)
def test_bad_inputs_name_the_argument_and_index(changes, message):
    args = {
        "n_transitions": 10,
        "start_1": [0, 1],
        "length_1": [2, 2],
        "start_2": [5, 6],
        "length_2": [2, 2],
        "y": [0.5, 1.0],
        "weight": [1.0, 1.0],
    }
    with pytest.raises(ValueError, match=message):
        orl.pairs_from_arrays(**{**args, **changes})

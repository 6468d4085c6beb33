"""Tests for labeling.bradley_terry: pure maths, no database."""

from __future__ import annotations

import json
from pathlib import Path

import choix
import numpy as np
import pytest
from choix.opt import PairwiseFcts

from labeling import bradley_terry as bt

# Stigler (1994) / Agresti (2002, p. 448) journal cross-citations with the published MLE;
# the sources are named in the file's "about".
CITATIONS = Path(__file__).resolve().parent / "data" / "citations.json"


def _load_citations() -> dict:
    assert CITATIONS.is_file(), f"reference data missing: {CITATIONS} (shipped with the tests)"
    return json.loads(CITATIONS.read_text())


def _random_outcomes(
    rng: np.random.Generator, *, n_items: int, n_judgments: int, tie_rate: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    true_scores = rng.normal(size=n_items)
    first = rng.integers(0, n_items, n_judgments)
    second = (first + rng.integers(1, n_items, n_judgments)) % n_items  # never == first
    wins = rng.random(n_judgments) < 1.0 / (1.0 + np.exp(true_scores[second] - true_scores[first]))
    outcome = wins.astype(np.float64)
    outcome[rng.random(n_judgments) < tie_rate] = 0.5
    return first, second, outcome


# --- reference results ---------------------------------------------------------------


def test_journal_citations_match_published_mle() -> None:
    ref = _load_citations()
    comparisons = bt.comparisons_from_matrix(ref["wins"])
    result = bt.fit(comparisons=comparisons, l2=0.0)

    assert result.converged
    assert abs(result.scores.mean()) < 1e-12  # l2=0 answers are centred
    relative = result.scores - result.scores[ref["journals"].index("Biometrika")]
    expected = np.array([ref["log_ability_vs_biometrika"][name] for name in ref["journals"]])
    np.testing.assert_allclose(relative, expected, rtol=0, atol=1e-6)


def test_journal_citations_standard_errors() -> None:
    ref = _load_citations()
    comparisons = bt.comparisons_from_matrix(ref["wins"])
    scores = bt.fit(comparisons=comparisons, l2=0.0).scores

    # Fisher information = Laplacian weighted by n p (1 - p); anchoring Biometrika (item 0)
    # at 0 means inverting the block of the other items.
    n = comparisons.n_items
    p = 1.0 / (1.0 + np.exp(-(scores[comparisons.i] - scores[comparisons.j])))
    weight = comparisons.total * p * (1.0 - p)
    laplacian = np.zeros((n, n))
    np.add.at(laplacian, (comparisons.i, comparisons.j), -weight)
    np.add.at(laplacian, (comparisons.j, comparisons.i), -weight)
    laplacian[np.diag_indices(n)] = -laplacian.sum(axis=1)
    standard_errors = np.sqrt(np.diag(np.linalg.inv(laplacian[1:, 1:])))

    expected = np.array([ref["standard_error"][name] for name in ref["journals"][1:]])
    np.testing.assert_allclose(standard_errors, expected, rtol=0, atol=1e-3)


# --- agreement with choix -------------------------------------------------------------
#
# choix.opt.PairwiseFcts.objective minimises  alpha * ||theta||^2 + sum -log sigma(win - lose)
# over a list of (winner, loser) pairs, each counting once. We maximise
# sum [w log sigma + (n - w) log sigma(-)] - l2/2 * ||s||^2, so
#   * the penalties agree when l2 = 2 * alpha (choix's prior variance is 1 / (2 alpha),
#     although its docstring says 1 / alpha);
#   * choix has no ties, so a tie is given to it as one win each way:
#     log sigma(d) + log sigma(-d). Our tie (outcome 0.5) adds half of that per unit
#     weight, so ties get weight 2 here and the two objectives are identical.


def _choix_and_ours(seed: int) -> tuple[list[tuple[int, int]], bt.Comparisons, int]:
    rng = np.random.default_rng(seed)
    n_items = 30
    first, second, outcome = _random_outcomes(rng, n_items=n_items, n_judgments=400, tie_rate=0.15)
    choix_data: list[tuple[int, int]] = []
    for a, b, o in zip(first.tolist(), second.tolist(), outcome.tolist(), strict=True):
        if o == 1.0:
            choix_data.append((a, b))
        elif o == 0.0:
            choix_data.append((b, a))
        else:
            choix_data.extend([(a, b), (b, a)])
    weight = np.where(outcome == 0.5, 2.0, 1.0)
    ours = bt.comparisons_from_outcomes(
        n_items=n_items, first=first, second=second, outcome=outcome, weight=weight
    )
    return choix_data, ours, n_items


@pytest.mark.parametrize("alpha", [0.05, 0.5])
def test_objective_equals_choix_objective(alpha: float) -> None:
    choix_data, ours, n_items = _choix_and_ours(seed=1)
    assert len(choix_data) > 400  # ties were present: each became two choix rows
    scores = np.random.default_rng(2).normal(size=n_items)
    theirs = PairwiseFcts(choix_data, alpha).objective(scores)
    mine = bt.log_likelihood(scores=scores, comparisons=ours, l2=2 * alpha)
    assert mine == pytest.approx(-theirs, rel=1e-12)


@pytest.mark.parametrize("alpha", [0.05, 0.5])
def test_fit_matches_choix_opt_pairwise(alpha: float) -> None:
    choix_data, ours, n_items = _choix_and_ours(seed=0)
    expected = choix.opt_pairwise(n_items, choix_data, alpha=alpha, method="BFGS", tol=1e-10)
    result = bt.fit(comparisons=ours, l2=2 * alpha)
    assert result.converged
    np.testing.assert_allclose(result.scores, expected, rtol=0, atol=1e-4)


# --- derivatives ------------------------------------------------------------------------


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_gradient_matches_finite_differences(l2: float) -> None:
    rng = np.random.default_rng(3)
    first, second, outcome = _random_outcomes(rng, n_items=12, n_judgments=80, tie_rate=0.2)
    comparisons = bt.comparisons_from_outcomes(
        n_items=12, first=first, second=second, outcome=outcome, weight=rng.uniform(0.5, 2, 80)
    )
    scores = rng.normal(size=12)
    analytic = bt.gradient(scores=scores, comparisons=comparisons, l2=l2)
    h = 1e-6
    numeric = np.array(
        [
            (
                bt.log_likelihood(scores=scores + h * e, comparisons=comparisons, l2=l2)
                - bt.log_likelihood(scores=scores - h * e, comparisons=comparisons, l2=l2)
            )
            / (2 * h)
            for e in np.eye(12)
        ]
    )
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6)


def test_gradient_vanishes_at_fit() -> None:
    rng = np.random.default_rng(4)
    first, second, outcome = _random_outcomes(rng, n_items=40, n_judgments=600, tie_rate=0.1)
    comparisons = bt.comparisons_from_outcomes(
        n_items=40, first=first, second=second, outcome=outcome
    )
    result = bt.fit(comparisons=comparisons, l2=0.5)
    assert result.converged
    assert np.max(np.abs(bt.gradient(scores=result.scores, comparisons=comparisons, l2=0.5))) < 1e-8
    assert result.log_likelihood == pytest.approx(
        bt.log_likelihood(scores=result.scores, comparisons=comparisons, l2=0.5)
    )


# --- edge cases -----------------------------------------------------------------------


@pytest.mark.parametrize("n_items", [0, 1, 5])
@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_no_comparisons_gives_zero_scores(n_items: int, l2: float) -> None:
    empty = np.zeros(0, dtype=np.int64)
    comparisons = bt.comparisons_from_outcomes(
        n_items=n_items, first=empty, second=empty, outcome=np.zeros(0)
    )
    assert comparisons.n_pairs == 0
    result = bt.fit(comparisons=comparisons, l2=l2)
    assert result.converged
    assert result.iterations == 0
    assert result.scores.shape == (n_items,)
    assert np.all(result.scores == 0.0)


def test_single_pair_has_closed_form() -> None:
    # 3 wins out of 4, l2 = 0: s0 - s1 = logit(3/4), centred.
    comparisons = bt.comparisons_from_outcomes(
        n_items=2, first=[0, 0, 0, 1], second=[1, 1, 1, 0], outcome=[1.0, 1.0, 0.0, 0.0]
    )
    assert comparisons.i.tolist() == [0] and comparisons.j.tolist() == [1]
    assert comparisons.wins_i.tolist() == [3.0] and comparisons.total.tolist() == [4.0]
    result = bt.fit(comparisons=comparisons, l2=0.0)
    assert result.converged
    np.testing.assert_allclose(result.scores, [np.log(3) / 2, -np.log(3) / 2], atol=1e-12)
    prob = bt.pair_probability(scores=result.scores, i=np.array([0, 1]), j=np.array([1, 0]))
    np.testing.assert_allclose(prob, [0.75, 0.25], atol=1e-12)


def test_disconnected_graph_with_prior_fits_each_component() -> None:
    # Items 0,1 and 2,3 are never compared across; 4 never at all.
    first = [0, 0, 1, 2, 2, 3]
    second = [1, 1, 0, 3, 3, 2]
    outcome = [1.0, 1.0, 1.0, 1.0, 0.5, 0.0]
    comparisons = bt.comparisons_from_outcomes(
        n_items=5, first=first, second=second, outcome=outcome
    )
    result = bt.fit(comparisons=comparisons, l2=1.0)
    assert result.converged
    s = result.scores
    # The prior is symmetric, so each isolated pair centres on 0 and the unseen item stays 0.
    assert s[0] > 0 > s[1] and s[2] > 0 > s[3]
    assert s[0] + s[1] == pytest.approx(0.0, abs=1e-12)
    assert s[2] + s[3] == pytest.approx(0.0, abs=1e-12)
    assert s[4] == 0.0
    # Each component is the same problem fitted on its own.
    alone = bt.fit(
        comparisons=bt.comparisons_from_outcomes(
            n_items=2, first=[0, 0, 1], second=[1, 1, 0], outcome=[1.0, 1.0, 1.0]
        ),
        l2=1.0,
    )
    np.testing.assert_allclose(s[:2], alone.scores, atol=1e-12)


def test_l2_zero_disconnected_raises() -> None:
    comparisons = bt.comparisons_from_outcomes(
        n_items=4, first=[0, 1, 2, 3], second=[1, 0, 3, 2], outcome=[1.0, 1.0, 1.0, 1.0]
    )
    with pytest.raises(ValueError, match="connected"):
        bt.fit(comparisons=comparisons, l2=0.0)


def test_l2_zero_unbeaten_item_raises() -> None:
    comparisons = bt.comparisons_from_outcomes(
        n_items=3, first=[0, 0, 1, 2], second=[1, 2, 2, 1], outcome=[1.0, 1.0, 1.0, 1.0]
    )
    with pytest.raises(ValueError, match="item 0 won every comparison"):
        bt.fit(comparisons=comparisons, l2=0.0)
    # The same data is fine with a prior.
    assert bt.fit(comparisons=comparisons, l2=0.1).converged


def test_l2_zero_not_strongly_connected_raises() -> None:
    # Every item wins and loses something, but {0, 1} beat {2, 3} in every cross comparison.
    comparisons = bt.comparisons_from_outcomes(
        n_items=4,
        first=[0, 1, 2, 3, 1],
        second=[1, 0, 3, 2, 2],
        outcome=[1.0, 1.0, 1.0, 1.0, 1.0],
    )
    with pytest.raises(ValueError, match="strongly connected"):
        bt.fit(comparisons=comparisons, l2=0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"first": [0, 1], "second": [0, 2], "outcome": [1.0, 1.0]}, "first == second"),
        ({"first": [0, 3], "second": [1, 2], "outcome": [1.0, 1.0]}, "out of range"),
        ({"first": [0, -1], "second": [1, 2], "outcome": [1.0, 1.0]}, "out of range"),
        (
            {"first": [0, 1], "second": [1, 2], "outcome": [1.5, 1.0]},
            r"outcome must lie in \[0, 1\]",
        ),
        ({"first": [0, 1], "second": [1, 2], "outcome": [np.nan, 1.0]}, "outcome"),
        ({"first": [0, 1], "second": [1, 2], "outcome": [1.0]}, "same length"),
        ({"first": [0.5, 1], "second": [1, 2], "outcome": [1.0, 1.0]}, "integer"),
        (
            {"first": [0, 1], "second": [1, 2], "outcome": [1.0, 1.0], "weight": [1.0, -1.0]},
            "weight",
        ),
    ],
)
def test_invalid_input_is_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bt.comparisons_from_outcomes(n_items=3, **kwargs)


def test_invalid_matrix_and_l2_are_rejected() -> None:
    with pytest.raises(ValueError, match="square"):
        bt.comparisons_from_matrix([[0, 1, 2]])
    with pytest.raises(ValueError, match="diagonal"):
        bt.comparisons_from_matrix([[1, 0], [0, 0]])
    with pytest.raises(ValueError, match="non-negative"):
        bt.comparisons_from_matrix([[0, -1], [0, 0]])
    with pytest.raises(ValueError, match="l2"):
        bt.fit(comparisons=bt.comparisons_from_matrix([[0, 1], [1, 0]]), l2=-1.0)


def test_swapped_orientation_aggregates_identically() -> None:
    rng = np.random.default_rng(5)
    first, second, outcome = _random_outcomes(rng, n_items=20, n_judgments=300, tie_rate=0.2)
    straight = bt.comparisons_from_outcomes(n_items=20, first=first, second=second, outcome=outcome)
    swapped = bt.comparisons_from_outcomes(
        n_items=20, first=second, second=first, outcome=1.0 - outcome
    )
    for name in ("i", "j", "wins_i", "total"):
        np.testing.assert_array_equal(getattr(straight, name), getattr(swapped, name))
    assert np.all(straight.i < straight.j)
    assert straight.total.sum() == 300
    # Same aggregate as the matrix constructor.
    matrix = np.zeros((20, 20))
    np.add.at(matrix, (first, second), outcome)
    np.add.at(matrix, (second, first), 1.0 - outcome)
    from_matrix = bt.comparisons_from_matrix(matrix)
    np.testing.assert_array_equal(from_matrix.i, straight.i)
    np.testing.assert_allclose(from_matrix.wins_i, straight.wins_i)
    np.testing.assert_allclose(from_matrix.total, straight.total)


@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_ties_only_give_zero_scores(l2: float) -> None:
    comparisons = bt.comparisons_from_outcomes(
        n_items=4, first=[0, 1, 2, 3, 0], second=[1, 2, 3, 0, 2], outcome=[0.5] * 5
    )
    result = bt.fit(comparisons=comparisons, l2=l2)
    assert result.converged
    np.testing.assert_allclose(result.scores, 0.0, atol=1e-14)


def test_ordering_follows_win_rates() -> None:
    # A chain of strengths: each item beats the next one 2 times out of 3.
    first = np.repeat(np.arange(5), 3)
    second = first + 1
    outcome = np.tile([1.0, 1.0, 0.0], 5)
    comparisons = bt.comparisons_from_outcomes(
        n_items=6, first=first, second=second, outcome=outcome
    )
    for l2 in (0.0, 0.1, 10.0):
        scores = bt.fit(comparisons=comparisons, l2=l2).scores
        assert np.all(np.diff(scores) < 0)


# --- scale ----------------------------------------------------------------------------


def test_large_random_problem_converges() -> None:
    rng = np.random.default_rng(6)
    first, second, outcome = _random_outcomes(rng, n_items=5000, n_judgments=50_000, tie_rate=0.1)
    comparisons = bt.comparisons_from_outcomes(
        n_items=5000, first=first, second=second, outcome=outcome
    )
    result = bt.fit(comparisons=comparisons, l2=0.1)
    assert result.converged
    assert np.max(np.abs(bt.gradient(scores=result.scores, comparisons=comparisons, l2=0.1))) < 1e-6


def test_every_size_is_solved_by_cg(monkeypatch) -> None:
    """Small problems too: sparse LU fills a random comparison graph in to a dense matrix."""
    rng = np.random.default_rng(7)
    first, second, outcome = _random_outcomes(rng, n_items=500, n_judgments=10_000)
    comparisons = bt.comparisons_from_outcomes(
        n_items=500, first=first, second=second, outcome=outcome
    )
    solves = []
    real_cg = bt.spla.cg

    def counting_cg(*args, **kwargs):
        solves.append(args[0].shape)
        return real_cg(*args, **kwargs)

    monkeypatch.setattr(bt.spla, "cg", counting_cg)
    monkeypatch.delattr(bt.spla, "spsolve")  # a direct solve would fail loudly
    monkeypatch.delattr(bt.spla, "splu")
    result = bt.fit(comparisons=comparisons, l2=1.0)
    assert result.converged and solves == [(500, 500)] * result.iterations


# --- the stable gradient ------------------------------------------------------------------


@pytest.mark.parametrize("l2", [1e-6, 1e-9])
def test_a_lopsided_pair_under_a_weak_prior_converges(l2: float) -> None:
    # Item 0 wins all 100 comparisons: s0 = -s1 = x with 100 sigma(-2x) = l2 x, x ~ 8-11.
    # In the form `w - n sigma(d)` the gradient is rounding noise at that distance.
    comparisons = bt.comparisons_from_outcomes(
        n_items=2, first=[0] * 100, second=[1] * 100, outcome=[1.0] * 100
    )
    result = bt.fit(comparisons=comparisons, l2=l2)
    assert result.converged
    x = result.scores[0]
    assert result.scores[1] == pytest.approx(-x, rel=1e-12)
    assert 100 / (1 + np.exp(2 * x)) == pytest.approx(l2 * x, rel=1e-9)


def test_the_gradient_keeps_its_precision_far_in_the_tails() -> None:
    comparisons = bt.comparisons_from_outcomes(
        n_items=2, first=[0, 0], second=[1, 1], outcome=[1.0, 1.0]
    )
    scores = np.array([20.0, -20.0])  # sigma(40) rounds to 1; sigma(-40) ~ 4.2e-18
    grad = bt.gradient(scores=scores, comparisons=comparisons, l2=0.0)
    expected = 2 / (1 + np.exp(40.0))
    np.testing.assert_allclose(grad, [expected, -expected], rtol=1e-12)


# --- the prior's strength, chosen from the data ---------------------------------------------


def _noisy(n_items: int, n_judgments: int, seed: int) -> tuple[bt.Comparisons, bt.Comparisons]:
    """Train and held-out comparisons built as bench/bt_fit.py builds them (a quarter of
    the annotators flip 30% of their answers)."""
    from bench.bt_fit import synthetic

    data = synthetic(n_items=n_items, n_comparisons=n_judgments, seed=seed)
    split = [~data["held_out"], data["held_out"]]
    train, test = (
        bt.comparisons_from_outcomes(
            n_items=n_items,
            first=data["first"][rows],
            second=data["second"][rows],
            outcome=data["outcome"][rows],
        )
        for rows in split
    )
    return train, test


@pytest.mark.parametrize(("n_items", "seed"), [(500, 11), (3000, 12)])
def test_the_chosen_prior_predicts_held_out_judgments_better(n_items: int, seed: int) -> None:
    train, test = _noisy(n_items, 20 * n_items // 2 * 10 // 9, seed)  # ~20 per item
    chosen = bt.fit(comparisons=train)
    weak = bt.fit(comparisons=train, l2=0.1)
    assert chosen.converged and chosen.l2_from_data and 0.5 < chosen.l2 < 5
    held_out = bt.mean_log_likelihood(scores=chosen.scores, comparisons=test)
    assert held_out > bt.mean_log_likelihood(scores=weak.scores, comparisons=test) + 0.005
    win_rate = bt.win_rate_scores(comparisons=train)
    assert held_out > bt.mean_log_likelihood(scores=win_rate, comparisons=test)


def test_the_chosen_prior_is_near_the_laplace_evidence_maximum() -> None:
    train, _ = _noisy(300, 6000, 2)
    n = train.n_items

    def evidence(l2: float) -> float:
        scores = bt.fit(comparisons=train, l2=l2).scores
        p = 1 / (1 + np.exp(scores[train.j] - scores[train.i]))
        weight = train.total * p * (1 - p)
        hessian = np.zeros((n, n))
        np.add.at(hessian, (train.i, train.j), -weight)
        np.add.at(hessian, (train.j, train.i), -weight)
        hessian[np.diag_indices(n)] = -hessian.sum(axis=1) + l2
        value = bt.log_likelihood(scores=scores, comparisons=train, l2=l2)
        return value + n / 2 * np.log(l2) - 0.5 * np.linalg.slogdet(hessian)[1]

    grid = np.exp(np.linspace(np.log(0.1), np.log(20), 40))
    best = grid[int(np.argmax([evidence(l2) for l2 in grid]))]
    chosen = bt.fit(comparisons=train).l2
    # MacKay's fixed point holds the likelihood's curvature fixed as l2 moves, so it lands
    # a little above the exact maximum of the Laplace evidence.
    assert best <= chosen < 1.4 * best


def test_the_trace_estimate_chooses_what_the_exact_trace_chooses(monkeypatch) -> None:
    train, _ = _noisy(2000, 40_000, 13)
    estimated = bt.fit(comparisons=train)
    monkeypatch.setattr(bt, "_EXACT_TRACE_MAX_ITEMS", 10_000)
    exact = bt.fit(comparisons=train)
    assert estimated.l2 == pytest.approx(exact.l2, rel=0.02)


def test_a_given_l2_is_used_as_given_and_the_choice_is_repeatable() -> None:
    train, _ = _noisy(500, 10_000, 14)
    given = bt.fit(comparisons=train, l2=0.7)
    assert given.l2 == 0.7 and not given.l2_from_data
    first, second = bt.fit(comparisons=train), bt.fit(comparisons=train)
    assert first.l2_from_data and first.l2 == second.l2
    np.testing.assert_array_equal(first.scores, second.scores)  # a rerun rewrites nothing


def test_without_any_signal_the_strongest_prior_is_chosen() -> None:
    comparisons = bt.comparisons_from_outcomes(
        n_items=4, first=[0, 1, 2, 3, 0], second=[1, 2, 3, 0, 2], outcome=[0.5] * 5
    )
    result = bt.fit(comparisons=comparisons)
    assert result.converged and result.l2 == bt._L2_BOUNDS[1]
    np.testing.assert_allclose(result.scores, 0.0, atol=1e-14)

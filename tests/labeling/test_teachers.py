"""Tests for labeling.teachers: pure maths, no database."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit

from labeling import teachers as tc
from labeling.teachers import FIRST, SECOND, SKIP, TIE, Teacher

# Frequencies are checked to within this many binomial standard deviations. The draws are
# seeded, so a pass is deterministic; the width only says how lucky the seed may be.
Z = 4.5


def _within_binomial(count: int, n: int, p: float) -> bool:
    return abs(count / n - p) <= Z * math.sqrt(p * (1.0 - p) / n) + 1e-12


def _columns(*values: float) -> np.ndarray:
    """One-step segments: a (len(values), 1) reward array."""
    return np.asarray(values, dtype=np.float64)[:, None]


# --- rational --------------------------------------------------------------------------------


def test_rational_always_picks_the_higher_return() -> None:
    rng = np.random.default_rng(1)
    rewards_1 = rng.normal(size=(2000, 25))
    rewards_2 = rng.normal(size=(2000, 25))
    answers = tc.answer(Teacher.rational(), rewards_1, rewards_2, Teacher().rng())

    higher_first = rewards_1.sum(axis=1) > rewards_2.sum(axis=1)
    np.testing.assert_array_equal(answers.choice, np.where(higher_first, FIRST, SECOND))
    np.testing.assert_array_equal(answers.p_first, higher_first.astype(float))
    assert not answers.mistaken.any()
    assert Teacher.oracle() == Teacher.rational() == Teacher()


def test_rational_with_equal_returns_flips_a_fair_coin() -> None:
    n = 20_000
    answers = tc.answer(Teacher.rational(), np.ones((n, 3)), np.ones((n, 3)))
    assert np.all(answers.p_first == 0.5)
    assert _within_binomial(int(np.sum(answers.choice == FIRST)), n, 0.5)


# --- stochastic ------------------------------------------------------------------------------


def test_beta_zero_is_a_fair_coin() -> None:
    n = 20_000
    rng = np.random.default_rng(2)
    rewards_1 = rng.normal(loc=3.0, size=(n, 10))  # segment 1 is much better...
    rewards_2 = rng.normal(loc=0.0, size=(n, 10))
    answers = tc.answer(Teacher.stochastic(beta=0.0), rewards_1, rewards_2, Teacher().rng())

    assert np.all(answers.p_first == 0.5)  # ...and it makes no difference
    assert _within_binomial(int(np.sum(answers.choice == FIRST)), n, 0.5)
    assert set(np.unique(answers.choice)) == {FIRST, SECOND}


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_stochastic_frequency_matches_bradley_terry(beta: float) -> None:
    n = 20_000
    deltas = [-3.0, -0.5, 0.4, 1.0, 2.5]
    rng = Teacher(seed=3).rng()
    for delta in deltas:
        answers = tc.answer(
            Teacher.stochastic(beta=beta), _columns(*[delta] * n), _columns(*[0.0] * n), rng
        )
        p = float(expit(beta * delta))
        np.testing.assert_allclose(answers.p_first, p)
        assert _within_binomial(int(np.sum(answers.choice == FIRST)), n, p), (beta, delta)


def test_stochastic_preset_is_b_pref_beta_one() -> None:
    assert Teacher.stochastic() == Teacher(beta=1.0)


# --- myopic ----------------------------------------------------------------------------------


def test_myopic_weighting_changes_the_answer() -> None:
    # Segment 1 earns everything at its first step, segment 2 at its last. Undiscounted,
    # 10 > 5; myopic with gamma = 0.9 over 10 steps, 10 * 0.9^9 = 3.87 < 5.
    early = np.zeros((1, 10))
    early[0, 0] = 10.0
    late = np.zeros((1, 10))
    late[0, -1] = 5.0

    assert tc.answer(Teacher.rational(), early, late).choice[0] == FIRST
    myopic = tc.answer(Teacher.myopic(), early, late)
    assert myopic.choice[0] == SECOND
    assert Teacher.myopic().gamma == 0.9
    np.testing.assert_allclose(myopic.myopic_returns_1, [10.0 * 0.9**9])
    np.testing.assert_allclose(myopic.myopic_returns_2, [5.0])
    np.testing.assert_allclose(myopic.returns_1, [10.0])  # plain returns kept beside


def test_myopic_weights_each_ragged_segment_from_its_own_last_step() -> None:
    rewards = [np.array([1.0, 2.0]), np.array([4.0, 0.0, 0.0, 1.0]), [3.0]]
    plain, myopic = tc.segment_returns(rewards, gamma=0.5)
    np.testing.assert_allclose(plain, [3.0, 5.0, 3.0])
    np.testing.assert_allclose(myopic, [0.5 * 1 + 2, 0.125 * 4 + 1, 3.0])


def test_ragged_and_array_batches_agree() -> None:
    rng = np.random.default_rng(4)
    rewards_1 = rng.normal(size=(50, 8))
    rewards_2 = rng.normal(size=(50, 8))
    teacher = Teacher(beta=2.0, gamma=0.8, seed=5)
    as_arrays = tc.answer(teacher, rewards_1, rewards_2)
    as_lists = tc.answer(teacher, list(rewards_1), [row.tolist() for row in rewards_2])
    np.testing.assert_array_equal(as_arrays.choice, as_lists.choice)
    np.testing.assert_allclose(as_arrays.p_first, as_lists.p_first)


# --- mistake ---------------------------------------------------------------------------------


def test_mistake_flips_about_epsilon_of_answers() -> None:
    n = 20_000
    rng = np.random.default_rng(6)
    rewards_1 = rng.normal(size=(n, 5))
    rewards_2 = rng.normal(size=(n, 5))
    teacher = Teacher.mistake()
    answers = tc.answer(teacher, rewards_1, rewards_2, teacher.rng())

    rational = np.where(rewards_1.sum(axis=1) > rewards_2.sum(axis=1), FIRST, SECOND)
    wrong = answers.choice != rational
    assert teacher.epsilon == 0.1
    np.testing.assert_array_equal(wrong, answers.mistaken)
    assert _within_binomial(int(wrong.sum()), n, 0.1)
    np.testing.assert_allclose(answers.p_answer_first, np.where(rational == FIRST, 0.9, 0.1))


# --- equal and skip --------------------------------------------------------------------------


def test_equal_gives_ties_under_the_threshold() -> None:
    teacher = Teacher.equal(mean_segment_return=10.0)  # threshold 0.1 * 10 = 1
    assert teacher.equal_below == pytest.approx(1.0)
    answers = tc.answer(
        teacher, _columns(5.0, 5.0, 5.0, 5.0, 2.0), _columns(5.0, 5.5, 4.01, 7.0, 5.0)
    )
    np.testing.assert_array_equal(answers.choice, [TIE, TIE, TIE, SECOND, SECOND])
    assert answers.names() == ["tie", "tie", "tie", "second", "second"]


def test_ties_are_never_flipped_by_mistakes() -> None:
    n = 5000
    teacher = Teacher(epsilon=0.5, equal_below=1.0)
    answers = tc.answer(teacher, _columns(*[1.0] * n), _columns(*[1.5] * n))
    assert np.all(answers.choice == TIE)
    assert not answers.mistaken.any()


def test_equal_uses_plain_returns_not_myopic_ones() -> None:
    # Plain returns differ by 0.5 (a tie under 1); myopic ones by far more.
    teacher = Teacher(gamma=0.1, equal_below=1.0)
    answers = tc.answer(teacher, np.array([[10.0, 0.0]]), np.array([[0.0, 9.5]]))
    assert answers.choice[0] == TIE


def test_skip_skips_when_both_returns_are_low() -> None:
    teacher = Teacher.skip(mean_segment_return=50.0)  # threshold 0.1 * 50 = 5
    assert teacher.skip_below == pytest.approx(5.0)
    answers = tc.answer(teacher, _columns(1.0, 1.0, 6.0, -3.0), _columns(2.0, 6.0, 1.0, 4.9))
    np.testing.assert_array_equal(answers.choice, [SKIP, SECOND, FIRST, SKIP])


def test_skip_wins_over_tie() -> None:
    teacher = Teacher(skip_below=5.0, equal_below=1.0, epsilon=0.5)
    answers = tc.answer(teacher, _columns(1.0, 10.0), _columns(1.2, 10.2))
    np.testing.assert_array_equal(answers.choice, [SKIP, TIE])
    assert not answers.mistaken.any()


def test_defaults_never_skip_or_tie() -> None:
    answers = tc.answer(Teacher(), _columns(-1e9, 0.0), _columns(-1e9 - 1, 1e-12))
    np.testing.assert_array_equal(answers.choice, [FIRST, SECOND])


# --- seeds -----------------------------------------------------------------------------------


def test_same_seed_same_answers() -> None:
    rng = np.random.default_rng(7)
    rewards_1 = rng.normal(size=(500, 6))
    rewards_2 = rng.normal(size=(500, 6))
    teacher = Teacher(beta=1.0, epsilon=0.2, seed=11)
    first = tc.answer(teacher, rewards_1, rewards_2, teacher.rng(annotator=3))
    again = tc.answer(teacher, rewards_1, rewards_2, teacher.rng(annotator=3))
    without_rng = tc.answer(teacher, rewards_1, rewards_2)
    also_without = tc.answer(teacher, rewards_1, rewards_2)

    np.testing.assert_array_equal(first.choice, again.choice)
    np.testing.assert_array_equal(without_rng.choice, also_without.choice)
    other_seed = tc.answer(Teacher(beta=1.0, epsilon=0.2, seed=12), rewards_1, rewards_2)
    assert np.any(other_seed.choice != without_rng.choice)


def test_annotators_get_separate_spawned_streams() -> None:
    teacher = Teacher(beta=0.0, seed=2021)
    children = np.random.SeedSequence(2021).spawn(4)
    for k, child in enumerate(children):
        expected = np.random.default_rng(child).random(8)
        np.testing.assert_array_equal(teacher.rng(annotator=k).random(8), expected)

    n = 1000
    answers = [
        tc.answer(teacher, np.zeros((n, 1)), np.zeros((n, 1)), teacher.rng(annotator=k)).choice
        for k in range(3)
    ]
    assert np.any(answers[0] != answers[1]) and np.any(answers[1] != answers[2])


def test_each_query_draws_the_same_uniforms_whatever_the_settings() -> None:
    # Same stream, teachers differing only in a threshold: the queries neither of them
    # ties are answered identically.
    rng = np.random.default_rng(8)
    rewards_1 = rng.normal(size=(400, 4))
    rewards_2 = rng.normal(size=(400, 4))
    plain = tc.answer(Teacher(beta=1.0, seed=9), rewards_1, rewards_2)
    with_ties = tc.answer(Teacher(beta=1.0, equal_below=0.5, seed=9), rewards_1, rewards_2)
    untied = with_ties.choice != TIE
    assert 0 < untied.sum() < 400
    np.testing.assert_array_equal(plain.choice[untied], with_ties.choice[untied])


# --- the Bayes ceiling -----------------------------------------------------------------------


def test_bayes_ceiling_hand_computed() -> None:
    assert tc.bayes_ceiling(1.0, [0.0, 2.0], [0.0, 2.0]) == 0.5  # Delta = 0
    assert tc.bayes_ceiling(0.0, [5.0], [-5.0]) == 0.5  # beta = 0
    assert tc.bayes_ceiling(math.inf, [1.0, -2.0, 1e-9], [0.0, 3.0, 0.0]) == 1.0
    # sigma(log 3) = 3/4, in either orientation
    assert tc.bayes_ceiling(1.0, [math.log(3.0), 0.0], [0.0, math.log(3.0)]) == pytest.approx(0.75)
    assert tc.bayes_ceiling(2.0, [math.log(3.0) / 2, 7.0], [0.0, 7.0]) == pytest.approx(0.625)
    # A rational teacher that errs 10% of the time: 0.9.
    assert tc.bayes_ceiling(math.inf, [1.0], [0.0], epsilon=0.1) == pytest.approx(0.9)


def test_bayes_ceiling_is_the_accuracy_of_the_likelier_answer() -> None:
    n = 40_000
    rng = np.random.default_rng(10)
    returns_1 = rng.normal(scale=2.0, size=n)
    returns_2 = rng.normal(scale=2.0, size=n)
    answers = tc.answer_from_scores(Teacher.stochastic(), returns_1, returns_2, rng)
    best_guess = np.where(returns_1 >= returns_2, FIRST, SECOND)
    accuracy = float(np.mean(answers.choice == best_guess))
    ceiling = tc.bayes_ceiling(1.0, returns_1, returns_2)
    assert abs(accuracy - ceiling) < Z * math.sqrt(0.25 / n)


# --- text campaigns --------------------------------------------------------------------------


def test_answer_from_metadata_uses_reference_scores() -> None:
    metadata_1 = [{"reference_score": 0.9}, {"reference_score": -1}, {"reference_score": 2.0}]
    metadata_2 = [
        {"reference_score": 0.1, "other": "x"},
        {"reference_score": 3},
        {"reference_score": 2.05},
    ]
    answers = tc.answer_from_metadata(
        Teacher.equal(mean_segment_return=1.0), metadata_1, metadata_2
    )
    np.testing.assert_array_equal(answers.choice, [FIRST, SECOND, TIE])
    np.testing.assert_allclose(answers.returns_2, [0.1, 3.0, 2.05])


def test_myopia_has_no_effect_on_scores() -> None:
    answers = tc.answer_from_scores(Teacher.myopic(), [2.0, 1.0], [1.0, 2.0])
    np.testing.assert_array_equal(answers.choice, [FIRST, SECOND])


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([{"reference_score": 1.0}, {}], r"metadata_1\[1\] has no 'reference_score'"),
        ([{"reference_score": "high"}], r"metadata_1\[0\]\['reference_score'\] must be a number"),
        ([{"reference_score": True}], r"metadata_1\[0\]\['reference_score'\] must be a number"),
        ([{"reference_score": float("nan")}], r"must be finite"),
    ],
)
def test_reference_scores_name_the_bad_item(
    metadata: list[dict[str, object]], message: str
) -> None:
    others = [{"reference_score": 0.0}] * len(metadata)
    with pytest.raises(ValueError, match=message):
        tc.answer_from_metadata(Teacher(), metadata, others)


# --- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "argument"),
    [
        ({"beta": -1.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.1}, "gamma"),
        ({"gamma": -0.5}, "gamma"),
        ({"epsilon": 1.0}, "epsilon"),
        ({"epsilon": -0.1}, "epsilon"),
        ({"equal_below": -1.0}, "equal_below"),
        ({"skip_below": float("nan")}, "skip_below"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_settings_raise_naming_the_argument(config: dict[str, float], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        Teacher(**config)  # type: ignore[arg-type]


def test_presets_validate_too() -> None:
    with pytest.raises(ValueError, match="beta"):
        Teacher.stochastic(beta=-0.5)
    with pytest.raises(ValueError, match="gamma"):
        Teacher.myopic(gamma=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        Teacher.mistake(epsilon=1.0)
    with pytest.raises(ValueError, match="fraction"):
        Teacher.equal(mean_segment_return=1.0, fraction=-0.1)
    assert set(tc.PRESETS) == {
        "rational",
        "oracle",
        "stochastic",
        "myopic",
        "mistake",
        "skip",
        "equal",
    }


def test_mismatched_batches_raise() -> None:
    with pytest.raises(ValueError, match="rewards_1 and rewards_2"):
        tc.answer(Teacher(), np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="scores_1 and scores_2"):
        tc.answer_from_scores(Teacher(), [1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="returns_1 and returns_2"):
        tc.bayes_ceiling(1.0, [1.0, 2.0], [1.0])


def test_bad_segments_raise_naming_the_argument() -> None:
    with pytest.raises(ValueError, match=r"rewards_2\[1\] is an empty segment"):
        tc.answer(Teacher(), [[1.0], [2.0]], [[1.0], []])
    with pytest.raises(ValueError, match=r"rewards_1\[0\] holds a reward that is not finite"):
        tc.answer(Teacher(), np.array([[np.nan, 1.0]]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="rewards_1 must be a 2-D array"):
        tc.answer(Teacher(), np.zeros(3), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="rng"):
        tc.answer(Teacher(), np.zeros((1, 1)), np.zeros((1, 1)), 42)  # type: ignore[arg-type]


def test_bayes_ceiling_bad_inputs() -> None:
    with pytest.raises(ValueError, match="beta"):
        tc.bayes_ceiling(-1.0, [1.0], [0.0])
    with pytest.raises(ValueError, match="epsilon"):
        tc.bayes_ceiling(1.0, [1.0], [0.0], epsilon=1.0)
    with pytest.raises(ValueError, match="no pairs"):
        tc.bayes_ceiling(1.0, [], [])

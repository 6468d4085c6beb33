"""Scripted teachers: simulated annotators that answer preference queries from true rewards.

Model (Lee, Smith, Dragan & Abbeel 2021, "B-Pref: Benchmarking Preference-Based
Reinforcement Learning", NeurIPS Datasets and Benchmarks Track). A query shows two
segments, segment k being the rewards r^k_0 .. r^k_{H_k - 1} of H_k consecutive steps. The
teacher works with two returns per segment,

    R^k       = sum_t r^k_t                                  (the plain return)
    R^k_gamma = sum_t gamma^(H_k - 1 - t) r^k_t,  0 < gamma <= 1   (the myopic return)

so a myopic teacher (gamma < 1) weighs the last step fully and forgets earlier ones
geometrically, and prefers segment 1 with B-Pref's Bradley-Terry probability

    P(segment 1 preferred) = sigma(beta * (R^1_gamma - R^2_gamma)),   sigma(x) = 1/(1 + e^-x).

beta is the rationality: beta = inf answers the higher myopic return every time, beta = 0
is a fair coin. On top of that preference, in this order of precedence:

    skip     max(R^1, R^2) < skip_below        neither segment shows the wanted behaviour:
                                               the query is skipped, no label
    tie      |R^1 - R^2| < equal_below         the segments are equally good: "tie"
    mistake  with probability epsilon          the drawn preference is flipped

Skip and tie are decided on the plain returns R, the preference on the myopic ones, as B-Pref
defines them; a skipped or tied query is never "mistaken". B-Pref's six teachers are the
presets on :class:`Teacher`:

    rational / oracle   beta = inf, gamma = 1, epsilon = 0, no skip, no tie
    stochastic          beta = 1 ("Stoc"; any beta may be given)
    myopic              beta = inf, gamma = 0.9
    mistake             beta = inf, epsilon = 0.1
    skip                beta = inf, skip_below  = 0.1 * mean segment return
    equal               beta = inf, equal_below = 0.1 * |mean segment return|

B-Pref sets both thresholds relative to the average return of a segment under the current
policy (the mean episode return times H / episode length), because a fixed number would mean
"nothing" in one environment and "everything" in another; the presets take that average.

An exact tie of myopic returns gives P = 1/2 at every beta, beta = inf included: a rational
teacher with nothing to choose between flips a coin rather than favouring a side.

Best reachable accuracy. A model that knew the teacher's returns exactly would still
mislabel a stochastic teacher's answers whenever the teacher picked its less likely option,
so on held-out labels no model beats

    ceiling = mean over pairs of max(p, 1 - p),   p = sigma(beta * Delta),  Delta = R^1_gamma - R^2_gamma

(:func:`bayes_ceiling`): 1 for a rational teacher, 1/2 for beta = 0 or for equal returns.

Randomness. Every call of :func:`answer` draws exactly two uniforms per query (one for the
preference, one for the mistake) from the generator it is given, whatever the teacher's
settings. Teachers that differ only in their thresholds, fed the same stream, therefore give
the same answer to every query neither skips nor ties, and a larger epsilon only adds flips
to a smaller one's: comparisons between teachers are not blurred by resampling. Each simulated annotator gets its own stream, ``Teacher.rng(annotator=k)``,
which is child k of ``numpy.random.SeedSequence(seed).spawn(...)``: streams of different
annotators are independent, and the same seed replays the same answers.

Text campaigns have no rewards; an item's ``metadata["reference_score"]`` (e.g. a reward
model's score of a response) stands in for a segment's return, as a one-step segment, so
gamma has no effect there (:func:`answer_from_metadata`).

Pure numpy/scipy; no Django imports, so it can be used from workers, scripts and tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike
from scipy.special import expit

__all__ = [
    "ANSWER_NAMES",
    "FIRST",
    "PRESETS",
    "SECOND",
    "SKIP",
    "TIE",
    "Answers",
    "Teacher",
    "answer",
    "answer_from_metadata",
    "answer_from_scores",
    "bayes_ceiling",
    "preference_probability",
    "reference_scores",
    "segment_returns",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
AnswerArray = npt.NDArray[np.int8]

# The answers, as small ints so that a batch is one int8 array; ANSWER_NAMES[a] names a.
FIRST = 0
SECOND = 1
TIE = 2
SKIP = 3
ANSWER_NAMES: tuple[str, str, str, str] = ("first", "second", "tie", "skip")

# A batch of segments: a 2-D array (queries, steps) when all have the same length, or a
# sequence of 1-D arrays, one per query, of any lengths.
Rewards = ArrayLike | Sequence[ArrayLike]

# B-Pref's settings for its presets, as the paper's experiments and its code release use them.
_STOCHASTIC_BETA = 1.0
_MYOPIC_GAMMA = 0.9
_MISTAKE_EPSILON = 0.1
_THRESHOLD_FRACTION = 0.1


def _real(value: object, *, name: str) -> float:
    # bool is an int to Python, but beta=True is surely a slip.
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{name} must not be NaN")
    return number


@dataclass(frozen=True)
class Teacher:
    """A scripted teacher's settings (module docstring for the model).

    ``beta`` >= 0 (``inf``: rational), ``gamma`` in (0, 1], ``epsilon`` in [0, 1),
    ``skip_below`` any number (``-inf``: never skips), ``equal_below`` >= 0 (0: never ties),
    ``seed`` >= 0 for :meth:`rng`. Invalid settings raise ValueError naming the setting.
    """

    beta: float = math.inf
    gamma: float = 1.0
    epsilon: float = 0.0
    skip_below: float = -math.inf
    equal_below: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        beta = _real(self.beta, name="beta")
        gamma = _real(self.gamma, name="gamma")
        epsilon = _real(self.epsilon, name="epsilon")
        skip_below = _real(self.skip_below, name="skip_below")
        equal_below = _real(self.equal_below, name="equal_below")
        if beta < 0:
            raise ValueError(f"beta must be >= 0 (inf for a rational teacher), got {beta}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must lie in (0, 1], got {gamma}")
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must lie in [0, 1), got {epsilon}")
        if equal_below < 0:
            raise ValueError(f"equal_below must be >= 0, got {equal_below}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "epsilon", epsilon)
        object.__setattr__(self, "skip_below", skip_below)
        object.__setattr__(self, "equal_below", equal_below)
        object.__setattr__(self, "seed", int(self.seed))

    # --- B-Pref's teachers -------------------------------------------------------------

    @classmethod
    def rational(cls, *, seed: int = 0) -> Teacher:
        """B-Pref's "Oracle": always the higher return, P(1) = sigma(inf * (R^1 - R^2))."""
        return cls(seed=seed)

    @classmethod
    def oracle(cls, *, seed: int = 0) -> Teacher:
        """Another name for :meth:`rational`, B-Pref's own."""
        return cls.rational(seed=seed)

    @classmethod
    def stochastic(cls, *, beta: float = _STOCHASTIC_BETA, seed: int = 0) -> Teacher:
        """B-Pref's "Stoc" (beta = 1): P(1) = sigma(beta * (R^1 - R^2)), answers drawn."""
        return cls(beta=beta, seed=seed)

    @classmethod
    def myopic(cls, *, gamma: float = _MYOPIC_GAMMA, seed: int = 0) -> Teacher:
        """B-Pref's "Myopic" (gamma = 0.9): P(1) = sigma(inf * (R^1_gamma - R^2_gamma)),
        later steps weigh more."""
        return cls(gamma=gamma, seed=seed)

    @classmethod
    def mistake(cls, *, epsilon: float = _MISTAKE_EPSILON, seed: int = 0) -> Teacher:
        """B-Pref's "Mistake" (epsilon = 0.1): the rational answer, flipped with probability
        epsilon: P(answer 1) = (1 - epsilon) sigma(inf * Delta) + epsilon sigma(-inf * Delta)."""
        return cls(epsilon=epsilon, seed=seed)

    @classmethod
    def skip(
        cls, *, mean_segment_return: float, fraction: float = _THRESHOLD_FRACTION, seed: int = 0
    ) -> Teacher:
        """B-Pref's "Skip": rational, but skips when max(R^1, R^2) < fraction * the mean
        return of a segment (B-Pref: 0.1 times the current policy's average)."""
        level = _real(mean_segment_return, name="mean_segment_return")
        fraction = _real(fraction, name="fraction")
        if fraction < 0:
            raise ValueError(f"fraction must be >= 0, got {fraction}")
        return cls(skip_below=fraction * level, seed=seed)

    @classmethod
    def equal(
        cls, *, mean_segment_return: float, fraction: float = _THRESHOLD_FRACTION, seed: int = 0
    ) -> Teacher:
        """B-Pref's "Equal": rational, but answers "tie" when |R^1 - R^2| < fraction * |the
        mean return of a segment| (B-Pref: 0.1 times the current policy's average)."""
        scale = abs(_real(mean_segment_return, name="mean_segment_return"))
        fraction = _real(fraction, name="fraction")
        if fraction < 0:
            raise ValueError(f"fraction must be >= 0, got {fraction}")
        return cls(equal_below=fraction * scale, seed=seed)

    # --- randomness --------------------------------------------------------------------

    def rng(self, annotator: int = 0) -> np.random.Generator:
        """Annotator ``annotator``'s own stream: child ``annotator`` of
        ``SeedSequence(seed).spawn(n)``, for any n above it. Create it once and pass it to
        every :func:`answer` call of that annotator; a fresh one replays the same draws."""
        if isinstance(annotator, bool) or not isinstance(annotator, int | np.integer):
            raise ValueError(f"annotator must be an integer, got {annotator!r}")
        if annotator < 0:
            raise ValueError(f"annotator must be >= 0, got {annotator}")
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(int(annotator),)))


PRESETS: Mapping[str, Callable[..., Teacher]] = {
    "rational": Teacher.rational,
    "oracle": Teacher.oracle,
    "stochastic": Teacher.stochastic,
    "myopic": Teacher.myopic,
    "mistake": Teacher.mistake,
    "skip": Teacher.skip,
    "equal": Teacher.equal,
}


@dataclass(frozen=True)
class Answers:
    """A batch of answers, row k answering query k.

    ``choice``: FIRST, SECOND, TIE or SKIP (int8). ``p_first``: sigma(beta * (R^1_gamma -
    R^2_gamma)), the probability with which the preference was drawn, before mistakes;
    ``p_answer_first``: (1 - epsilon) p_first + epsilon (1 - p_first), the probability of
    FIRST once mistakes are included. Both are computed for every row, also those that were
    skipped or tied, whose answers do not come from them. ``mistaken``: rows whose
    drawn preference was flipped (never a TIE or SKIP row). ``returns_*``: the plain returns R,
    which decide skip and tie; ``myopic_returns_*``: R_gamma (equal to R when gamma = 1).
    """

    choice: AnswerArray
    p_first: FloatArray
    p_answer_first: FloatArray
    mistaken: BoolArray
    returns_1: FloatArray
    returns_2: FloatArray
    myopic_returns_1: FloatArray
    myopic_returns_2: FloatArray

    def names(self) -> list[str]:
        """The answers as "first", "second", "tie", "skip"."""
        return [ANSWER_NAMES[int(value)] for value in self.choice]


# --- returns ---------------------------------------------------------------------------------


def _discount_weights(length: int, gamma: float) -> FloatArray:
    # gamma^(H-1-t) for t = 0 .. H-1: the last step weighs 1.
    return np.asarray(gamma ** np.arange(length - 1, -1, -1, dtype=np.float64), dtype=np.float64)


def _as_padded(rewards: Rewards, *, name: str) -> FloatArray:
    """The segments as one 2-D array; ragged segments are right-aligned with zeros in front,
    so that one weight vector gamma^(H_max - 1 - t) gives each its own gamma^(H_k - 1 - t)."""
    if isinstance(rewards, np.ndarray):
        if rewards.ndim != 2:
            raise ValueError(
                f"{name} must be a 2-D array (queries, steps) or a list of 1-D arrays, "
                f"got an array of shape {rewards.shape}"
            )
        padded = np.asarray(rewards, dtype=np.float64)
        if padded.shape[1] == 0 and padded.shape[0] > 0:
            raise ValueError(f"{name} holds segments of no steps")
    else:
        if isinstance(rewards, str | bytes) or not isinstance(rewards, Sequence):
            raise ValueError(f"{name} must be a 2-D array or a list of 1-D arrays")
        rows = [np.asarray(row, dtype=np.float64) for row in rewards]
        for index, row in enumerate(rows):
            if row.ndim != 1:
                raise ValueError(f"{name}[{index}] must be a 1-D array of rewards")
            if row.size == 0:
                raise ValueError(f"{name}[{index}] is an empty segment")
        lengths = np.array([row.size for row in rows], dtype=np.int64)
        width = int(lengths.max()) if rows else 0
        padded = np.zeros((len(rows), width), dtype=np.float64)
        if rows:
            values = np.concatenate(rows)
            row_of = np.repeat(np.arange(len(rows)), lengths)
            starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
            column = np.repeat(width - lengths, lengths) + (np.arange(values.size) - starts)
            padded[row_of, column] = values
    if not np.all(np.isfinite(padded)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(padded), axis=1))[0])
        raise ValueError(f"{name}[{bad}] holds a reward that is not finite")
    return padded


def segment_returns(rewards: Rewards, *, gamma: float = 1.0) -> tuple[FloatArray, FloatArray]:
    """(R, R_gamma) per segment: the plain and the myopic return (module docstring).

    ``rewards``: a 2-D array (queries, steps), or a sequence of 1-D arrays of any (non-zero)
    lengths; each segment's last step weighs 1 in R_gamma whatever its length.
    """
    gamma = _real(gamma, name="gamma")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must lie in (0, 1], got {gamma}")
    return _returns_of(rewards, gamma=gamma, name="rewards")


def _returns_of(rewards: Rewards, *, gamma: float, name: str) -> tuple[FloatArray, FloatArray]:
    padded = _as_padded(rewards, name=name)
    plain = np.asarray(padded.sum(axis=1), dtype=np.float64)
    if gamma == 1.0:
        return plain, plain.copy()
    return plain, np.asarray(padded @ _discount_weights(padded.shape[1], gamma), dtype=np.float64)


# --- the teacher's answer --------------------------------------------------------------------


def preference_probability(beta: float, delta: ArrayLike) -> FloatArray:
    """sigma(beta * delta), elementwise, with beta = inf giving 1 or 0, and 1/2 where
    delta = 0 (inf * 0 is undefined; with nothing to choose the teacher is indifferent)."""
    beta = _real(beta, name="beta")
    if beta < 0:
        raise ValueError(f"beta must be >= 0 (inf for a rational teacher), got {beta}")
    d = np.asarray(delta, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        logit = np.where(d == 0.0, 0.0, beta * d)
    return np.asarray(expit(logit), dtype=np.float64)


def _answer_returns(
    teacher: Teacher,
    *,
    plain_1: FloatArray,
    plain_2: FloatArray,
    myopic_1: FloatArray,
    myopic_2: FloatArray,
    rng: np.random.Generator | None,
) -> Answers:
    if plain_1.shape != plain_2.shape:
        raise ValueError(
            f"rewards_1 and rewards_2 must hold the same number of queries, got "
            f"{plain_1.shape[0]} and {plain_2.shape[0]}"
        )
    if rng is None:
        rng = teacher.rng()
    elif not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator or None, got {rng!r}")
    n = plain_1.shape[0]
    # Both draws always happen, for every row (module docstring, "Randomness").
    preference_draw = rng.random(n)
    mistake_draw = rng.random(n)

    p_first = preference_probability(teacher.beta, myopic_1 - myopic_2)
    # draw < p: with p exactly 1 or 0 (rational) the answer is certain, as draw lies in [0, 1).
    prefers_first = preference_draw < p_first
    mistaken = mistake_draw < teacher.epsilon
    choice = np.where(prefers_first ^ mistaken, FIRST, SECOND).astype(np.int8)

    tied = np.abs(plain_1 - plain_2) < teacher.equal_below
    skipped = np.maximum(plain_1, plain_2) < teacher.skip_below
    choice[tied] = TIE
    choice[skipped] = SKIP  # a skipped query is not looked at closely enough to call a tie
    return Answers(
        choice=choice,
        p_first=p_first,
        p_answer_first=np.asarray(
            (1.0 - teacher.epsilon) * p_first + teacher.epsilon * (1.0 - p_first),
            dtype=np.float64,
        ),
        mistaken=mistaken & ~(tied | skipped),
        returns_1=plain_1,
        returns_2=plain_2,
        myopic_returns_1=myopic_1,
        myopic_returns_2=myopic_2,
    )


def answer(
    teacher: Teacher,
    rewards_1: Rewards,
    rewards_2: Rewards,
    rng: np.random.Generator | None = None,
) -> Answers:
    """The teacher's answers to a batch of queries: query k shows segment ``rewards_1[k]``
    first and ``rewards_2[k]`` second.

    Each of ``rewards_1`` and ``rewards_2`` is a 2-D array (queries, steps) or a sequence of
    1-D reward arrays of any lengths (the two sides need not match in length either).
    ``rng``: the annotator's stream (:meth:`Teacher.rng`), advanced by two uniforms per
    query; ``None`` takes a fresh ``teacher.rng()``, so repeated calls without it replay the
    same draws. Raises ValueError on mismatched batches, empty segments or non-finite rewards.
    """
    plain_1, myopic_1 = _returns_of(rewards_1, gamma=teacher.gamma, name="rewards_1")
    plain_2, myopic_2 = _returns_of(rewards_2, gamma=teacher.gamma, name="rewards_2")
    return _answer_returns(
        teacher,
        plain_1=plain_1,
        plain_2=plain_2,
        myopic_1=myopic_1,
        myopic_2=myopic_2,
        rng=rng,
    )


def _scores(values: ArrayLike, *, name: str) -> FloatArray:
    scores = np.asarray(values, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        row = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(f"{name}[{row}] is not finite")
    return scores


def answer_from_scores(
    teacher: Teacher,
    scores_1: ArrayLike,
    scores_2: ArrayLike,
    rng: np.random.Generator | None = None,
) -> Answers:
    """:func:`answer` with one number per item standing in for a segment's return (a
    one-step segment: R = R_gamma = the score, so gamma plays no part)."""
    first = _scores(scores_1, name="scores_1")
    second = _scores(scores_2, name="scores_2")
    if first.shape != second.shape:
        raise ValueError(
            f"scores_1 and scores_2 must hold the same number of queries, got "
            f"{first.shape[0]} and {second.shape[0]}"
        )
    return _answer_returns(
        teacher, plain_1=first, plain_2=second, myopic_1=first, myopic_2=second, rng=rng
    )


def reference_scores(
    metadata: Sequence[Mapping[str, object]],
    *,
    key: str = "reference_score",
    name: str = "metadata",
) -> FloatArray:
    """``metadata[k][key]`` for every item k, as floats; ValueError naming the first item
    whose score is missing, not a number, or not finite."""
    scores = np.empty(len(metadata), dtype=np.float64)
    for index, entry in enumerate(metadata):
        if not isinstance(entry, Mapping) or key not in entry:
            raise ValueError(f"{name}[{index}] has no {key!r}")
        value = entry[key]
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ValueError(f"{name}[{index}][{key!r}] must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ValueError(f"{name}[{index}][{key!r}] must be finite, got {value!r}")
        scores[index] = float(value)
    return scores


def answer_from_metadata(
    teacher: Teacher,
    metadata_1: Sequence[Mapping[str, object]],
    metadata_2: Sequence[Mapping[str, object]],
    rng: np.random.Generator | None = None,
    *,
    key: str = "reference_score",
) -> Answers:
    """A text campaign's scripted answers: query k compares the items whose metadata are
    ``metadata_1[k]`` and ``metadata_2[k]`` by their ``reference_score``
    (:func:`answer_from_scores`)."""
    return answer_from_scores(
        teacher,
        reference_scores(metadata_1, key=key, name="metadata_1"),
        reference_scores(metadata_2, key=key, name="metadata_2"),
        rng,
    )


# --- evaluation ----------------------------------------------------------------------------


def bayes_ceiling(
    beta: float, returns_1: ArrayLike, returns_2: ArrayLike, *, epsilon: float = 0.0
) -> float:
    """The best accuracy any predictor can reach on a stochastic teacher's labels of these
    pairs: mean of max(q, 1 - q), q = (1 - epsilon) p + epsilon (1 - p), p =
    sigma(beta * (returns_1 - returns_2)). Pass myopic returns for a myopic teacher; skipped
    and tied queries carry no label and should be left out.
    """
    epsilon = _real(epsilon, name="epsilon")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must lie in [0, 1), got {epsilon}")
    first = _scores(returns_1, name="returns_1")
    second = _scores(returns_2, name="returns_2")
    if first.shape != second.shape:
        raise ValueError(
            f"returns_1 and returns_2 must hold the same number of pairs, got "
            f"{first.shape[0]} and {second.shape[0]}"
        )
    if first.size == 0:
        raise ValueError("returns_1 and returns_2 hold no pairs")
    p = preference_probability(beta, first - second)
    q = (1.0 - epsilon) * p + epsilon * (1.0 - p)
    return float(np.mean(np.maximum(q, 1.0 - q)))

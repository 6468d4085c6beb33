"""Per-transition reward labels from segment preferences (Optimal Reward Labeling).

Method: Xu, Zhu et al., "Optimal Reward Labeling: Bridging Offline Preference and
Reward-Based Reinforcement Learning" (arXiv 2406.10445; later titled "Binary Reward
Labeling"). Every transition of an offline dataset that appears in a judged segment gets a
reward label computed from the preferences alone; any reward-based offline RL algorithm then
learns from the labelled dataset. No reward model is trained.

Data. The dataset has N transitions (rows 0 .. N-1). Pair k compares segment 1, rows
[start_1[k], start_1[k] + length_1[k]), with segment 2, rows [start_2[k], start_2[k] +
length_2[k]); segments may overlap each other and be shared between pairs. y[k] in [0, 1] is
the soft label P(segment 1 preferred) (1: segment 1, 0: segment 2, 0.5: tie, or a share of
judgments), w[k] >= 0 an optional weight (e.g. the number of judgments). Pairs with w = 0
carry no information and are dropped, and cover nothing.

Closed form (the labelling of the paper's code). With mu_k = 2 y_k - 1 (in [-1, 1]; a tie
gives 0), every step of pair k's first segment gets the label +mu_k and every step of its
second segment -mu_k. A transition covered by several segments gets the weighted mean

    r_t = sum_{(k, side) covering t} w_k (+-mu_k)  /  sum_{(k, side) covering t} w_k.

Numerator and denominator are sums of per-segment constants over row ranges, so both are
prefix sums of a difference array (+value at the start row, -value one past the end),
computed with ``np.bincount``: O(N + pairs), no per-step loop.

Exact labels. Maximise the Bradley-Terry log-likelihood of all judged pairs over per-step
rewards in the box [-1, 1] (the paper's bounded reward):

    L(r)  = sum_k w_k [ y_k log sigma(d_k) + (1 - y_k) log sigma(-d_k) ],   d_k = S1_k - S2_k,
    S_k   = sum of r over a segment's rows,                                  sigma = logistic,
    dL/dd_k = w_k [ y_k sigma(-d_k) - (1 - y_k) sigma(d_k) ] =: g_k,
    dL/dr_t = sum_{k: t in seg 1} g_k  -  sum_{k: t in seg 2} g_k.

Segment sums come from one prefix sum of r; the gradient is the same difference-array
scatter as the closed form (+g_k / -g_k over each segment's rows). Only covered transitions
are variables; uncovered ones enter no segment sum and are set to ``fill``.

What is and is not determined. Only segment sums enter L, so per-step values are not unique:
any change that keeps every segment sum fixed keeps L. For disjoint segments the optimum gap
is S1 - S2 = logit(y), clipped to the box, |S1 - S2| <= length_1 + length_2 (a hard label, y
in {0, 1}, has no finite optimum inside the box and is pushed to the bound). Which point of
the optimal set is returned is fixed by solving over *pieces*: the covered rows cut at every
segment start and end (at most 4 x pairs pieces), whose rows lie in exactly the same
segments. dL/dr_t is the same for every row of a piece, and averaging labels over a piece
keeps every segment sum and the box, so the best piece-constant labels are optimal among all
labels: the returned labels are constant on each piece. That also shrinks the problem (327k
pieces for 990k covered rows and 100k pairs of 50 steps in docs/benchmarks.md). Inside the
optimal set, the result still depends on the start: L-BFGS's steps are combinations of the
gradients (sums of segment indicators) and the start, so away from the bounds the result is
the start plus such a combination. The start is the closed form (itself piece-constant)
scaled by the c in [0, 1] that maximises L along the ray c * closed form (a bounded
one-dimensional search; c = 0 and c = 1 are checked explicitly), so the result's objective
is never below that of the closed form or of all-zero rewards. An optional ``l2`` adds -l2/2
||r||^2 to L, which makes the maximiser unique (the smallest-norm labels with the best
likelihood); it must stay tiny (default 0: off), since for a hard label it stops the gap
where w sigma(-d) = l2 r, about -log(l2), instead of at the box.

Solver. scipy's L-BFGS-B with the box as bounds and the analytic gradient. Internally the
weights are rescaled to mean 1 (the optimum does not change; the tolerances then mean the
same for any judgment counts): stop when the largest projected gradient entry (with respect
to the piece variables u_j = sqrt(n_j) v_j of a piece of n_j rows at value v_j, which keep
the per-row geometry: ||u|| = ||r||) is below ``gtol`` (default 1e-6) or the relative
decrease of -L per iteration is below ``ftol`` (default 1e-12), or after ``max_iter``
iterations (default 2000). ``converged`` says whether one of the tolerances, not the cap,
stopped it. The reported objective is L itself (original weights, l2 term included when l2 >
0).

Pure numpy/scipy; no Django imports, so it can be used from workers, scripts and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike
from scipy.optimize import Bounds, minimize, minimize_scalar
from scipy.special import expit, log_expit

__all__ = [
    "Labels",
    "Pairs",
    "closed_form",
    "exact",
    "log_likelihood",
    "pairs_from_arrays",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

REWARD_BOUND = 1.0
DEFAULT_GTOL = 1e-6
DEFAULT_FTOL = 1e-12
DEFAULT_MAX_ITER = 2000
# L-BFGS memory: the usual 10 pairs of vectors; each costs 2 * 8 bytes per covered row.
_LBFGS_MEMORY = 10
# Search for the starting scale c in [0, 1]: a bracket this tight is plenty for a start.
_SCALE_XTOL = 1e-3


@dataclass(frozen=True)
class Pairs:
    """Validated judged pairs over a dataset of ``n_transitions`` rows; only pairs with a
    positive weight are kept. Build with :func:`pairs_from_arrays`."""

    n_transitions: int
    start_1: IntArray
    length_1: IntArray
    start_2: IntArray
    length_2: IntArray
    y: FloatArray
    weight: FloatArray

    @property
    def n_pairs(self) -> int:
        return int(self.y.size)


@dataclass(frozen=True)
class Labels:
    """Reward labels for every transition. ``rewards[t]`` is ``fill`` where ``covered[t]`` is
    False (no judged segment contains row t). ``objective``, ``iterations`` and
    ``converged`` are set by :func:`exact` only."""

    rewards: npt.NDArray[np.float32]
    covered: BoolArray
    method: Literal["closed_form", "exact"]
    n_pairs: int
    coverage: float
    objective: float | None = None
    iterations: int | None = None
    converged: bool | None = None


def _index_array(values: ArrayLike, *, name: str) -> IntArray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{name} must contain integers, got dtype {array.dtype}")
        # Integral floats (a float column) are fine; 1.5, NaN and inf are not, since astype
        # would silently turn them into some other row.
        bad = ~(np.isfinite(array) & (array == np.round(array)))
        if np.any(bad):
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name}[{row}] must be an integer, got {array[row]}")
    return array.astype(np.int64)


def _first_bad(mask: BoolArray) -> int:
    return int(np.flatnonzero(mask)[0])


def pairs_from_arrays(
    *,
    n_transitions: int,
    start_1: ArrayLike,
    length_1: ArrayLike,
    start_2: ArrayLike,
    length_2: ArrayLike,
    y: ArrayLike,
    weight: ArrayLike | None = None,
) -> Pairs:
    """Check and store judged pairs. Raises ValueError naming the argument and the index of
    the first bad entry: arrays of unequal length, a segment not inside [0, n_transitions)
    or of length < 1, ``y`` outside [0, 1] or NaN, ``weight`` negative or not finite."""
    if int(n_transitions) != n_transitions or n_transitions < 0:
        raise ValueError(f"n_transitions must be an integer >= 0, got {n_transitions}")
    n = int(n_transitions)
    s1 = _index_array(start_1, name="start_1")
    l1 = _index_array(length_1, name="length_1")
    s2 = _index_array(start_2, name="start_2")
    l2 = _index_array(length_2, name="length_2")
    y_arr = np.asarray(y, dtype=np.float64)
    w_arr = np.ones_like(y_arr) if weight is None else np.asarray(weight, dtype=np.float64)
    if y_arr.ndim != 1 or w_arr.ndim != 1:
        raise ValueError(f"y and weight must be 1-D, got shapes {y_arr.shape}, {w_arr.shape}")
    sizes = {
        "start_1": s1.size,
        "length_1": l1.size,
        "start_2": s2.size,
        "length_2": l2.size,
        "y": y_arr.size,
        "weight": w_arr.size,
    }
    if len(set(sizes.values())) != 1:
        raise ValueError(
            f"start_1, length_1, start_2, length_2, y, weight differ in length: {sizes}"
        )
    for start, length, side in ((s1, l1, "1"), (s2, l2, "2")):
        short = length < 1
        if np.any(short):
            k = _first_bad(short)
            raise ValueError(f"length_{side}[{k}] must be >= 1, got {length[k]}")
        outside = (start < 0) | (start > n - length)  # start + length <= n, without overflow
        if np.any(outside):
            k = _first_bad(outside)
            raise ValueError(
                f"segment {side} of pair {k} (start_{side}[{k}] = {start[k]}, "
                f"length_{side}[{k}] = {length[k]}) is not inside [0, {n})"
            )
    bad_y = ~((y_arr >= 0.0) & (y_arr <= 1.0))  # NaN fails both comparisons
    if np.any(bad_y):
        k = _first_bad(bad_y)
        raise ValueError(f"y[{k}] must lie in [0, 1], got {y_arr[k]}")
    bad_w = ~(np.isfinite(w_arr) & (w_arr >= 0.0))
    if np.any(bad_w):
        k = _first_bad(bad_w)
        raise ValueError(f"weight[{k}] must be finite and >= 0, got {w_arr[k]}")
    keep = w_arr > 0.0
    return Pairs(
        n_transitions=n,
        start_1=s1[keep],
        length_1=l1[keep],
        start_2=s2[keep],
        length_2=l2[keep],
        y=y_arr[keep],
        weight=w_arr[keep],
    )


def _scatter(
    *,
    size: int,
    pairs_starts: tuple[IntArray, IntArray],
    pairs_ends: tuple[IntArray, IntArray],
    value: FloatArray,
) -> FloatArray:
    """out[t] = sum_k value_k [t in segment 1 of k] - sum_k value_k [t in segment 2 of k]."""
    (a1, a2), (b1, b2) = pairs_starts, pairs_ends
    markers = np.concatenate((a1, b1, a2, b2))
    weights = np.concatenate((value, -value, -value, value))
    return np.cumsum(np.bincount(markers, weights=weights, minlength=size + 1)[:size])


def _coverage(pairs: Pairs) -> tuple[BoolArray, npt.NDArray[np.int64]]:
    """Covered mask, from an integer count so that round-off cannot mark a row covered."""
    n = pairs.n_transitions
    markers = np.concatenate(
        (
            pairs.start_1,
            pairs.start_2,
            pairs.start_1 + pairs.length_1,
            pairs.start_2 + pairs.length_2,
        )
    )
    signs = np.repeat(np.array([1, 1, -1, -1], dtype=np.int64), pairs.n_pairs)
    # bincount in float64 is far faster than np.add.at; the counts are integers below 2^53,
    # so they are exact and rounding back loses nothing.
    delta = np.rint(np.bincount(markers, weights=signs, minlength=n + 1)).astype(np.int64)
    count = np.cumsum(delta[:n])
    return count > 0, count


def _labels(
    pairs: Pairs,
    values: FloatArray,
    covered: BoolArray,
    *,
    fill: float,
    method: Literal["closed_form", "exact"],
    **extra: float | int | bool,
) -> Labels:
    rewards = np.full(pairs.n_transitions, fill, dtype=np.float32)
    rewards[covered] = values[covered]
    n = pairs.n_transitions
    return Labels(
        rewards=rewards,
        covered=covered,
        method=method,
        n_pairs=pairs.n_pairs,
        coverage=float(np.count_nonzero(covered)) / n if n else 0.0,
        objective=float(extra["objective"]) if "objective" in extra else None,
        iterations=int(extra["iterations"]) if "iterations" in extra else None,
        converged=bool(extra["converged"]) if "converged" in extra else None,
    )


def _closed_form_values(pairs: Pairs) -> tuple[FloatArray, BoolArray]:
    n = pairs.n_transitions
    covered, _ = _coverage(pairs)
    mu = 2.0 * pairs.y - 1.0
    starts = (pairs.start_1, pairs.start_2)
    ends = (pairs.start_1 + pairs.length_1, pairs.start_2 + pairs.length_2)
    numerator = _scatter(size=n, pairs_starts=starts, pairs_ends=ends, value=pairs.weight * mu)
    # Both segments of a pair add +w to the denominator (unlike the numerator's +-mu).
    w = pairs.weight
    markers = np.concatenate(starts + ends)
    denominator = np.cumsum(
        np.bincount(markers, weights=np.concatenate((w, w, -w, -w)), minlength=n + 1)[:n]
    )
    values = np.zeros(n, dtype=np.float64)
    np.divide(numerator, denominator, out=values, where=covered)
    # Prefix sums of +-w mu leave round-off of order 1e-16 per marker passed; a mean of
    # labels in [-1, 1] stays in [-1, 1].
    np.clip(values, -REWARD_BOUND, REWARD_BOUND, out=values)
    return values, covered


def closed_form(*, pairs: Pairs, fill: float = 0.0) -> Labels:
    """The paper's closed-form labels: +(2y - 1) on segment 1, -(2y - 1) on segment 2,
    weighted mean where segments overlap, ``fill`` where no segment covers a row."""
    values, covered = _closed_form_values(pairs)
    return _labels(pairs, values, covered, fill=fill, method="closed_form")


class _Objective:
    """-L / (mean weight) + l2/2 ||r||^2 / (mean weight) and its gradient, over one variable
    per *piece*: the covered rows are cut at every segment start and end, so the rows of a
    piece lie in exactly the same segments (at most 4 x pairs pieces). The gradient dL/dr_t
    depends on t only through the segments containing t, so it is constant on a piece; for
    any labels, replacing each piece by its mean keeps every segment sum and the box. The
    optimum over piece-constant labels is therefore a global one, and from a piece-constant
    start (the closed form is one) L-BFGS-B over rows would stay piece-constant anyway.
    The variable of piece j is u_j = sqrt(n_j) v_j (n_j rows of value v_j), which keeps the
    geometry of the per-row problem: ||u|| = ||r|| and bounds +-sqrt(n_j)."""

    def __init__(self, pairs: Pairs, covered: BoolArray, *, l2: float) -> None:
        before = np.concatenate(([0], np.cumsum(covered)))  # covered rows before row t
        # A segment's rows are all covered, so in the compact numbering of covered rows it
        # is still one contiguous range.
        ends = [
            before[pairs.start_1],
            before[pairs.start_1] + pairs.length_1,
            before[pairs.start_2],
            before[pairs.start_2] + pairs.length_2,
        ]
        cuts = np.unique(np.concatenate([np.array([0, int(before[-1])]), *ends]))
        self.piece_rows = np.diff(cuts)
        self.size = int(self.piece_rows.size)
        self.a1, self.b1, self.a2, self.b2 = (np.searchsorted(cuts, e) for e in ends)
        self.root = np.sqrt(self.piece_rows.astype(np.float64))
        self.scale = float(pairs.weight.mean()) if pairs.n_pairs else 1.0
        self.w = pairs.weight / self.scale
        self.wy = self.w * pairs.y
        self.w1y = self.w * (1.0 - pairs.y)
        self.l2 = l2 / self.scale

    def to_rows(self, u: FloatArray) -> FloatArray:
        """Per-row values (covered rows, in order) from the piece variables."""
        return np.repeat(u / self.root, self.piece_rows)

    def from_rows(self, rows: FloatArray) -> FloatArray:
        """Piece variables from piece-constant per-row values (first row of each piece)."""
        first = np.concatenate(([0], np.cumsum(self.piece_rows)[:-1]))
        return np.asarray(rows[first] * self.root, dtype=np.float64)

    def gaps(self, u: FloatArray) -> FloatArray:
        prefix = np.concatenate(([0.0], np.cumsum(u * self.root)))
        d: FloatArray = (prefix[self.b1] - prefix[self.a1]) - (prefix[self.b2] - prefix[self.a2])
        return d

    def value(self, u: FloatArray) -> float:
        """-L (scaled), without the gradient."""
        d = self.gaps(u)
        log_lik = float(np.dot(self.wy, log_expit(d)) + np.dot(self.w1y, log_expit(-d)))
        return -log_lik + 0.5 * self.l2 * float(np.dot(u, u))

    def __call__(self, u: FloatArray) -> tuple[float, FloatArray]:
        d = self.gaps(u)
        log_lik = float(np.dot(self.wy, log_expit(d)) + np.dot(self.w1y, log_expit(-d)))
        # y sigma(-d) - (1 - y) sigma(d), each factor computed directly: the difference
        # y - sigma(d) would be rounding noise once sigma(d) -> 1 (see bradley_terry.py).
        g = self.wy * expit(-d) - self.w1y * expit(d)
        per_row = _scatter(
            size=self.size, pairs_starts=(self.a1, self.a2), pairs_ends=(self.b1, self.b2), value=g
        )
        grad = -per_row * self.root
        if self.l2:
            grad += self.l2 * u
        return -log_lik + 0.5 * self.l2 * float(np.dot(u, u)), grad


def log_likelihood(*, rewards: ArrayLike, pairs: Pairs) -> float:
    """L(r) of the module docstring (original weights) for per-transition ``rewards``."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.shape != (pairs.n_transitions,):
        raise ValueError(f"rewards must have shape ({pairs.n_transitions},), got {r.shape}")
    prefix = np.concatenate(([0.0], np.cumsum(r)))
    d = (prefix[pairs.start_1 + pairs.length_1] - prefix[pairs.start_1]) - (
        prefix[pairs.start_2 + pairs.length_2] - prefix[pairs.start_2]
    )
    w = pairs.weight
    return float(np.dot(w * pairs.y, log_expit(d)) + np.dot(w * (1.0 - pairs.y), log_expit(-d)))


def exact(
    *,
    pairs: Pairs,
    fill: float = 0.0,
    l2: float = 0.0,
    gtol: float = DEFAULT_GTOL,
    ftol: float = DEFAULT_FTOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> Labels:
    """Labels in [-1, 1] that maximise the Bradley-Terry likelihood of the judged pairs
    (module docstring: objective, start point, tolerances). ``objective`` is L at the
    returned labels (minus l2/2 ||r||^2 when l2 > 0)."""
    if not (np.isfinite(l2) and l2 >= 0.0):
        raise ValueError(f"l2 must be finite and >= 0, got {l2}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    start_full, covered = _closed_form_values(pairs)
    f = _Objective(pairs, covered, l2=l2)
    if f.size == 0:
        return _labels(
            pairs,
            start_full,
            covered,
            fill=fill,
            method="exact",
            objective=0.0,
            iterations=0,
            converged=True,
        )
    start = f.from_rows(start_full[covered])

    # Scale of the closed form along the ray: the closed form's gaps are (2y - 1) times the
    # segment lengths, far beyond logit(y) for long segments and soft labels.
    def along(c: float) -> float:
        return f.value(c * start)

    search = minimize_scalar(
        along, bounds=(0.0, 1.0), method="bounded", options={"xatol": _SCALE_XTOL}
    )
    candidates = [(along(0.0), 0.0), (along(1.0), 1.0), (float(search.fun), float(search.x))]
    _, c = min(candidates)
    x0 = c * start
    f0 = f.value(x0)

    result = _lbfgsb(f, x0, gtol=gtol, ftol=ftol, max_iter=max_iter)
    x, fun, iterations, converged = result
    if fun > f0:  # never return worse than the start (L-BFGS-B only accepts descent steps)
        x, fun = x0, f0
    values = np.zeros(pairs.n_transitions, dtype=np.float64)
    values[covered] = f.to_rows(x)
    return _labels(
        pairs,
        values,
        covered,
        fill=fill,
        method="exact",
        objective=-fun * f.scale,
        iterations=iterations,
        converged=converged,
    )


def _lbfgsb(
    f: _Objective, x0: FloatArray, *, gtol: float, ftol: float, max_iter: int
) -> tuple[FloatArray, float, int, bool]:
    bounds = Bounds(-REWARD_BOUND * f.root, REWARD_BOUND * f.root)
    result = minimize(
        f,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={
            "maxiter": max_iter,
            "maxfun": max(20 * max_iter, 100),
            "gtol": gtol,
            "ftol": ftol,
            "maxcor": _LBFGS_MEMORY,
        },
    )
    x = np.clip(
        np.asarray(result.x, dtype=np.float64), -REWARD_BOUND * f.root, REWARD_BOUND * f.root
    )
    return x, float(result.fun), int(result.nit), bool(result.success)

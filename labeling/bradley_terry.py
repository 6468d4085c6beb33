"""Bradley-Terry scores from pairwise preference judgments.

Model (Bradley & Terry 1952, "Rank analysis of incomplete block designs: I. The method
of paired comparisons", Biometrika 39): item ``a`` beats item ``b`` with probability

    P(a > b) = sigma(s_a - s_b),        sigma(x) = 1 / (1 + exp(-x)),

so a score is a log-ability and only differences of scores are observable.

Ties count as half a win for each side. This is the usual practice when ties are
folded into the plain model rather than given their own parameter as in Davidson
(1970, "On extending the Bradley-Terry model to accommodate ties in paired comparison
experiments", JASA 65); it keeps the likelihood a sum of binomial-type terms, a tie
pulls the two scores towards each other, and tie-only data gives equal scores.

For each distinct unordered pair (i, j) with ``w`` wins of i (ties as 0.5) out of ``n``
comparisons, the objective is the log-posterior under an isotropic Gaussian prior
s ~ N(0, I / l2), i.e. maximum a posteriori (MAP) estimation, L2-penalised maximum
likelihood:

    f(s)      = sum_pairs [ w log sigma(s_i - s_j) + (n - w) log sigma(s_j - s_i) ]
                - l2 / 2 * ||s||^2
    grad f    = sum_pairs (w - n p) (e_i - e_j) - l2 s,             p = sigma(s_i - s_j)
    -Hess f   = Laplacian of the comparison graph weighted by n p (1 - p)  +  l2 I

``fit`` maximises f by Newton's method with a backtracking (Armijo) line search, so
every accepted step increases f. -Hess f is sparse (one off-diagonal entry per pair)
and positive definite when l2 > 0, so each Newton step is one sparse SPD solve.

With l2 = 0 this is plain maximum likelihood. f is then invariant to adding a constant
to every score, so item 0's step is pinned to 0 and the scores are centred to mean
zero at the end. The maximum exists only if the directed "beat" graph is strongly
connected (Zermelo 1929; Ford 1957, "Solution of a ranking problem from binary
comparisons", Amer. Math. Monthly 64): otherwise some group of items beat everything
outside it and their scores diverge. ``fit`` checks that up front and raises.

Pure numpy/scipy; no Django imports, so it can be used from workers, scripts and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as spla
from numpy.typing import ArrayLike
from scipy.special import expit, log_expit

__all__ = [
    "Comparisons",
    "Fit",
    "comparisons_from_matrix",
    "comparisons_from_outcomes",
    "fit",
    "gradient",
    "log_likelihood",
    "pair_probability",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Sparse LU of a comparison graph's Laplacian fills in badly when the graph is
# expander-like (random pairings, the common case here): measured 8.6 s for 5k items and
# minutes for 20k. Preconditioned conjugate gradients needs a few ms at those sizes
# because -Hess f is SPD and well conditioned once l2 > 0 or the graph is well mixed.
# The graphs on which CG crawls (long chains, l2 = 0) are exactly the ones with little
# fill-in, so when CG has not converged after _CG_MAX_ITER steps we switch to LU.
# Small systems always use the exact direct solve.
_DIRECT_SOLVE_MAX_ITEMS = 1000
_CG_RTOL = 1e-10
_CG_MAX_ITER = 300

# Armijo sufficient-increase constant and the point at which backtracking gives up.
_ARMIJO = 1e-4
_MIN_STEP = 1e-12


@dataclass(frozen=True)
class Comparisons:
    """Pairwise outcomes over ``n_items`` items, aggregated to one row per unordered pair.

    Row k says: items ``i[k] < j[k]`` were compared ``total[k]`` times (weighted), and
    ``i[k]`` won ``wins_i[k]`` of them, a tie counting 0.5 to each side.
    """

    n_items: int
    i: IntArray
    j: IntArray
    wins_i: FloatArray
    total: FloatArray

    def __post_init__(self) -> None:
        # Coerce here so that every consumer can rely on the dtypes and on i < j.
        i = np.asarray(self.i, dtype=np.int64)
        j = np.asarray(self.j, dtype=np.int64)
        wins_i = np.asarray(self.wins_i, dtype=np.float64)
        total = np.asarray(self.total, dtype=np.float64)
        if self.n_items < 0:
            raise ValueError(f"n_items must be >= 0, got {self.n_items}")
        if not (i.ndim == j.ndim == wins_i.ndim == total.ndim == 1) or not (
            i.shape == j.shape == wins_i.shape == total.shape
        ):
            raise ValueError("i, j, wins_i and total must be 1-D arrays of equal length")
        if i.size:
            if i.min() < 0 or j.max() >= self.n_items:
                raise ValueError(f"item indices must lie in [0, {self.n_items})")
            if np.any(i >= j):
                raise ValueError("each pair must be stored with i < j")
            if not (np.all(np.isfinite(wins_i)) and np.all(np.isfinite(total))):
                raise ValueError("wins_i and total must be finite")
            if np.any(wins_i < 0) or np.any(wins_i > total):
                raise ValueError("wins_i must lie in [0, total]")
        object.__setattr__(self, "i", i)
        object.__setattr__(self, "j", j)
        object.__setattr__(self, "wins_i", wins_i)
        object.__setattr__(self, "total", total)

    @property
    def n_pairs(self) -> int:
        return int(self.i.size)


@dataclass(frozen=True)
class Fit:
    """Result of :func:`fit`. ``log_likelihood`` is the log-posterior at ``scores``."""

    scores: FloatArray
    iterations: int
    converged: bool
    log_likelihood: float


def _as_index_array(values: ArrayLike, *, name: str) -> IntArray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of item indices")
    # Accept integral floats (e.g. a float column from a DataFrame), but not 1.5, NaN or
    # inf, which astype would silently turn into some other item.
    if (
        array.size
        and not np.issubdtype(array.dtype, np.integer)
        and not (
            np.issubdtype(array.dtype, np.floating)
            and np.all(np.isfinite(array))
            and np.all(array == np.round(array))
        )
    ):
        raise ValueError(f"{name} must contain integer item indices")
    return array.astype(np.int64)


def comparisons_from_outcomes(
    *,
    n_items: int,
    first: ArrayLike,
    second: ArrayLike,
    outcome: ArrayLike,
    weight: ArrayLike | None = None,
) -> Comparisons:
    """Aggregate one-row-per-judgment data into :class:`Comparisons`.

    ``outcome`` is the share of the judgment won by ``first``: 1.0 first wins, 0.0 second
    wins, 0.5 tie (any value in [0, 1] is accepted as a fractional win). ``weight``
    (default 1) scales a judgment, e.g. for annotator reliability. Judgments of the
    same pair in either orientation are summed into one row.
    """
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    first_idx = _as_index_array(first, name="first")
    second_idx = _as_index_array(second, name="second")
    outcome_arr = np.asarray(outcome, dtype=np.float64)
    weight_arr = (
        np.ones_like(outcome_arr) if weight is None else np.asarray(weight, dtype=np.float64)
    )
    if not (first_idx.shape == second_idx.shape == outcome_arr.shape == weight_arr.shape):
        raise ValueError(
            "first, second, outcome and weight must have the same length, got "
            f"{first_idx.shape}, {second_idx.shape}, {outcome_arr.shape}, {weight_arr.shape}"
        )
    if first_idx.size:
        out_of_range = (first_idx < 0) | (first_idx >= n_items)
        out_of_range |= (second_idx < 0) | (second_idx >= n_items)
        if np.any(out_of_range):
            row = int(np.flatnonzero(out_of_range)[0])
            raise ValueError(
                f"item index out of range [0, {n_items}) in row {row}: "
                f"first={first_idx[row]}, second={second_idx[row]}"
            )
        self_pairs = first_idx == second_idx
        if np.any(self_pairs):
            row = int(np.flatnonzero(self_pairs)[0])
            raise ValueError(f"first == second (item {first_idx[row]}) in row {row}")
        bad_outcome = ~((outcome_arr >= 0.0) & (outcome_arr <= 1.0))  # NaN is bad too
        if np.any(bad_outcome):
            row = int(np.flatnonzero(bad_outcome)[0])
            raise ValueError(f"outcome must lie in [0, 1], got {outcome_arr[row]} in row {row}")
        bad_weight = ~(np.isfinite(weight_arr) & (weight_arr >= 0.0))
        if np.any(bad_weight):
            row = int(np.flatnonzero(bad_weight)[0])
            raise ValueError(f"weight must be finite and >= 0, got {weight_arr[row]} in row {row}")

    low = np.minimum(first_idx, second_idx)
    high = np.maximum(first_idx, second_idx)
    wins_low = weight_arr * np.where(first_idx == low, outcome_arr, 1.0 - outcome_arr)
    # One int64 key per unordered pair; n_items**2 fits in int64 for any realistic n.
    keys, row_to_pair = np.unique(low * n_items + high, return_inverse=True)
    wins = np.bincount(row_to_pair, weights=wins_low, minlength=keys.size).astype(np.float64)
    total = np.bincount(row_to_pair, weights=weight_arr, minlength=keys.size).astype(np.float64)
    # Zero-weight pairs carry no information but would still count as graph edges.
    keep = total > 0
    keys = keys[keep]
    return Comparisons(
        n_items=n_items,
        i=keys // max(n_items, 1),
        j=keys % max(n_items, 1),
        wins_i=np.minimum(wins[keep], total[keep]),  # clip float round-off above total
        total=total[keep],
    )


def comparisons_from_matrix(wins: ArrayLike) -> Comparisons:
    """Build :class:`Comparisons` from a square matrix, ``wins[a][b]`` = times a beat b."""
    matrix = np.asarray(wins, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"wins must be a square matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)) or np.any(matrix < 0):
        raise ValueError("wins must be finite and non-negative")
    if np.any(np.diagonal(matrix) != 0):
        raise ValueError("wins must have a zero diagonal: an item cannot beat itself")
    n_items = matrix.shape[0]
    upper_i, upper_j = np.triu_indices(n_items, k=1)
    i = upper_i.astype(np.int64)
    j = upper_j.astype(np.int64)
    wins_i: FloatArray = matrix[i, j]
    total: FloatArray = wins_i + matrix[j, i]
    keep = total > 0
    return Comparisons(
        n_items=n_items, i=i[keep], j=j[keep], wins_i=wins_i[keep], total=total[keep]
    )


def _scores_for(scores: ArrayLike, comparisons: Comparisons) -> FloatArray:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (comparisons.n_items,):
        raise ValueError(f"scores must have shape ({comparisons.n_items},), got {s.shape}")
    return s


def log_likelihood(*, scores: ArrayLike, comparisons: Comparisons, l2: float) -> float:
    """Log-posterior f(s) (log-likelihood minus ``l2/2 ||s||^2``), up to a constant."""
    s = _scores_for(scores, comparisons)
    c = comparisons
    diff = s[c.i] - s[c.j]
    # log_expit stays finite and accurate for |diff| in the hundreds, where log(expit)
    # would hit log(0).
    data_term = np.sum(c.wins_i * log_expit(diff) + (c.total - c.wins_i) * log_expit(-diff))
    return float(data_term - 0.5 * l2 * np.dot(s, s))


def gradient(*, scores: ArrayLike, comparisons: Comparisons, l2: float) -> FloatArray:
    """Gradient of :func:`log_likelihood` with respect to the scores."""
    s = _scores_for(scores, comparisons)
    c = comparisons
    # d/d(s_i - s_j) of the pair's term: observed wins minus expected wins.
    residual = c.wins_i - c.total * expit(s[c.i] - s[c.j])
    n = c.n_items
    return np.asarray(
        np.bincount(c.i, weights=residual, minlength=n)
        - np.bincount(c.j, weights=residual, minlength=n)
        - l2 * s,
        dtype=np.float64,
    )


def _negative_hessian(*, scores: FloatArray, comparisons: Comparisons, l2: float) -> sp.csr_matrix:
    c = comparisons
    n = c.n_items
    p = expit(scores[c.i] - scores[c.j])
    edge = c.total * p * (1.0 - p)
    diagonal = np.bincount(c.i, weights=edge, minlength=n) + np.bincount(
        c.j, weights=edge, minlength=n
    )
    rows = np.concatenate([c.i, c.j, np.arange(n)])
    cols = np.concatenate([c.j, c.i, np.arange(n)])
    values = np.concatenate([-edge, -edge, diagonal + l2])
    return sp.csr_matrix((values, (rows, cols)), shape=(n, n))


def _solve_spd(matrix: sp.csr_matrix, rhs: FloatArray) -> FloatArray:
    if matrix.shape[0] <= _DIRECT_SOLVE_MAX_ITEMS:
        return np.asarray(spla.spsolve(matrix.tocsc(), rhs), dtype=np.float64).reshape(-1)
    jacobi = sp.diags(1.0 / matrix.diagonal())
    solution, info = spla.cg(matrix, rhs, rtol=_CG_RTOL, atol=0.0, M=jacobi, maxiter=_CG_MAX_ITER)
    if info != 0:
        return np.asarray(spla.spsolve(matrix.tocsc(), rhs), dtype=np.float64).reshape(-1)
    return np.asarray(solution, dtype=np.float64)


def _check_mle_exists(comparisons: Comparisons) -> None:
    c = comparisons
    n = c.n_items
    undirected = sp.csr_matrix((np.ones(c.n_pairs), (c.i, c.j)), shape=(n, n))
    n_components, labels = csgraph.connected_components(undirected, directed=False)
    if n_components > 1:
        isolated = np.setdiff1d(np.arange(n), np.concatenate([c.i, c.j]))
        detail = (
            f"; items never compared include {isolated[:5].tolist()}"
            if isolated.size
            else f"; e.g. items 0 and {int(np.flatnonzero(labels != labels[0])[0])} "
            "are not linked by any chain of comparisons"
        )
        raise ValueError(
            f"l2=0 needs a connected comparison graph, but it has {n_components} components"
            f"{detail}. Relative scores across components are not identified; use l2 > 0."
        )
    wins = np.bincount(c.i, weights=c.wins_i, minlength=n) + np.bincount(
        c.j, weights=c.total - c.wins_i, minlength=n
    )
    losses = np.bincount(c.i, weights=c.total - c.wins_i, minlength=n) + np.bincount(
        c.j, weights=c.wins_i, minlength=n
    )
    for label, count in (("won", losses), ("lost", wins)):
        extreme = np.flatnonzero(count == 0)
        if extreme.size:
            raise ValueError(
                f"l2=0: item {int(extreme[0])} {label} every comparison it took part in, so its "
                "maximum-likelihood score is infinite; use l2 > 0."
            )
    # Ford's condition: an edge a -> b whenever a won (part of) a comparison against b.
    beats_rows = np.concatenate([c.i[c.wins_i > 0], c.j[c.wins_i < c.total]])
    beats_cols = np.concatenate([c.j[c.wins_i > 0], c.i[c.wins_i < c.total]])
    beats = sp.csr_matrix((np.ones(beats_rows.size), (beats_rows, beats_cols)), shape=(n, n))
    n_strong, _ = csgraph.connected_components(beats, directed=True, connection="strong")
    if n_strong > 1:
        raise ValueError(
            "l2=0: the win graph is not strongly connected (some group of items beat every "
            "item outside it), so the maximum-likelihood scores diverge; use l2 > 0."
        )


def fit(
    *,
    comparisons: Comparisons,
    l2: float = 0.1,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> Fit:
    """MAP Bradley-Terry scores (maximum likelihood when ``l2 == 0``) by damped Newton.

    Converged means the last full Newton step moved no score by more than ``tol``
    (scores are on the logit scale, so this is an absolute tolerance).
    Raises ValueError when ``l2 == 0`` and the maximum-likelihood estimate does not exist.
    """
    if not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be finite and >= 0, got {l2}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    c = comparisons
    n = c.n_items
    scores = np.zeros(n, dtype=np.float64)
    if n <= 1 or c.n_pairs == 0:
        # Nothing to learn: the prior mean (or, for l2 = 0, the centred flat optimum) is 0.
        return Fit(
            scores=scores,
            iterations=0,
            converged=True,
            log_likelihood=log_likelihood(scores=scores, comparisons=c, l2=l2),
        )
    anchored = l2 == 0
    if anchored:
        _check_mle_exists(c)

    value = log_likelihood(scores=scores, comparisons=c, l2=l2)
    converged = False
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        grad = gradient(scores=scores, comparisons=c, l2=l2)
        hess = _negative_hessian(scores=scores, comparisons=c, l2=l2)
        step = np.zeros(n, dtype=np.float64)
        if anchored:
            # The Laplacian is singular along the all-ones direction; pinning item 0
            # removes exactly that direction and leaves an SPD system.
            step[1:] = _solve_spd(hess[1:, 1:].tocsr(), grad[1:])
        else:
            step = _solve_spd(hess, grad)
        ascent = float(np.dot(grad, step))  # twice the predicted gain of the Newton model

        t = 1.0
        # Once the predicted gain is below what f can resolve in floating point, comparing
        # f values is noise; Newton is then deep in its quadratic regime, so take the step.
        if ascent > 1e3 * np.finfo(np.float64).eps * (1.0 + abs(value)):
            while True:
                candidate = log_likelihood(scores=scores + t * step, comparisons=c, l2=l2)
                if candidate >= value + _ARMIJO * t * ascent:
                    break
                t *= 0.5
                if t < _MIN_STEP:
                    break
            if t < _MIN_STEP:
                break  # no ascent found: numerical trouble, report not converged
        scores = scores + t * step
        value = log_likelihood(scores=scores, comparisons=c, l2=l2)
        if t == 1.0 and float(np.max(np.abs(step))) <= tol:
            converged = True
            break

    if anchored:
        scores = scores - scores.mean()
    return Fit(
        scores=scores,
        iterations=iterations,
        converged=converged,
        log_likelihood=log_likelihood(scores=scores, comparisons=c, l2=l2),
    )


def pair_probability(*, scores: ArrayLike, i: ArrayLike, j: ArrayLike) -> FloatArray:
    """Model probability that item ``i`` beats item ``j``: sigma(s_i - s_j)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.asarray(
        expit(s[np.asarray(i, dtype=np.int64)] - s[np.asarray(j, dtype=np.int64)]),
        dtype=np.float64,
    )

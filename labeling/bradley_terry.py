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

Objective. Judgments are summed per distinct unordered pair (i, j) -- ``w`` wins of i
(ties as 0.5) out of ``n`` -- so the solver works on unique edges. With d = s_i - s_j and
the prior s ~ N(0, I / l2), the log-posterior (maximum a posteriori, MAP; l2 = 0 is plain
maximum likelihood) is

    f(s)      = sum_pairs [ w log sigma(d) + (n - w) log sigma(-d) ]  -  l2/2 ||s||^2
              = sum_pairs [ n log sigma(d) - (n - w) d ]              -  l2/2 ||s||^2
    grad f    = sum_pairs [ w sigma(-d) - (n - w) sigma(d) ] (e_i - e_j)  -  l2 s
    H = -Hess f = Laplacian of the comparison graph, edge weight n sigma(d) sigma(-d),  + l2 I

The gradient is written as ``w sigma(-d) - (n - w) sigma(d)``, not as the equal
``w - n sigma(d)``: the latter subtracts two nearly equal numbers when sigma(d) -> 1, so for
a lopsided pair under a weak prior the gradient is rounding noise and Newton never settles.

Solver. Newton's method, ``s <- s + t H^-1 grad f``, with a backtracking (Armijo) line
search that reuses the one evaluation of f per step, so every accepted step increases f.
H is sparse (one off-diagonal pair of entries per edge) and positive definite for l2 > 0;
its CSR pattern is built once per fit and only its values are rewritten each step. Each
step is solved by conjugate gradients with a Jacobi (diagonal) preconditioner to a
relative residual eta = min(0.1, |grad| / |grad_0|) (inexact Newton, Eisenstat & Walker
1996): loose while far from the optimum, tight near it, so convergence stays quadratic. Random comparison graphs are expanders, and once the prior adds l2 to every
diagonal entry the preconditioned system has a condition number of a few units: a solve
takes ten-odd sparse products at any size. (Sparse LU fills these graphs in to a dense
matrix.) With l2 = 0, f is invariant to adding a constant to every score: item 0's step
is pinned to 0 and the scores are centred at the end. The maximum then exists only if the
directed "beat" graph is strongly connected (Zermelo 1929; Ford 1957, "Solution of a
ranking problem from binary comparisons", Amer. Math. Monthly 64); ``fit`` checks that up
front and raises.

Prior strength from the data (``l2=None``). l2 is the precision of the scores' prior, i.e.
1 / (spread of the items' true log-abilities)^2: too weak and an item with three lucky wins
gets an extreme score; too strong and real differences are flattened. It is chosen to
maximise the evidence p(judgments | l2) in the Laplace approximation (MacKay 1992,
"Bayesian interpolation", Neural Computation 4; Bishop 2006, PRML sec. 3.5 and 4.4):

    log p(D | l2) ~ f(s*) + N/2 log l2 - 1/2 log det H(s*)        (s* the MAP at l2)

Setting its derivative to zero (holding H's data part fixed, as MacKay does) gives the
fixed point

    l2 = gamma / ||s*||^2,      gamma = N - l2 tr(H^-1) = sum_k (1 - l2 (H^-1)_kk),

gamma being the number of well-determined scores. tr(H^-1) is exact (dense) for a few
hundred compared items and otherwise Hutchinson's estimate E[z' H^-1 z] over Rademacher
probes z (fixed seed: a rerun gives the same l2), each one more CG solve; since H^-1 is
diagonally dominant here the estimate's relative error is about sqrt(2 / (degree N)) per
probe. The search starts at l2 = 1 with Newton steps from s = 0 until the largest step is
below 1e-2; each later round takes one warm-started Newton step at the new l2, updates l2
(secant steps on log l2 once two rounds are known) and stops when log l2 moves by less than
0.02; the final Newton steps then run to ``tol``. On a million judgments that is about ten
Newton steps and four trace solves in all. Only items compared at least once count in N
and tr (an item never compared adds exactly 1 - l2 / l2 = 0 to gamma). l2 stays in
[1e-3, 1e3]. Because the fixed point holds the likelihood's curvature fixed as l2 moves, it
lands somewhat above (10-25% in the tests) the maximum of the full Laplace evidence; both
sit on the flat top of the held-out likelihood.

Why the evidence rather than held-out likelihood: cross-validation needs K fits per
candidate l2 and picks l2 from a noisy curve; the evidence needs the one fit plus a trace
estimate per round, is deterministic, and on the synthetic noisy-annotator benchmark
(docs/benchmarks.md, "Bradley–Terry fit") lands on the flat top of the held-out likelihood curve. A
campaign can always override it with an explicit l2.

Pure numpy/scipy; no Django imports, so it can be used from workers, scripts and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as spla
from numpy.typing import ArrayLike
from scipy.special import expit

__all__ = [
    "Comparisons",
    "Fit",
    "comparisons_from_matrix",
    "comparisons_from_outcomes",
    "fit",
    "gradient",
    "log_likelihood",
    "mean_log_likelihood",
    "pair_probability",
    "win_rate_scores",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Conjugate gradients: the forcing term's ceiling and the iteration cap. The cap binds
# only on chain-like graphs with l2 = 0; CG's partial solution is still an ascent
# direction there, and the next Newton step continues from it.
_CG_RTOL_MAX = 0.1
_CG_MAX_ITER = 1000

# Armijo sufficient-increase constant and the point at which backtracking gives up.
_ARMIJO = 1e-4
_MIN_STEP = 1e-12

# Choosing l2 from the data (see the module docstring).
_L2_START = 1.0
_L2_BOUNDS = (1e-3, 1e3)
_L2_LOG_TOL = 0.02
_L2_FIRST_ROUND_STEP_TOL = 1e-2
_L2_MAX_ROUNDS = 12
_EXACT_TRACE_MAX_ITEMS = 400
_TRACE_PROBE_BUDGET = 4000  # probes * compared items, at least one probe, at most 16


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

    @cached_property
    def losses(self) -> FloatArray:
        """total - wins_i: the wins of ``j``."""
        return np.asarray(self.total - self.wins_i, dtype=np.float64)


@dataclass(frozen=True)
class Fit:
    """Result of :func:`fit`. ``log_likelihood`` is the log-posterior at ``scores`` under
    the prior strength ``l2`` the fit used: the one asked for, or, when ``l2_from_data``,
    the one the evidence chose. ``iterations`` counts every Newton step, those taken while
    choosing l2 included."""

    scores: FloatArray
    iterations: int
    converged: bool
    log_likelihood: float
    l2: float
    l2_from_data: bool = False


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


@dataclass(frozen=True)
class _Point:
    """Scores and what f, grad f and H need of them, computed once per point:
    d = s_i - s_j per pair and e = exp(-|d|), from which sigma(+-d) and log sigma(d) follow
    without cancellation."""

    scores: FloatArray
    diff: FloatArray
    exp_neg_abs: FloatArray
    data: float  # the data term of f

    @classmethod
    def at(cls, scores: FloatArray, comparisons: Comparisons) -> _Point:
        c = comparisons
        diff = scores[c.i] - scores[c.j]
        e = np.abs(diff)
        np.negative(e, out=e)
        np.exp(e, out=e)
        # log sigma(d) = min(d, 0) - log(1 + e), and w log sigma(d) + (n - w) log sigma(-d)
        # = n log sigma(d) - (n - w) d. log(1 + e) rather than log1p(e): it differs by less
        # than 1e-16 per pair, and numpy's log is vectorised where log1p is not.
        log_sigma = np.minimum(diff, 0.0)
        log_term = e + 1.0
        np.log(log_term, out=log_term)
        log_sigma -= log_term
        data = float(np.dot(c.total, log_sigma) - np.dot(c.losses, diff))
        return cls(scores=scores, diff=diff, exp_neg_abs=e, data=data)

    def value(self, l2: float) -> float:
        return self.data - 0.5 * l2 * float(np.dot(self.scores, self.scores))

    def gradient_and_weights(
        self, comparisons: Comparisons, *, l2: float
    ) -> tuple[FloatArray, FloatArray]:
        """grad f, and the Hessian's edge weights n sigma(d) sigma(-d)."""
        c = comparisons
        likely = self.exp_neg_abs + 1.0
        np.reciprocal(likely, out=likely)  # sigma(|d|)
        unlikely = self.exp_neg_abs * likely  # sigma(-|d|), accurate however small
        weights = likely
        weights *= unlikely
        weights *= c.total
        # w sigma(-d) - (n - w) sigma(d), using only the accurate small probability: for
        # d >= 0 it equals n sigma(-d) - (n - w), else w - n sigma(d). Never the equal
        # w - n sigma(d) for d >= 0, which cancels when sigma(d) -> 1 (module docstring).
        unlikely *= c.total
        residual = np.where(self.diff >= 0.0, unlikely - c.losses, c.wins_i - unlikely)
        n = c.n_items
        # Weighted counts are float64 (asarray copies nothing); numpy's stubs say intp.
        grad = np.asarray(np.bincount(c.i, weights=residual, minlength=n), dtype=np.float64)
        grad -= np.bincount(c.j, weights=residual, minlength=n)
        grad -= l2 * self.scores
        return grad, weights


def log_likelihood(*, scores: ArrayLike, comparisons: Comparisons, l2: float) -> float:
    """Log-posterior f(s) (log-likelihood minus ``l2/2 ||s||^2``), up to a constant."""
    return _Point.at(_scores_for(scores, comparisons), comparisons).value(l2)


def gradient(*, scores: ArrayLike, comparisons: Comparisons, l2: float) -> FloatArray:
    """Gradient of :func:`log_likelihood` with respect to the scores."""
    point = _Point.at(_scores_for(scores, comparisons), comparisons)
    return point.gradient_and_weights(comparisons, l2=l2)[0]


def _grouped_by_first(comparisons: Comparisons) -> Comparisons:
    """The same pairs with ``i`` non-decreasing (already so when built by the constructors
    here), so that the upper triangle of H is a CSR matrix in pair order."""
    c = comparisons
    if c.n_pairs < 2 or bool(np.all(c.i[1:] >= c.i[:-1])):
        return c
    order = np.argsort(c.i, kind="stable")
    return Comparisons(
        n_items=c.n_items, i=c.i[order], j=c.j[order], wins_i=c.wins_i[order], total=c.total[order]
    )


class _Hessian:
    """H = diag(D) - U - U', with U the strict upper triangle: a CSR matrix whose data array
    is the pairs' weights in pair order. Its pattern is built once per fit; a Newton step
    only writes the weights and the diagonal."""

    def __init__(self, comparisons: Comparisons, *, anchored: bool) -> None:
        c = comparisons
        n = c.n_items
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(c.i, minlength=n), out=indptr[1:])
        self.upper = sp.csr_matrix((np.zeros(c.n_pairs), c.j, indptr), shape=(n, n))
        self.lower = self.upper.T  # a CSC view sharing the data array
        # l2 = 0: the Laplacian is singular along the all-ones direction. Pinning item 0
        # (identity row and column, zero right-hand side) removes exactly that direction.
        self._pinned_pairs = (c.i == 0) if anchored else None
        self._comparisons = c
        self.diagonal = np.ones(n)
        self.operator = spla.LinearOperator(
            (n, n), matvec=self._product, rmatvec=self._product, dtype=np.float64
        )

    def _product(self, v: FloatArray) -> FloatArray:
        v = np.ravel(v)
        return np.asarray(self.diagonal * v - self.upper @ v - self.lower @ v)

    def update(self, *, weights: FloatArray, l2: float) -> None:
        c = self._comparisons
        n = c.n_items
        diagonal = np.asarray(  # float64 already: see gradient_and_weights
            np.bincount(c.i, weights=weights, minlength=n)
            + np.bincount(c.j, weights=weights, minlength=n)
            + l2,
            dtype=np.float64,
        )
        if self._pinned_pairs is not None:
            weights = np.where(self._pinned_pairs, 0.0, weights)
            diagonal[0] = 1.0
        self.upper.data[:] = weights
        self.diagonal = diagonal

    def solve(self, rhs: FloatArray, *, rtol: float) -> FloatArray:
        """Jacobi-preconditioned CG from zero. Stopped early, its iterate x still has
        rhs . x > 0, so it stays an ascent direction for Newton."""
        inverse_diagonal = 1.0 / self.diagonal
        jacobi = spla.LinearOperator(
            self.operator.shape,
            matvec=lambda v: inverse_diagonal * np.ravel(v),
            dtype=np.float64,
        )
        solution, _ = spla.cg(
            self.operator, rhs, rtol=rtol, atol=0.0, M=jacobi, maxiter=_CG_MAX_ITER
        )
        return np.asarray(solution, dtype=np.float64)

    def trace_inverse(self, *, active: IntArray, rng: np.random.Generator) -> float:
        """tr(H^-1) over the ``active`` items (those compared; the others are decoupled)."""
        if active.size <= _EXACT_TRACE_MAX_ITEMS:
            off = self.upper + self.lower
            block = np.diag(self.diagonal[active]) - off[active][:, active].toarray()
            return float(np.trace(np.linalg.inv(block)))
        probes = int(np.clip(np.ceil(_TRACE_PROBE_BUDGET / active.size), 1, 16))
        total = 0.0
        for _ in range(probes):
            z = np.zeros(self.operator.shape[0])
            z[active] = rng.choice(np.array([-1.0, 1.0]), size=active.size)
            # z' x converges like the square of x's error: a loose solve is plenty.
            total += float(np.dot(z, self.solve(z, rtol=1e-3)))
        return total / probes


@dataclass
class _Newton:
    comparisons: Comparisons
    hessian: _Hessian
    anchored: bool
    first_gradient_norm: float = 0.0
    steps: int = 0

    def run(self, point: _Point, *, l2: float, tol: float, max_steps: int) -> tuple[_Point, bool]:
        """Newton steps at prior strength l2 until a full step moves no score by more than
        ``tol`` (True), or ``max_steps`` are taken, or the line search fails (False)."""
        c = self.comparisons
        for _ in range(max_steps):
            grad, weights = point.gradient_and_weights(c, l2=l2)
            self.hessian.update(weights=weights, l2=l2)
            if self.anchored:
                grad[0] = 0.0
            norm = float(np.linalg.norm(grad))
            # H >= l2 I, so no score would move by more than |grad| / l2: done without
            # another solve. (With l2 = 0 only the step itself tells.)
            if norm == 0.0 or norm <= tol * l2:
                return point, True
            self.steps += 1
            if self.first_gradient_norm == 0.0:
                self.first_gradient_norm = norm
            # CG is cheap next to the rest of a step, so solve to a relative residual that
            # shrinks like the gradient: Newton then converges quadratically.
            rtol = min(_CG_RTOL_MAX, norm / self.first_gradient_norm)
            step = self.hessian.solve(grad, rtol=rtol)
            ascent = float(np.dot(grad, step))  # twice the predicted gain of the Newton model
            value = point.value(l2)
            t = 1.0
            while True:
                candidate = _Point.at(point.scores + t * step, c)  # f's one evaluation
                # Once the predicted gain is below what f resolves in floating point,
                # comparing f values is noise; Newton is then deep in its quadratic
                # regime, so take the step.
                if ascent <= 1e3 * np.finfo(np.float64).eps * (1.0 + abs(value)):
                    break
                if candidate.value(l2) >= value + _ARMIJO * t * ascent:
                    break
                t *= 0.5
                if t < _MIN_STEP:
                    return point, False  # no ascent found: numerical trouble
            point = candidate
            if t == 1.0 and float(np.max(np.abs(step))) <= tol:
                return point, True
        return point, False


def _choose_l2(newton: _Newton, point: _Point, *, max_steps: int) -> tuple[_Point, float]:
    """The evidence-maximising l2 (module docstring), with the scores near its MAP."""
    c = newton.comparisons
    active = np.flatnonzero(
        np.bincount(c.i, minlength=c.n_items) + np.bincount(c.j, minlength=c.n_items)
    )
    rng = np.random.default_rng(20240601)
    low, high = np.log(_L2_BOUNDS[0]), np.log(_L2_BOUNDS[1])
    x = float(np.log(_L2_START))
    previous: tuple[float, float] | None = None
    for round_number in range(_L2_MAX_ROUNDS):
        l2 = float(np.exp(x))
        remaining = max_steps - newton.steps
        if round_number == 0:
            point, _ = newton.run(point, l2=l2, tol=_L2_FIRST_ROUND_STEP_TOL, max_steps=remaining)
        else:  # warm-started from near the last l2's optimum: one step is close enough
            point, _ = newton.run(point, l2=l2, tol=0.0, max_steps=min(1, remaining))
        if newton.steps >= max_steps:
            break
        spread = float(np.dot(point.scores, point.scores))
        if spread == 0.0:  # no signal at all (ties only): the strongest prior
            return point, _L2_BOUNDS[1]
        gamma = active.size - l2 * newton.hessian.trace_inverse(active=active, rng=rng)
        target = float(np.clip(np.log(max(gamma, 1e-12) / spread), low, high))
        residual = target - x
        following = target
        if previous is not None and residual != previous[1]:
            secant = x - residual * (x - previous[0]) / (residual - previous[1])
            if np.isfinite(secant):
                following = float(np.clip(secant, low, high))
        previous = (x, residual)
        moved = abs(following - x)
        x = following
        if moved < _L2_LOG_TOL:
            break
    return point, float(np.exp(x))


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
    l2: float | None = None,
    tol: float = 1e-8,
    max_iter: int = 100,
) -> Fit:
    """MAP Bradley-Terry scores by inexact Newton; maximum likelihood when ``l2 == 0``.

    ``l2=None`` chooses the prior strength from the data by maximising the Laplace
    evidence (module docstring); a number is used as given. Converged means the last full
    Newton step moved no score by more than ``tol``, or the gradient is so small that the
    next one could not (|grad| <= tol * l2, since H >= l2 I); scores are on the logit
    scale, so this is an absolute tolerance. The default 1e-8 saves a Newton step over 1e-10
    and changes no score by more than 1e-10 (convergence is quadratic by then: at 100k items
    and 1M judgments the scores differed by 2e-11). ``max_iter`` bounds the Newton steps of
    the whole fit.
    Raises ValueError when ``l2 == 0`` and the maximum-likelihood estimate does not exist.
    """
    if l2 is not None and not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be finite and >= 0, got {l2}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    c = comparisons
    n = c.n_items
    scores = np.zeros(n, dtype=np.float64)
    if n <= 1 or c.n_pairs == 0:
        # Nothing to learn: the prior mean (or, for l2 = 0, the centred flat optimum) is 0,
        # and without judgments the evidence cannot choose a prior: the starting one stands.
        chosen = _L2_START if l2 is None else float(l2)
        return Fit(
            scores=scores,
            iterations=0,
            converged=True,
            log_likelihood=log_likelihood(scores=scores, comparisons=c, l2=chosen),
            l2=chosen,
            l2_from_data=l2 is None,
        )
    anchored = l2 == 0
    if anchored:
        _check_mle_exists(c)

    grouped = _grouped_by_first(c)
    newton = _Newton(
        comparisons=grouped, hessian=_Hessian(grouped, anchored=anchored), anchored=anchored
    )
    point = _Point.at(scores, grouped)
    if l2 is None:
        point, chosen = _choose_l2(newton, point, max_steps=max_iter)
    else:
        chosen = float(l2)
    point, converged = newton.run(point, l2=chosen, tol=tol, max_steps=max_iter - newton.steps)

    scores = point.scores - point.scores.mean() if anchored else point.scores
    return Fit(
        scores=scores,
        iterations=newton.steps,
        converged=converged,
        log_likelihood=log_likelihood(scores=scores, comparisons=c, l2=chosen),
        l2=chosen,
        l2_from_data=l2 is None,
    )


def pair_probability(*, scores: ArrayLike, i: ArrayLike, j: ArrayLike) -> FloatArray:
    """Model probability that item ``i`` beats item ``j``: sigma(s_i - s_j)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.asarray(
        expit(s[np.asarray(i, dtype=np.int64)] - s[np.asarray(j, dtype=np.int64)]),
        dtype=np.float64,
    )


# --- evaluation ----------------------------------------------------------------------------


def mean_log_likelihood(*, scores: ArrayLike, comparisons: Comparisons) -> float:
    """Log-likelihood per judgment (per unit of weight) of ``comparisons`` under ``scores``,
    without the prior: the held-out score of a fit, comparable across predictors."""
    s = _scores_for(scores, comparisons)
    c = comparisons
    weight = float(c.total.sum())
    if weight == 0.0:
        return 0.0
    return _Point.at(s, c).data / weight


def win_rate_scores(*, comparisons: Comparisons) -> FloatArray:
    """The baseline a fit must beat: each item's Laplace-smoothed win rate
    r = (wins + 1) / (comparisons + 2) on the logit scale, so that sigma(r_a - r_b) predicts
    a judgment the way :func:`pair_probability` does for fitted scores."""
    c = comparisons
    n = c.n_items
    wins = np.bincount(c.i, weights=c.wins_i, minlength=n) + np.bincount(
        c.j, weights=c.total - c.wins_i, minlength=n
    )
    games = np.bincount(c.i, weights=c.total, minlength=n) + np.bincount(
        c.j, weights=c.total, minlength=n
    )
    rate = (wins + 1.0) / (games + 2.0)
    return np.asarray(np.log(rate) - np.log1p(-rate), dtype=np.float64)

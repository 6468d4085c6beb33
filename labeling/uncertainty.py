"""How sure are the Bradley-Terry scores? Laplace and bootstrap intervals, per-source scores.

Two ways to put an interval around each score of :func:`labeling.bradley_terry.fit`:

Laplace (the default). The log-posterior f of ``bradley_terry`` is close to quadratic at its
maximum s*, so the posterior is approximately N(s*, H^-1) with H = -Hess f(s*), the graph
Laplacian with edge weights n sigma(d) sigma(-d) plus l2 I (Laplace 1774; MacKay 2003,
"Information Theory, Inference, and Learning Algorithms", ch. 27). A score's standard error
is sqrt((H^-1)_kk) and its 95% interval s*_k +- 1.96 se_k. Cost: one dense factorisation
for small campaigns, else one block of 16 conjugate-gradient solves (below).

Bootstrap. Resample the judgments with replacement, refit, and take the 2.5 and 97.5
percentiles of each item's refitted score (Efron 1979, "Bootstrap methods: another look at the
jackknife", Annals of Statistics 7; the percentile bootstrap is what Chiang et al. 2024,
"Chatbot Arena: an open platform for evaluating LLMs by human preference", report). It needs
no Gaussian assumption, so it is the one to trust when few judgments touch an item (a
posterior that is skewed, e.g. an item that won all of its three comparisons) and for small
campaigns, where B fits are cheap. It costs B full fits: about 1.2 s each at 100k items and
a million judgments (two shared cores, docs/benchmarks.md), so B = 1000, which 2.5% tails
need to be more than a rough guess, is twenty minutes; Laplace takes about 4 s there (as
much as three or four refits). So large campaigns use Laplace. Every
resample is fitted at the full data's l2 (re-choosing l2 per resample would add the prior's
own noise to the interval) and from zero: ``fit`` takes no starting point, and Newton from
zero costs only a few more steps than from s*.

The two answer different questions, and differ when the prior is strong. Laplace gives the
posterior's spread, var = (F + l2 I)^-1 with F the data's curvature; the bootstrap gives the
spread of the MAP estimate over datasets, about (F + l2 I)^-1 F (F + l2 I)^-1: a variance
smaller by roughly F / (F + l2) per item, a width by its square root. With many judgments
per item (F >> l2) they agree (tests); on bench/bt_fit.py's noisy campaign, twenty judgments
per item (a quarter of the annotators flipping 30% of answers) and l2 ~ 2, 20-resample
bootstrap intervals are about 0.64 times as wide. For "where might this item's true score be" the posterior is the
honest answer; the bootstrap is what Chatbot Arena-style tables report.

What the intervals are about. The likelihood depends on score differences only; a common
shift of every score is pinned by the prior N(0, I / l2) alone, and the MAP is exactly centred
(the data part of the gradient sums to zero, so at the optimum l2 * sum(s*) = 0). H has
eigenvalue l2 along the all-ones direction, so the raw variance (H^-1)_kk contains 1/(n l2)
of pure prior uncertainty about that shift: huge when l2 is small, and irrelevant to any
comparison between items. By default the intervals are therefore for the centred scores
s_k - mean(s), whose covariance is P H^-1 P with P = I - 11'/n; because H 1 = l2 1,

    (P H^-1 P)_kk = (H^-1)_kk - 1 / (n l2),

and with l2 = 0 (maximum likelihood) it is the pseudo-inverse of the Laplacian, the usual
asymptotic covariance of Bradley-Terry estimates. ``centred=False`` gives (H^-1)_kk. Under a
prior the Laplace interval is a credible interval: it covers "the true centred scores" at the
nominal rate on average over scores drawn from the prior; for scores held fixed it is shifted
by the prior's shrinkage, which is small next to se once l2 << the data's curvature.

Computing diag(P H^-1 P). Both ways solve with K = H + 11'/n, which equals H off the all-ones
direction and is positive definite even for l2 = 0 on a connected graph; then
P H^-1 P = K^-1 - 11' / (n (l2 + 1)). (When the graph falls apart into components, each
component's common shift is again pinned by the prior only; the stochastic path removes
those modes exactly, so a weak prior does not drown its probes.)

* Up to ``_DENSE_MAX_ITEMS`` items: dense Cholesky of K, exact, O(n^3) (about 0.2 s at n = 1000).
* Beyond: stochastic diagonal estimation (Hutchinson 1990, "A stochastic estimator of the
  trace of the influence matrix for Laplacian smoothing splines"; Bekas, Kokiopoulou & Saad
  2007, "An estimator for the diagonal of a matrix"): diag(V) = E[z * V z] for Rademacher z.
  Alone it is poor here: the error of entry k per probe is sum_{j != k} V_kj z_j, whose
  standard deviation relative to V_kk is of order 1/sqrt(degree): 13% per probe with twenty
  comparisons per item, so 16 probes leave 1.6% (median; 9% worst) on the standard errors.
  So it is used on a residual only (a control variate): with
  D = diag(H) and A the weighted adjacency, the truncated Neumann series
  M = D^-1 + D^-1 A D^-1 + D^-1 A D^-1 A D^-1 matches H^-1 on the item and its neighbours, and
  diag(P M P) is computed exactly from sparse products; the probes estimate only
  diag(V - P M P), whose off-diagonal entries are three hops deep and small. Solves are a
  block Jacobi-preconditioned conjugate gradient over all probes at once (H plus the prior is
  well conditioned: a dozen or two sparse products). Measured accuracy (tests and
  bench/bt_uncertainty.py): against the exact diagonal at 2,000 items with twenty
  comparisons each, the standard errors' median relative error is 0.15% with 8 probes,
  0.11% with 16 (the default; largest 0.6%), 0.08% with 32 and 0.04% with 128: it shrinks
  like 1/sqrt(probes), and is far below the Laplace approximation's own error.

Judgment weights. ``comparisons_from_outcomes(weight=...)`` multiplies each judgment's win
and count, so a reliability weight enters the likelihood, H and both intervals; weight 1 is
the unweighted model exactly. Laplace intervals then treat a judgment of weight w as w
judgments, so weights should be on the scale of "equivalent judgments" (mean 1) for the
intervals to keep their meaning; the bootstrap resamples judgments with their weights.

Per-source scores (:func:`source_scores`): for campaigns whose items were produced by models
(prompts answered by several models), each judgment between items of two different sources is
a judgment between the sources; same-source judgments carry nothing about sources and are
dropped. Sources are then fitted like items, with intervals and raw win rates. Treating every
item-level judgment as an independent draw of its sources' abilities ignores that items of
one source differ; the bootstrap variant resamples judgments, not items, so both intervals
are somewhat optimistic when item quality varies a lot within a source.

Pure numpy/scipy; no Django imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
from numpy.typing import ArrayLike
from scipy.special import expit
from scipy.stats import norm

from labeling import bradley_terry as bt
from labeling.bradley_terry import Comparisons, FloatArray

__all__ = [
    "Intervals",
    "SourceScores",
    "bootstrap_intervals",
    "hessian_at",
    "laplace_intervals",
    "laplace_variances",
    "source_scores",
]

# Up to this many items diag(H^-1) is computed exactly by dense Cholesky.
_DENSE_MAX_ITEMS = 1000
# Stochastic path: probes solved together per block (memory: n * block floats per vector).
_PROBE_BLOCK = 16
_CG_MAX_ITER = 500


@dataclass(frozen=True)
class Intervals:
    """Point scores with per-item intervals at ``level``. ``standard_error`` is the Laplace
    posterior standard deviation (for the bootstrap: the resampled scores' standard
    deviation). ``centred`` says whether they are about s_k - mean(s) (module docstring)."""

    scores: FloatArray
    standard_error: FloatArray
    lower: FloatArray
    upper: FloatArray
    level: float
    method: Literal["laplace", "bootstrap"]
    l2: float
    centred: bool = True

    @property
    def width(self) -> FloatArray:
        return np.asarray(self.upper - self.lower, dtype=np.float64)


def _edge_weights(*, scores: FloatArray, comparisons: Comparisons) -> FloatArray:
    c = comparisons
    p = expit(scores[c.i] - scores[c.j])
    return np.asarray(c.total * p * (1.0 - p), dtype=np.float64)


def hessian_at(*, scores: ArrayLike, comparisons: Comparisons, l2: float) -> sp.csr_matrix:
    """H = -Hess f at ``scores``: the comparison graph's Laplacian with edge weights
    n sigma(d) sigma(-d), plus l2 I (``bradley_terry``'s module docstring)."""
    c = comparisons
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (c.n_items,):
        raise ValueError(f"scores must have shape ({c.n_items},), got {s.shape}")
    w = _edge_weights(scores=s, comparisons=c)
    n = c.n_items
    degree = np.bincount(c.i, weights=w, minlength=n) + np.bincount(c.j, weights=w, minlength=n)
    rows = np.concatenate([c.i, c.j, np.arange(n)])
    cols = np.concatenate([c.j, c.i, np.arange(n)])
    values = np.concatenate([-w, -w, degree + l2])
    return sp.csr_matrix((values, (rows, cols)), shape=(n, n))


def _diag_dense(hessian: sp.csr_matrix, *, l2: float) -> FloatArray:
    """diag(P H^-1 P) exactly, via the Cholesky factor of K = H + 11'/n."""
    n = hessian.shape[0]
    k = hessian.toarray() + 1.0 / n
    factor = sla.cholesky(k, lower=True)
    # K^-1 = L^-T L^-1, so (K^-1)_kk is the squared norm of column k of L^-1.
    inverse_factor = sla.solve_triangular(factor, np.eye(n), lower=True)
    diagonal = np.einsum("ij,ij->j", inverse_factor, inverse_factor)
    return np.asarray(diagonal - 1.0 / (n * (l2 + 1.0)), dtype=np.float64)


def _block_cg(
    apply: Callable[[FloatArray], FloatArray],
    rhs: FloatArray,
    inverse_diagonal: FloatArray,
    *,
    rtol: float,
) -> FloatArray:
    """Jacobi-preconditioned conjugate gradients on every column of ``rhs`` at once: one
    sparse-times-dense product per iteration for the whole block."""
    x = np.zeros_like(rhs)
    r = rhs.copy()
    z = inverse_diagonal[:, None] * r
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    target = rtol * np.linalg.norm(rhs, axis=0)
    for _ in range(_CG_MAX_ITER):
        if np.all(np.linalg.norm(r, axis=0) <= target):
            break
        q = apply(p)
        alpha = rz / np.maximum(np.einsum("ij,ij->j", p, q), np.finfo(np.float64).tiny)
        x += alpha * p
        r -= alpha * q
        z = inverse_diagonal[:, None] * r
        rz_next = np.einsum("ij,ij->j", r, z)
        p = z + (rz_next / np.maximum(rz, np.finfo(np.float64).tiny)) * p
        rz = rz_next
    return x


def _diag_stochastic(
    hessian: sp.csr_matrix, *, l2: float, probes: int, rng: np.random.Generator, rtol: float
) -> FloatArray:
    """diag(P H^-1 P) by Hutchinson's estimator on the residual of a Neumann-series control
    variate (module docstring), per connected component of the comparison graph."""
    n = hessian.shape[0]
    d = hessian.diagonal()
    adjacency = sp.diags(d).tocsr() - hessian  # A >= 0, zero diagonal
    adjacency.eliminate_zeros()
    inv_d = 1.0 / d
    n_components, label = csgraph.connected_components(adjacency, directed=False)
    size = np.bincount(label, minlength=n_components).astype(np.float64)
    if n_components > 1 and l2 == 0:
        raise ValueError("l2 = 0 needs a connected comparison graph")

    indicator = sp.csr_matrix(
        (np.ones(n), (np.arange(n), label)), shape=(n, n_components)
    ).T.tocsr()

    def component_mean(v: FloatArray) -> FloatArray:
        """Each row replaced by the mean of its component's rows (Q = I minus this)."""
        if n_components == 1:
            return np.broadcast_to(v.mean(axis=0), v.shape)
        sums = np.asarray(indicator @ v, dtype=np.float64)
        return np.asarray((sums / size[:, None])[label], dtype=np.float64)

    def neumann(v: FloatArray) -> FloatArray:
        """M v, M = D^-1 + D^-1 A D^-1 + D^-1 A D^-1 A D^-1, for the columns of v."""
        first = inv_d[:, None] * v
        second = (adjacency @ first) * inv_d[:, None]
        third = (adjacency @ second) * inv_d[:, None]
        return np.asarray(first + second + third, dtype=np.float64)

    # A component's constant vector 1_C is an eigenvector of H with eigenvalue l2, so with
    # Q removing component means, H^-1 = Q H^-1 Q + sum_C 1_C 1_C' / (|C| l2), and
    #   (P H^-1 P)_kk = (Q H^-1 Q)_kk + 1 / (|C_k| l2) - 1 / (n l2).
    # Those constant modes are what the Neumann series misses (and, at small l2, what would
    # swamp the probes), so the probes see only Q H^-1 Q. diag(Q M Q)_k is
    # M_kk - 2 (M 1)_k / |C_k| + (1_C' M 1)/|C_k|^2 (M is block-diagonal by component), with
    # M_kk = 1/d_k + sum_j A_kj^2 / (d_k^2 d_j): the middle term of M has a zero diagonal.
    squared = adjacency.multiply(adjacency).tocsr()
    m_diag = inv_d + inv_d**2 * (squared @ inv_d)
    m_ones = neumann(np.ones((n, 1)))[:, 0]
    m_component = np.bincount(label, weights=m_ones, minlength=n_components)
    control = m_diag - 2.0 * m_ones / size[label] + (m_component / size**2)[label]
    if n_components > 1:  # l2 > 0 here
        control += 1.0 / (size[label] * l2) - 1.0 / (n * l2)

    def k_apply(v: FloatArray) -> FloatArray:  # K = H + sum_C 1_C 1_C' / |C|
        return np.asarray(hessian @ v + component_mean(v), dtype=np.float64)

    k_inv_diag = 1.0 / (d + 1.0 / size[label])
    residual_sum = np.zeros(n)
    done = 0
    while done < probes:
        block = min(_PROBE_BLOCK, probes - done)
        z = rng.choice(np.array([-1.0, 1.0]), size=(n, block))
        y = z - component_mean(z)  # Q z
        x = _block_cg(k_apply, y, k_inv_diag, rtol=rtol)  # K^-1 Q z = Q H^-1 Q z
        my = neumann(y)
        residual_sum += np.einsum("ij,ij->i", z, x - (my - component_mean(my)))
        done += block
    return np.asarray(control + residual_sum / probes, dtype=np.float64)


def laplace_variances(
    *,
    comparisons: Comparisons,
    scores: ArrayLike,
    l2: float,
    centred: bool = True,
    method: Literal["auto", "dense", "stochastic"] = "auto",
    probes: int = 16,
    seed: int = 0,
    rtol: float = 1e-4,
) -> FloatArray:
    """Posterior variances of the scores in the Laplace approximation, at the MAP ``scores``
    of a fit with prior strength ``l2``: diag(P H^-1 P) when ``centred`` (the default),
    else diag(H^-1) (needs l2 > 0). ``auto`` is exact (dense Cholesky) up to
    ``_DENSE_MAX_ITEMS`` items, else the seeded stochastic estimate with ``probes`` probes.
    Precondition for l2 = 0: a connected comparison graph (``fit`` checks it)."""
    if not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be finite and >= 0, got {l2}")
    if not centred and l2 == 0:
        raise ValueError("uncentred scores have infinite variance at l2 = 0")
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    n = comparisons.n_items
    if n == 0:
        return np.zeros(0)
    hessian = hessian_at(scores=scores, comparisons=comparisons, l2=l2)
    if method == "auto":
        method = "dense" if n <= _DENSE_MAX_ITEMS else "stochastic"
    if method == "dense":
        variances = _diag_dense(hessian, l2=l2)
    elif method == "stochastic":
        rng = np.random.default_rng(seed)
        variances = _diag_stochastic(hessian, l2=l2, probes=probes, rng=rng, rtol=rtol)
    else:
        raise ValueError(f"unknown method {method!r}")
    if not centred:
        variances = variances + 1.0 / (n * l2)
    # A stochastic estimate of a tiny variance could dip below zero; a variance cannot.
    return np.asarray(np.maximum(variances, 0.0), dtype=np.float64)


def _z_value(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return float(norm.ppf(0.5 + level / 2.0))


def laplace_intervals(
    *,
    comparisons: Comparisons,
    fitted: bt.Fit,
    level: float = 0.95,
    centred: bool = True,
    method: Literal["auto", "dense", "stochastic"] = "auto",
    probes: int = 16,
    seed: int = 0,
) -> Intervals:
    """Intervals s*_k +- z se_k (z = 1.96 at 95%) from the Laplace approximation around the
    fit ``fitted`` of ``comparisons`` (its scores and l2)."""
    z = _z_value(level)
    variances = laplace_variances(
        comparisons=comparisons,
        scores=fitted.scores,
        l2=fitted.l2,
        centred=centred,
        method=method,
        probes=probes,
        seed=seed,
    )
    se = np.sqrt(variances)
    s = np.asarray(fitted.scores, dtype=np.float64)
    return Intervals(
        scores=s,
        standard_error=se,
        lower=s - z * se,
        upper=s + z * se,
        level=level,
        method="laplace",
        l2=fitted.l2,
        centred=centred,
    )


def bootstrap_intervals(
    *,
    n_items: int,
    first: ArrayLike,
    second: ArrayLike,
    outcome: ArrayLike,
    weight: ArrayLike | None = None,
    l2: float | None = None,
    resamples: int = 100,
    level: float = 0.95,
    seed: int = 0,
    tol: float = 1e-6,
) -> Intervals:
    """Percentile-bootstrap intervals: ``resamples`` refits on judgments drawn with
    replacement (one row per judgment, as for ``comparisons_from_outcomes``), each at the
    full data's l2 (chosen from the data first when ``l2`` is None). The point scores are
    the full data's fit. A resample is a multinomial count per judgment, applied as a
    weight: the same as repeating rows, without copying them."""
    if resamples < 2:
        raise ValueError(f"resamples must be >= 2, got {resamples}")
    if l2 == 0:
        # A resample can leave an item that won every comparison it kept: no finite MLE.
        raise ValueError("the bootstrap needs l2 > 0 (or None, to choose it from the data)")
    _z_value(level)
    outcome_arr = np.asarray(outcome, dtype=np.float64)
    base_weight = (
        np.ones_like(outcome_arr) if weight is None else np.asarray(weight, dtype=np.float64)
    )
    full = bt.fit(
        comparisons=bt.comparisons_from_outcomes(
            n_items=n_items, first=first, second=second, outcome=outcome_arr, weight=base_weight
        ),
        l2=l2,
    )
    rng = np.random.default_rng(seed)
    m = outcome_arr.size
    draws = np.empty((resamples, n_items))
    for b in range(resamples):
        counts = np.bincount(rng.integers(0, m, m), minlength=m).astype(np.float64)
        resampled = bt.comparisons_from_outcomes(
            n_items=n_items,
            first=first,
            second=second,
            outcome=outcome_arr,
            weight=base_weight * counts,
        )
        draws[b] = bt.fit(comparisons=resampled, l2=full.l2, tol=tol).scores
    tail = 50.0 * (1.0 - level)
    lower, upper = np.percentile(draws, [tail, 100.0 - tail], axis=0)
    return Intervals(
        scores=full.scores,
        standard_error=np.asarray(draws.std(axis=0, ddof=1), dtype=np.float64),
        lower=np.asarray(lower, dtype=np.float64),
        upper=np.asarray(upper, dtype=np.float64),
        level=level,
        method="bootstrap",
        l2=full.l2,
        centred=True,  # every refit's MAP is centred for l2 > 0
    )


@dataclass(frozen=True)
class SourceScores:
    """Scores of the sources (e.g. the models that produced the items) with intervals.
    ``win_rate`` is each source's (weighted) share of its cross-source judgments won, ties
    as half; NaN for a source with none. ``judgments`` counts (weighted) cross-source
    judgments per source; ``dropped_same_source`` the judgments between two items of one
    source."""

    intervals: Intervals
    win_rate: FloatArray
    judgments: FloatArray
    dropped_same_source: int

    @property
    def scores(self) -> FloatArray:
        return self.intervals.scores


def source_scores(
    *,
    n_sources: int,
    item_source: ArrayLike,
    first: ArrayLike,
    second: ArrayLike,
    outcome: ArrayLike,
    weight: ArrayLike | None = None,
    l2: float | None = None,
    level: float = 0.95,
    interval: Literal["laplace", "bootstrap"] = "laplace",
    resamples: int = 200,
    seed: int = 0,
) -> SourceScores:
    """Bradley-Terry scores of sources from item-level judgments. ``item_source[k]`` is the
    source (0 .. n_sources - 1) of item k; ``first``, ``second``, ``outcome`` and ``weight``
    are item-level, as for ``comparisons_from_outcomes``. Same-source judgments are dropped
    (module docstring)."""
    sources = np.asarray(item_source, dtype=np.int64)
    if sources.ndim != 1:
        raise ValueError("item_source must be a 1-D array")
    if sources.size and (sources.min() < 0 or sources.max() >= n_sources):
        raise ValueError(f"item_source values must lie in [0, {n_sources})")
    first_items = np.asarray(first, dtype=np.int64)
    second_items = np.asarray(second, dtype=np.int64)
    if first_items.shape != second_items.shape:
        raise ValueError("first and second must have the same length")
    if first_items.size and (
        min(first_items.min(), second_items.min()) < 0
        or max(first_items.max(), second_items.max()) >= sources.size
    ):
        raise ValueError(f"item indices must lie in [0, {sources.size})")
    outcome_arr = np.asarray(outcome, dtype=np.float64)
    weight_arr = (
        np.ones_like(outcome_arr) if weight is None else np.asarray(weight, dtype=np.float64)
    )
    source_first = sources[first_items]
    source_second = sources[second_items]
    cross = source_first != source_second
    a, b = source_first[cross], source_second[cross]
    o, w = outcome_arr[cross], weight_arr[cross]

    comparisons = bt.comparisons_from_outcomes(
        n_items=n_sources, first=a, second=b, outcome=o, weight=w
    )  # validates outcome and weight
    wins = np.bincount(a, weights=w * o, minlength=n_sources) + np.bincount(
        b, weights=w * (1.0 - o), minlength=n_sources
    )
    games = np.bincount(a, weights=w, minlength=n_sources) + np.bincount(
        b, weights=w, minlength=n_sources
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        win_rate = np.where(games > 0, wins / np.where(games > 0, games, 1.0), np.nan)

    if interval == "laplace":
        fitted = bt.fit(comparisons=comparisons, l2=l2)
        intervals = laplace_intervals(comparisons=comparisons, fitted=fitted, level=level)
    elif interval == "bootstrap":
        intervals = bootstrap_intervals(
            n_items=n_sources,
            first=a,
            second=b,
            outcome=o,
            weight=w,
            l2=l2,
            resamples=resamples,
            level=level,
            seed=seed,
        )
    else:
        raise ValueError(f"unknown interval {interval!r}")
    return SourceScores(
        intervals=intervals,
        win_rate=np.asarray(win_rate, dtype=np.float64),
        judgments=np.asarray(games, dtype=np.float64),
        dropped_same_source=int(np.count_nonzero(~cross)),
    )

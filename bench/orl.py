"""ORL reward labels (labeling/orl.py): time of the closed form and of the exact labels on a
dataset of a million transitions, and how well the labels follow the hidden true reward.

Synthetic data (seeded): N transitions in episodes of 1,000 steps; a hidden true reward per
step, r = tanh(z) with z an AR(1) process per episode (so neighbouring steps are alike, as in
a control task). P judged pairs of L-step segments, each segment inside one uniformly drawn
episode at a uniform offset (segments overlap and are shared by chance). A Bradley-Terry
stochastic teacher judges each pair 1-3 times, preferring segment 1 with probability
sigma(R1 - R2), R the true segment return; y = share of judgments for segment 1, weight =
number of judgments.

Closed form: median of --repeats runs (validation of the pairs included). Exact: one run per
iteration cap in --max-iter (at 1M transitions an L-BFGS-B iteration costs about 0.1 s on two
shared cores and the default cap of 2,000 is reached before the tolerances); the objective
of each cap shows how far the last iterations still move it. The correlation of labels with
the true per-step reward over covered rows is a sanity check, not a quality measure: only
segment sums are identified, so per-step labels follow the truth only on average.

    .venv/bin/python bench/orl.py                  # N = 1M, 100k pairs of 50 steps (~5 min)
    .venv/bin/python bench/orl.py --transitions 100000 --pairs 10000 --max-iter 100,1000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EPISODE = 1000
AR = 0.95


def synthetic(*, n: int, pairs: int, length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=n) * np.sqrt(1 - AR**2)
    z = np.empty(n)
    z[0] = noise[0]
    # AR(1) per episode, vectorised over episodes: walk the 1,000 steps, not the rows.
    episodes = noise.reshape(-1, EPISODE) if n % EPISODE == 0 else None
    if episodes is None:
        raise ValueError(f"transitions must be a multiple of {EPISODE}")
    walk = np.empty_like(episodes)
    walk[:, 0] = rng.normal(size=episodes.shape[0])
    for t in range(1, EPISODE):
        walk[:, t] = AR * walk[:, t - 1] + episodes[:, t]
    true = np.tanh(walk.reshape(-1))
    n_episodes = n // EPISODE

    def segments() -> np.ndarray:
        episode = rng.integers(0, n_episodes, pairs)
        return episode * EPISODE + rng.integers(0, EPISODE - length + 1, pairs)

    start_1, start_2 = segments(), segments()
    prefix = np.concatenate(([0.0], np.cumsum(true)))
    gap = (prefix[start_1 + length] - prefix[start_1]) - (
        prefix[start_2 + length] - prefix[start_2]
    )
    judgments = rng.integers(1, 4, pairs)
    wins = rng.binomial(judgments, 1.0 / (1.0 + np.exp(-gap)))
    return {
        "true": true,
        "start_1": start_1,
        "start_2": start_2,
        "y": wins / judgments,
        "weight": judgments.astype(np.float64),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-iter", default="300,2000", help="iteration caps of the exact runs")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (0: leave)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from labeling import orl
    from labeling.blas import blas_threads_limited

    data = synthetic(n=args.transitions, pairs=args.pairs, length=args.length, seed=args.seed)
    lengths = np.full(args.pairs, args.length)

    def pairs() -> orl.Pairs:
        return orl.pairs_from_arrays(
            n_transitions=args.transitions,
            start_1=data["start_1"],
            length_1=lengths,
            start_2=data["start_2"],
            length_2=lengths,
            y=data["y"],
            weight=data["weight"],
        )

    def correlation(labels: orl.Labels) -> float:
        c = labels.covered
        return float(np.corrcoef(labels.rewards[c], data["true"][c])[0, 1])

    report: dict[str, object] = {
        "transitions": args.transitions,
        "pairs": args.pairs,
        "length": args.length,
        "seed": args.seed,
        "nproc": os.cpu_count(),
        "load": Path("/proc/loadavg").read_text().split()[:3],
        "blas_threads": args.threads or "default",
    }
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        closed = orl.closed_form(pairs=pairs())
        times.append(time.perf_counter() - start)
    validated = pairs()
    report["closed_form"] = {
        "median_s": round(statistics.median(times), 4),
        "runs_s": [round(t, 4) for t in times],
        "coverage": round(closed.coverage, 5),
        "objective": orl.log_likelihood(rewards=closed.rewards, pairs=validated),
        "corr_true": round(correlation(closed), 4),
    }
    report["zero_objective"] = orl.log_likelihood(
        rewards=np.zeros(args.transitions), pairs=validated
    )
    report["true_objective"] = orl.log_likelihood(rewards=np.asarray(data["true"]), pairs=validated)
    runs = []
    for cap in (int(v) for v in args.max_iter.split(",") if v):
        start = time.perf_counter()
        if args.threads:
            with blas_threads_limited(threads=args.threads):
                exact = orl.exact(pairs=validated, max_iter=cap)
        else:
            exact = orl.exact(pairs=validated, max_iter=cap)
        runs.append(
            {
                "max_iter": cap,
                "time_s": round(time.perf_counter() - start, 2),
                "iterations": exact.iterations,
                "converged": exact.converged,
                "objective": exact.objective,
                "mean_log_lik_per_judgment": (exact.objective or 0.0) / float(data["weight"].sum()),
                "corr_true": round(correlation(exact), 4),
            }
        )
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    report["exact"] = runs
    if len(runs) >= 2:
        last, before = runs[-1]["objective"], runs[-2]["objective"]
        assert isinstance(last, float) and isinstance(before, float)
        report["exact_objective_moved_between_last_two_caps"] = last - before
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

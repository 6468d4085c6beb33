"""Bradley-Terry fit: time, peak memory and held-out log-likelihood, new solver against the
old one (commit 1f41433) in the same run.

Synthetic data, the same for every solver at a given size and seed: latent scores
s ~ N(0, 1) for N items; each comparison picks a uniform item, a uniform other item and a
uniform annotator of 200; the first wins with probability sigma(s1 - s2); a quarter of the
annotators flip their answer with probability 0.3; 10% of comparisons are held out.

Each (solver, size) runs in a child process of its own, so its peak RSS (ru_maxrss) is its
own; the child also reports tracemalloc's peak over one fit (numpy buffers). "fit" is the
time of `comparisons_from_outcomes` + `fit` on the training judgments (what an aggregation
run does), "solve" of `fit` alone; both are medians of --repeats runs.

    .venv/bin/python bench/bt_fit.py                       # all sizes, both solvers
    .venv/bin/python bench/bt_fit.py --sizes 100000:1000000 --repeats 5 --threads 1
    .venv/bin/python bench/bt_fit.py --sizes 10000:200000 --sweep 0.1,0.3,1,2,4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OLD_COMMIT = "1f41433"
ANNOTATORS = 200
FLIPPING_SHARE = 0.25
FLIP_PROBABILITY = 0.3
HELD_OUT = 0.1
DEFAULT_SIZES = "500:10000,10000:200000,100000:1000000"


def synthetic(*, n_items: int, n_comparisons: int, seed: int) -> dict[str, np.ndarray]:
    """Judgments as described in the module docstring, split into train and held-out."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=n_items)
    first = rng.integers(0, n_items, n_comparisons)
    second = (first + rng.integers(1, n_items, n_comparisons)) % n_items  # uniform other
    annotator = rng.integers(0, ANNOTATORS, n_comparisons)
    first_wins = rng.random(n_comparisons) < 1.0 / (1.0 + np.exp(latent[second] - latent[first]))
    flips = (annotator < ANNOTATORS * FLIPPING_SHARE) & (
        rng.random(n_comparisons) < FLIP_PROBABILITY
    )
    outcome = (first_wins ^ flips).astype(np.float64)
    held_out = rng.random(n_comparisons) < HELD_OUT
    return {
        "first": first,
        "second": second,
        "outcome": outcome,
        "held_out": held_out,
    }


def load_solver(which: str) -> ModuleType:
    if which == "new":
        sys.path.insert(0, str(ROOT))
        from labeling import bradley_terry

        return bradley_terry
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:labeling/bradley_terry.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "bradley_terry_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("bradley_terry_old", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bradley_terry_old"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def one(args: argparse.Namespace) -> dict:
    """One solver at one size, in this (child) process."""
    sys.path.insert(0, str(ROOT))
    from labeling import bradley_terry as new  # the evaluation is the same for both solvers

    solver = load_solver(args.solver)
    data = synthetic(n_items=args.items, n_comparisons=args.comparisons, seed=args.seed)
    train, test = ~data["held_out"], data["held_out"]

    def comparisons(module: ModuleType, mask: np.ndarray):  # noqa: ANN202
        return module.comparisons_from_outcomes(
            n_items=args.items,
            first=data["first"][mask],
            second=data["second"][mask],
            outcome=data["outcome"][mask],
        )

    held_out = comparisons(new, test)
    kwargs = {} if args.l2 is None else {"l2": args.l2}
    if args.solver == "old" and args.l2 is None:
        kwargs = {"l2": 0.1}  # the old default
    fit_times, solve_times = [], []
    result = None
    for _ in range(args.repeats):
        start = time.perf_counter()
        training = comparisons(solver, train)
        middle = time.perf_counter()
        result = solver.fit(comparisons=training, **kwargs)
        end = time.perf_counter()
        fit_times.append(end - start)
        solve_times.append(end - middle)
        del training
    assert result is not None
    rss_after_timing = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    training = comparisons(solver, train)
    solver.fit(comparisons=training, **kwargs)
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    baseline = new.win_rate_scores(comparisons=comparisons(new, train))
    return {
        "solver": args.solver,
        "items": args.items,
        "comparisons": args.comparisons,
        "threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "fit_s": statistics.median(fit_times),
        "fit_runs_s": [round(t, 3) for t in fit_times],
        "solve_s": statistics.median(solve_times),
        "peak_rss_mb": rss_after_timing,
        "traced_peak_mb": traced_peak,
        "iterations": result.iterations,
        "converged": bool(result.converged),
        "l2": getattr(result, "l2", kwargs.get("l2")),
        "held_out_ll": new.mean_log_likelihood(scores=result.scores, comparisons=held_out),
        "win_rate_ll": new.mean_log_likelihood(scores=baseline, comparisons=held_out),
    }


def child(args: argparse.Namespace, *, solver: str, items: int, comparisons: int, l2: str) -> dict:
    env = dict(os.environ)
    if args.threads:
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(args.threads)
    command = [
        sys.executable,
        __file__,
        "_one",
        f"--solver={solver}",
        f"--items={items}",
        f"--comparisons={comparisons}",
        f"--seed={args.seed}",
        f"--repeats={args.repeats}",
        f"--l2={l2}",
    ]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "_one"])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="items:comparisons,...")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="OpenBLAS/OMP threads (0: unset)")
    parser.add_argument("--solvers", default="new,old")
    parser.add_argument("--sweep", default="", help="also fit these fixed l2 values (new solver)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per result")
    # child-only options
    parser.add_argument("--solver", default="new")
    parser.add_argument("--items", type=int, default=0)
    parser.add_argument("--comparisons", type=int, default=0)
    parser.add_argument("--l2", default="auto")
    args = parser.parse_args()
    if args.mode == "_one":
        args.l2 = None if args.l2 == "auto" else float(args.l2)
        print(json.dumps(one(args)))
        return

    print(
        f"# bench/bt_fit.py  seed={args.seed} repeats={args.repeats} threads="
        f"{args.threads or 'unset'}  nproc={os.cpu_count()} "
        f"load={Path('/proc/loadavg').read_text().split()[:3]}"
    )
    header = (
        f"{'solver':<6} {'l2':>8} {'items':>7} {'judgm':>8} {'fit s':>7} {'solve s':>7} "
        f"{'RSS MB':>7} {'traced':>7} {'iter':>4} {'conv':>4} {'held-out':>8} {'win-rate':>8}"
    )
    print(header)
    for size in args.sizes.split(","):
        items, comparisons = (int(v) for v in size.split(":"))
        runs = [(solver, "auto") for solver in args.solvers.split(",") if solver]
        runs += [("new", value) for value in args.sweep.split(",") if value]
        for solver, l2 in runs:
            r = child(args, solver=solver, items=items, comparisons=comparisons, l2=l2)
            if args.json:
                print(json.dumps(r))
                continue
            print(
                f"{r['solver']:<6} {r['l2']:>8.3g} {r['items']:>7} {r['comparisons']:>8} "
                f"{r['fit_s']:>7.3f} {r['solve_s']:>7.3f} {r['peak_rss_mb']:>7.0f} "
                f"{r['traced_peak_mb']:>7.0f} {r['iterations']:>4} {str(r['converged'])[0]:>4} "
                f"{r['held_out_ll']:>8.4f} {r['win_rate_ll']:>8.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

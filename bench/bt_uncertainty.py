"""Bradley-Terry uncertainty: time of the Laplace standard errors and of a percentile bootstrap
at campaign scale (default 100k items, 1M judgments), on bench/bt_fit.py's synthetic data
(all judgments, none held out). Prints one JSON object.

"fit" is `comparisons_from_outcomes` + `fit` with l2 from the data (what aggregation runs);
"laplace" is `laplace_intervals` at that fit (stochastic diagonal, --probes probes); with
--reference-probes R it also estimates the standard errors with R probes (another seed) and
reports how far the --probes estimate is from it; "bootstrap" is `bootstrap_intervals` with
--resamples refits at the fit's l2 (its full-data fit included).

    .venv/bin/python bench/bt_uncertainty.py
    .venv/bin/python bench/bt_uncertainty.py --items 2000 --judgments 20000 --reference-probes 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bt_fit import synthetic  # noqa: E402
from labeling import bradley_terry as bt  # noqa: E402
from labeling import uncertainty as unc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--judgments", type=int, default=1_000_000)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--reference-probes", type=int, default=128)
    parser.add_argument("--resamples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    data = synthetic(n_items=args.items, n_comparisons=args.judgments, seed=args.seed)
    first, second, outcome = data["first"], data["second"], data["outcome"]

    start = time.perf_counter()
    comparisons = bt.comparisons_from_outcomes(
        n_items=args.items, first=first, second=second, outcome=outcome
    )
    fitted = bt.fit(comparisons=comparisons)
    fit_s = time.perf_counter() - start

    start = time.perf_counter()
    laplace = unc.laplace_intervals(comparisons=comparisons, fitted=fitted, probes=args.probes)
    laplace_s = time.perf_counter() - start

    result: dict[str, object] = {
        "items": args.items,
        "judgments": args.judgments,
        "nproc": os.cpu_count(),
        "load": Path("/proc/loadavg").read_text().split()[:3],
        "l2": fitted.l2,
        "fit_s": round(fit_s, 3),
        "laplace_method": "dense" if args.items <= unc._DENSE_MAX_ITEMS else "stochastic",
        "laplace_probes": args.probes,
        "laplace_s": round(laplace_s, 3),
        "laplace_median_se": float(np.median(laplace.standard_error)),
    }
    if args.reference_probes:
        reference = unc.laplace_variances(
            comparisons=comparisons,
            scores=fitted.scores,
            l2=fitted.l2,
            probes=args.reference_probes,
            seed=12345,
        )
        relative = np.abs(laplace.standard_error / np.sqrt(reference) - 1.0)
        result["se_vs_reference_median_rel"] = float(np.median(relative))
        result["se_vs_reference_p99_rel"] = float(np.quantile(relative, 0.99))

    start = time.perf_counter()
    boot = unc.bootstrap_intervals(
        n_items=args.items,
        first=first,
        second=second,
        outcome=outcome,
        l2=fitted.l2,
        resamples=args.resamples,
        seed=args.seed,
    )
    bootstrap_s = time.perf_counter() - start
    result["bootstrap_resamples"] = args.resamples
    result["bootstrap_s"] = round(bootstrap_s, 3)
    result["bootstrap_s_per_resample"] = round(bootstrap_s / (args.resamples + 1), 3)
    result["width_ratio_bootstrap_over_laplace_median"] = float(
        np.median(boot.width / laplace.width)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

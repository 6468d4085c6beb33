"""Import and segmenting of a million-transition dataset, through the real services.

A D4RL-layout HDF5 file (and the same arrays as .npz) of N transitions is written first,
Hopper-like (11-dim float32 observations and next observations, 3-dim actions, infos/qpos 6,
infos/qvel 6), with episodes of 1,000 rows (a timeout each) — the shape of a D4RL
`hopper-medium` file. Then, timed separately and repeated:

- import: `annotation.services.dataset_import` (read, check every value, write the .npy
  field files, store the Dataset and its Episodes);
- segment: `annotation.services.campaign_create_from_dataset` with segments of 50 rows,
  stride 25 and 5,000 random pairs (cut, sample, store the items and pairs).

The database is the benchmark's own (--db, dropped and created again).

    .venv/bin/python bench/dataset_import.py                     # 1M transitions, 3 repeats
    .venv/bin/python bench/dataset_import.py --transitions 100000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import PG, code_version, database_reset, machine, migrate  # noqa: E402

EPISODE = 1000


def write_sources(directory: Path, n: int) -> dict[str, Path]:
    import h5py

    rng = np.random.default_rng(0)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[EPISODE - 1 :: EPISODE] = True
    data = {
        "observations": rng.normal(size=(n, 11)).astype(np.float32),
        "next_observations": rng.normal(size=(n, 11)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": timeouts,
        "infos/qpos": rng.normal(size=(n, 6)),
        "infos/qvel": rng.normal(size=(n, 6)),
    }
    h5 = directory / "source.hdf5"
    with h5py.File(h5, "w") as f:
        for name, values in data.items():
            f.create_dataset(name, data=values)
    npz = directory / "source.npz"
    np.savez(npz, **data)  # type: ignore[arg-type]  # numpy types allow_pickle as a kwarg
    return {"d4rl": h5, "npz": npz}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--db", default="feedback_bench_datasets")
    args = parser.parse_args()

    env = {
        "DATABASE_URL": f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{args.db}",
        "SECRET_KEY": "bench",
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "feedback_app.settings",
    }
    database_reset(args.db)
    migrate({**os.environ, **env})
    os.environ.update(env)
    with tempfile.TemporaryDirectory(prefix="bench-datasets-") as tmp:
        os.environ["DATASETS_ROOT"] = str(Path(tmp) / "root")
        import django

        django.setup()
        from annotation import services
        from annotation.models import Campaign

        started = time.perf_counter()
        sources = write_sources(Path(tmp), args.transitions)
        print(f"sources written in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        timings: dict[str, list[float]] = {"import_d4rl": [], "import_npz": [], "segment": []}
        for repeat in range(args.repeats):
            for fmt, path in sources.items():
                started = time.perf_counter()
                services.dataset_import(path=path, source_format=fmt, name=f"{fmt}-{repeat}")
                timings[f"import_{fmt}"].append(time.perf_counter() - started)
            started = time.perf_counter()
            campaign = services.campaign_create_from_dataset(
                name=f"bench {repeat}",
                slug=f"bench-{repeat}",
                source={
                    "dataset": f"d4rl-{repeat}",
                    "segment_length": 50,
                    "stride": 25,
                    "pairs": args.pairs,
                    "seed": repeat,
                },
            )
            timings["segment"].append(time.perf_counter() - started)
            assert Campaign.objects.get(pk=campaign.pk).pairs.count() == args.pairs
        result = {
            "benchmark": "dataset_import",
            "transitions": args.transitions,
            "episodes": -(-args.transitions // EPISODE),
            "pairs": args.pairs,
            "repeats": args.repeats,
            "median_s": {k: round(statistics.median(v), 2) for k, v in timings.items()},
            "all_s": {k: [round(x, 2) for x in v] for k, v in timings.items()},
            "import_and_segment_median_s": round(
                statistics.median(timings["import_d4rl"]) + statistics.median(timings["segment"]),
                2,
            ),
            "machine": machine(),
            "code": code_version(),
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

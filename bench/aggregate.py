"""A whole aggregation run (read, fit, write) over a campaign of a million judgments, through
the real service (`labeling.services.aggregation.aggregation_run`), twice: the first run
writes every score and label row, the second finds nothing changed.

The database is the benchmark's own (--db, dropped and created again). The campaign is seeded
with SQL and COPY in seconds: N items; pairs of a uniform item and a uniform other item, each
judged by 3 distinct annotators of 200; item_a wins with probability sigma(s_a - s_b),
s ~ N(0, 1); a quarter of the annotators flip their answer with probability 0.3 (as in
bench/bt_fit.py). Each pass of runs happens in a child process, so its peak RSS is the
run's own (the seed's arrays are not in it).

    .venv/bin/python bench/aggregate.py                        # 100k items, 1M judgments
    .venv/bin/python bench/aggregate.py --items 10000 --judgments 100000 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import PG, code_version, database_reset, machine, migrate, pg_connect  # noqa: E402

ANNOTATORS = 200
PER_PAIR = 3


def environment(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{args.db}",
        REDIS_URL=args.redis_url,
        CELERY_BROKER_URL=args.redis_url,
        SECRET_KEY="bench",
        DEBUG="0",
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="feedback_app.settings",
    )
    return env


def seed(args: argparse.Namespace) -> int:
    """Campaign, items, annotators, pairs and judgments; returns the campaign id."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    from annotation import services
    from annotation.models import Campaign

    campaign = services.campaign_create(
        name="bench aggregate", slug="bench-aggregate", status=Campaign.Status.ACTIVE
    )
    password = make_password(None)
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"agg{n:03d}", password=password) for n in range(ANNOTATORS)
    )
    user_ids = np.array([u.pk for u in users])

    rng = np.random.default_rng(args.seed)
    n_pairs = args.judgments // PER_PAIR
    with pg_connect(args.db) as conn:
        conn.execute(
            "INSERT INTO annotation_item (external_id, content, source, metadata, dataset,"
            " episode, clip, created_at, campaign_id) SELECT 'i' || g, 'item ' || g, 'bench',"
            " '{}', '', '', '', now(), %s FROM generate_series(1, %s) g",
            (campaign.pk, args.items),
        )
        item_ids = np.array(
            conn.execute(
                "SELECT id FROM annotation_item WHERE campaign_id = %s ORDER BY id", (campaign.pk,)
            ).fetchall()
        ).ravel()
        latent = rng.normal(size=args.items)
        first = rng.integers(0, args.items, 2 * n_pairs)
        second = (first + rng.integers(1, args.items, 2 * n_pairs)) % args.items
        low, high = np.minimum(first, second), np.maximum(first, second)
        keys = np.unique(low * args.items + high)  # one pair per unordered pair of items
        keys = rng.permutation(keys)[:n_pairs]
        a, b = keys // args.items, keys % args.items
        now = conn.execute("SELECT now()").fetchone()[0].isoformat()
        lines = "".join(
            f"0\t{now}\t{campaign.pk}\t{item_ids[x]}\t{item_ids[y]}\t0\t0\n"
            for x, y in zip(a.tolist(), b.tolist(), strict=True)
        )
        with conn.cursor().copy(
            "COPY annotation_pair (judgment_count, created_at, campaign_id, item_a_id, item_b_id,"
            " group_key, spread_rank) FROM STDIN"
        ) as copy:
            copy.write(lines)
        pair_ids = np.array(
            conn.execute(
                "SELECT id FROM annotation_pair WHERE campaign_id = %s ORDER BY id", (campaign.pk,)
            ).fetchall()
        ).ravel()
        # Three distinct annotators per pair; the quarter with the lowest index flips 30%.
        slot = rng.integers(0, ANNOTATORS, pair_ids.size)
        annotator = (slot[:, None] + np.array([0, 67, 134])[None, :]) % ANNOTATORS
        pair_index = np.repeat(np.arange(pair_ids.size), PER_PAIR)
        annotator = annotator.ravel()
        a_wins = rng.random(pair_index.size) < 1 / (
            1 + np.exp(latent[b[pair_index]] - latent[a[pair_index]])
        )
        flips = (annotator < ANNOTATORS // 4) & (rng.random(pair_index.size) < 0.3)
        choice = np.where(a_wins ^ flips, "a", "b")
        choice[rng.random(pair_index.size) < 0.05] = "tie"
        buffer = io.StringIO()
        for p, u, c, left in zip(
            pair_ids[pair_index].tolist(),
            user_ids[annotator].tolist(),
            choice.tolist(),
            item_ids[a[pair_index]].tolist(),
            strict=True,
        ):
            buffer.write(f'{{"overall": "{c}"}}\tactive\t{u}\t{campaign.pk}\t{left}\t{p}\n')
        with conn.cursor().copy(
            "COPY annotation_judgment (choices, status, annotator_id, campaign_id,"
            " shown_left_id, pair_id) FROM STDIN"
        ) as copy:
            copy.write(buffer.getvalue())
        conn.execute("VACUUM ANALYZE")
    return int(campaign.pk)


class _Timing(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.runs: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "aggregation"):
            self.runs.append(record.aggregation)


def runs(args: argparse.Namespace) -> dict:
    """Child process: the aggregation run, twice (first writes all, then nothing changed)."""
    import django

    django.setup()
    from labeling.blas import blas_threads_limited
    from labeling.models import AggregationState, ItemScore, PairLabel
    from labeling.services import aggregation

    timing = _Timing()
    logger = logging.getLogger("labeling.services.aggregation")
    logger.addHandler(timing)
    logger.setLevel(logging.INFO)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results = []
    for n in range(2):
        start = time.perf_counter()
        with blas_threads_limited(threads=args.threads):
            outcome = aggregation.aggregation_run(campaign_id=args.campaign)
        total = time.perf_counter() - start
        results.append(
            {
                "run": "first" if n == 0 else "unchanged",
                "outcome": outcome.value,
                "total_s": total,
                **timing.runs[-1],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    state = AggregationState.objects.get(campaign_id=args.campaign)
    return {
        "rss_before_mb": rss_start,
        "runs": results,
        "fit_l2": state.fit_l2,
        "fit_iterations": state.fit_iterations,
        "scores": ItemScore.objects.filter(campaign_id=args.campaign).count(),
        "labels": PairLabel.objects.filter(campaign_id=args.campaign).count(),
    }


def reset_results(args: argparse.Namespace) -> None:
    with pg_connect(args.db) as conn:
        conn.execute("DELETE FROM labeling_itemscore")
        conn.execute("DELETE FROM labeling_pairlabel")
        conn.execute("DELETE FROM labeling_aggregationstate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "_seed", "_runs"])
    parser.add_argument("--db", default="feedback_bench_agg")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--judgments", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="passes of (first, unchanged)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads during the runs")
    parser.add_argument("--campaign", type=int, default=0)
    args = parser.parse_args()
    if args.mode == "_seed":
        print(json.dumps({"campaign": seed(args)}))
        return
    if args.mode == "_runs":
        print(json.dumps(runs(args)))
        return

    env = environment(args)
    common = [f"--db={args.db}", f"--redis-url={args.redis_url}", f"--threads={args.threads}"]

    def child(mode: str, *options: str) -> dict:
        out = subprocess.run(
            [sys.executable, __file__, mode, *common, *options],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))

    start = time.perf_counter()
    database_reset(args.db)
    migrate(env)
    campaign = child(
        "_seed", f"--items={args.items}", f"--judgments={args.judgments}", f"--seed={args.seed}"
    )["campaign"]
    print(
        f"# bench/aggregate.py items={args.items} judgments={args.judgments} "
        f"threads={args.threads} seeded in {time.perf_counter() - start:.0f} s; "
        f"machine={json.dumps(machine())}"
    )
    print(f"# code {json.dumps(code_version())}")
    passes = []
    for n in range(args.repeats):
        reset_results(args)
        result = child("_runs", f"--campaign={campaign}")
        passes.append(result)
        for r in result["runs"]:
            print(
                f"pass {n + 1} {r['run']:<9} total {r['total_s']:6.2f} s  read {r['read_s']:5.2f}"
                f"  fit {r['fit_s']:5.2f}  write {r['write_s']:5.2f}  judgments {r['judgments']}"
                f"  peak RSS {r['peak_rss_mb']:5.0f} MB  rows {json.dumps(r['written'])}",
                flush=True,
            )
    print(
        f"# fit_l2 {passes[-1]['fit_l2']}, iterations {passes[-1]['fit_iterations']}, "
        f"rows: {passes[-1]['scores']} scores, {passes[-1]['labels']} labels; "
        f"RSS after django.setup {passes[-1]['rss_before_mb']:.0f} MB"
    )
    for kind in ("first", "unchanged"):
        rows = [r for p in passes for r in p["runs"] if r["run"] == kind]
        medians = {
            k: statistics.median(r[k] for r in rows)
            for k in ("total_s", "read_s", "fit_s", "write_s", "peak_rss_mb")
        }
        print(
            f"median {kind:<9} total {medians['total_s']:.2f} s  read {medians['read_s']:.2f}"
            f"  fit {medians['fit_s']:.2f}  write {medians['write_s']:.2f}"
            f"  peak RSS {medians['peak_rss_mb']:.0f} MB  (n={len(rows)})"
        )


if __name__ == "__main__":
    main()

"""Reads as a campaign grows: the campaign list page, the scores and labels API, the admin's
campaign list and the clip lookup of the media view, timed in-process (Django's test client,
no server) against a large seeded campaign in a PostgreSQL database of its own.

Prints the median and p90 of `--repeat` runs of each read, the queries each one ran, and the
plans (EXPLAIN ANALYZE) of the clip lookup, the list's counts and a deep scores page. Runs on
older code too (what it cannot find there it leaves out), for before/after comparisons:

    .venv/bin/python bench/reads.py --episodes 25000 --segments 4 --repeat 15

The seed: one trajectory campaign of `episodes` x `segments` items, each with a clip name,
and every pair of segments within an episode (25,000 x 4 gives 100,000 items and 150,000
pairs); `--annotators` annotators who each judged `--judged` pairs; a score for every item
under two criteria and a label for every judged pair; plus `--small` small campaigns.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import database_reset, machine, migrate, pct, pg_connect  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", default="feedback_bench_reads")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--episodes", type=int, default=25_000)
    p.add_argument("--segments", type=int, default=4)
    p.add_argument("--annotators", type=int, default=20)
    p.add_argument("--judged", type=int, default=1000, help="pairs judged per annotator")
    p.add_argument("--small", type=int, default=5, help="small campaigns beside the big one")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--reuse", action="store_true", help="keep the seeded database of a run")
    p.add_argument("--no-plans", action="store_true")
    return p.parse_args()


def environment(args: argparse.Namespace, media: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.db}",
        "REDIS_URL": args.redis_url,
        "ENV_FILE": "/dev/null",
        "DEBUG": "false",
        "SECRET_KEY": "bench-reads",
        "MEDIA_ROOT": media,
        "THROTTLE_API": "1000000/min",
        "LOG_LEVEL": "WARNING",
    }


def seed(args: argparse.Namespace) -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.db import transaction

    from annotation.models import (
        Campaign,
        CampaignRole,
        Criterion,
        Item,
        Judgment,
        Membership,
        Pair,
        pairs_prepare,
    )
    from labeling.models import AggregationState, ItemScore, PairLabel

    User = get_user_model()
    password = make_password(None)
    with transaction.atomic():
        users = User.objects.bulk_create(
            [User(username=f"ann{i:03d}", password=password) for i in range(args.annotators)]
        )
        User.objects.create(username="super", password=password, is_staff=True, is_superuser=True)
        manager = User.objects.create(username="manager", password=password, is_staff=True)

        def campaign(slug: str, episodes: int, judged: int) -> None:
            c = Campaign.objects.create(
                name=slug, slug=slug, kind=Campaign.Kind.TRAJECTORY, status="active"
            )
            criteria = Criterion.objects.bulk_create(
                Criterion(campaign=c, slug=s, label=s, position=n)
                for n, s in enumerate(["overall", "safety"])
            )
            items = Item.objects.bulk_create(
                (
                    Item(
                        campaign=c,
                        dataset="CartPole-v1",
                        episode=f"ep{e}",
                        start=s * 40,
                        length=40,
                        clip=f"clips/{c.pk:08x}{e:012x}{s:012x}.webm",
                    )
                    for e in range(episodes)
                    for s in range(args.segments)
                ),
                batch_size=5000,
            )
            pairs = [
                Pair(campaign=c, item_a=a, item_b=b)
                for e in range(episodes)
                for a, b in combinations(items[e * args.segments : (e + 1) * args.segments], 2)
            ]
            Pair.objects.bulk_create(pairs_prepare(pairs), batch_size=5000)
            Membership.objects.bulk_create(Membership(campaign=c, user=u) for u in users)
            CampaignRole.objects.create(campaign=c, user=manager, role="manager")
            step = max(1, len(pairs) // max(1, judged))
            judged_pairs = pairs[::step][:judged]
            Judgment.objects.bulk_create(
                (
                    Judgment(
                        pair=p,
                        annotator=u,
                        campaign=c,
                        choices={"overall": "a", "safety": "tie"},
                        shown_left_id=p.item_a_id,
                    )
                    for p in judged_pairs
                    for u in users
                ),
                batch_size=5000,
            )
            ItemScore.objects.bulk_create(
                (
                    ItemScore(
                        item=i, criterion=k, campaign=c, score=(i.pk % 97) / 97, comparisons=3
                    )
                    for i in items
                    for k in criteria
                ),
                batch_size=5000,
            )
            PairLabel.objects.bulk_create(
                (
                    PairLabel(pair=p, criterion=k, campaign=c, prefer_a=0.5, count=len(users))
                    for p in judged_pairs
                    for k in criteria
                ),
                batch_size=5000,
            )
            AggregationState.objects.create(campaign=c, judgments_used=len(users) * judged)

        campaign("big", args.episodes, args.judged)
        for n in range(args.small):
            campaign(f"small-{n}", 10, 5)


def timed(repeat: int, call: Callable[[], object]) -> tuple[list[float], int]:
    """Milliseconds of each of `repeat` calls (after one warm-up), and the queries of one
    more."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    with CaptureQueriesContext(connection) as ctx:
        call()
    return times, len(ctx.captured_queries)


def captured(call: Callable[[], object]) -> list[str]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        call()
    return [q["sql"] for q in ctx.captured_queries]


def explain(sql: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def main() -> None:
    args = parse()
    media = tempfile.mkdtemp(prefix="bench-reads-media-")
    env = environment(args, media)
    if not args.reuse:
        database_reset(args.db)
        migrate(env)
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "feedback_app.settings"
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.test import Client, override_settings

    # Static files by their plain names, as the test suite does: the hashed manifest needs
    # collectstatic first, and the pages here are timed for their queries, not their assets.
    plain = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
    override_settings(STORAGES={**settings.STORAGES, "staticfiles": plain}).enable()

    from annotation import selectors
    from annotation.models import Campaign, Item, Pair

    if not args.reuse:
        started = time.perf_counter()
        seed(args)
        with pg_connect(args.db) as conn:
            conn.execute("VACUUM ANALYZE")
        print(f"seeded in {time.perf_counter() - started:.0f} s")
    big = Campaign.objects.get(slug="big")
    n_items = Item.objects.filter(campaign=big).count()
    n_pairs = Pair.objects.filter(campaign=big).count()
    print(f"campaign 'big': {n_items} items, {n_pairs} pairs; machine {machine()}")

    User = get_user_model()
    annotator, superuser = User.objects.get(username="ann000"), User.objects.get(username="super")
    ann, sup = Client(HTTP_HOST="localhost"), Client(HTTP_HOST="localhost")
    ann.force_login(annotator)
    sup.force_login(superuser)
    campaigns = list(Campaign.objects.all())
    has_totals = hasattr(selectors, "_totals_key")

    def cold(client: Client) -> Callable[[], object]:
        def call():
            if has_totals:  # as if every cached total had just expired
                cache.delete_many([selectors._totals_key(c) for c in campaigns])
            return client.get("/")

        return call

    def ok(response):
        assert response.status_code in (200, 206), (response.status_code, response.content[:300])
        if hasattr(response, "streaming_content"):
            b"".join(response.streaming_content)
        return response

    # Clips: small files for the names looked up, so the media view can serve a range.
    names = list(
        Item.objects.filter(campaign=big).order_by("?").values_list("clip", flat=True)[:50]
    )
    for name in names:
        path = Path(media) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(4096))
    lookups = iter(names * (args.repeat + 2))
    middle = Item.objects.filter(campaign=big).order_by("id")[n_items // 2].pk
    scores = "/api/v1/campaigns/big/scores/"
    reads: dict[str, Callable[[], object]] = {
        "home page, annotator (totals cached)": lambda: ok(ann.get("/")),
        "home page, annotator (totals expired)": lambda: ok(cold(ann)()),
        "home page, superuser (totals cached)": lambda: ok(sup.get("/")),
        "admin campaign list, superuser": lambda: ok(sup.get("/admin/annotation/campaign/")),
        "scores API, first page": lambda: ok(sup.get(scores)),
        "scores API, page from the middle": lambda: ok(sup.get(f"{scores}?after_item={middle}")),
        "labels API, first page": lambda: ok(sup.get("/api/v1/campaigns/big/labels/")),
        "admin pair list, superuser": lambda: ok(sup.get("/admin/annotation/pair/")),
        "clip lookup (selector)": lambda: selectors.clip_item_for(
            user=annotator, name=next(lookups)
        ),
        "media Range request": lambda: ok(
            ann.get(f"/media/{next(lookups)}", HTTP_RANGE="bytes=100-1099")
        ),
    }
    if not has_totals:
        del reads["home page, annotator (totals expired)"]
    print(f"\n{'read':40} {'median ms':>10} {'p90 ms':>8} {'queries':>8}   (n={args.repeat})")
    for label, call in reads.items():
        times, queries = timed(args.repeat, call)
        print(f"{label:40} {statistics.median(times):10.2f} {pct(times, 90):8.2f} {queries:8d}")
    body = sup.get(scores).json()
    print(f"\nscores API first page: {len(body['scores'])} rows, next = {body.get('next')!r}")

    if args.no_plans:
        return
    lookup = [s for s in captured(lambda: reads["clip lookup (selector)"]()) if "clip" in s]
    print("\n--- plan: clip lookup ---\n" + explain(lookup[-1]))
    home = captured(cold(ann))
    counts = [s for s in home if "COUNT(" in s.upper()]
    for sql in counts:
        print("\n--- plan: campaign list count ---\n" + sql[:300] + "\n" + explain(sql))
    page = [
        s for s in captured(lambda: sup.get(f"{scores}?after_item={middle}")) if "itemscore" in s
    ]
    print("\n--- plan: scores page from the middle ---\n" + explain(page[-1]))


if __name__ == "__main__":
    main()

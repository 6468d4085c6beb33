"""Where a judgment's milliseconds go in the web process: the annotate loop (lease, then judge)
driven in-process through Django's WSGI handler, with every middleware, no HTTP server and
no network. Prints, per loop, the CPU time, the wall time and the SQL statements of each
request, and with --profile the functions that take the time (cProfile, sorted by own time).

    .venv/bin/python bench/hot_path.py --judgments 2000                 # both loop styles
    .venv/bin/python bench/hot_path.py --judgments 2000 --profile 25    # plus a profile

Two loop styles are measured in the same run: `two calls` (POST next/, then POST judgment/)
and `one call` (POST judgment/ with "next": true, whose answer carries the next lease). Its own database
(feedback_bench_hot) is dropped and recreated; the Celery broker is Redis db 14, flushed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import stack  # noqa: E402

DB_NAME = "feedback_bench_hot"
REDIS_URL = "redis://127.0.0.1:6379/14"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--judgments", type=int, default=2000, help="judgments per loop style")
    p.add_argument("--annotators", type=int, default=32)
    p.add_argument("--prompts", type=int, default=3000)
    p.add_argument("--sort", default="tottime", help="profile order: tottime or cumulative")
    p.add_argument("--profile", type=int, default=0, help="print the top N functions")
    p.add_argument("--no-seed", action="store_true", help="reuse the database as it is")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    servers = stack.Stack(
        db_name=DB_NAME, logdir=Path("/tmp/bench_hot"), port=0, redis_url=REDIS_URL
    )
    per_style = args.judgments
    if not args.no_seed:
        servers.database_prepare()
        seeded = servers.seed(
            {
                "slug": "hot",
                "k": 3,
                "prompts": args.prompts,
                "responses": 4,
                "users": args.annotators * 2,
                "user_prefix": "hot",
            }
        )
        Path("/tmp/bench_hot/seed.json").write_text(json.dumps(seeded))
    seeded = json.loads(Path("/tmp/bench_hot/seed.json").read_text())
    os.environ.update(servers.env)
    servers.flush_redis()

    # Django after os.environ has the stack's settings (read when settings load), and its
    # handler and connection after django.setup().
    import django

    django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connection, reset_queries

    handler = WSGIHandler()

    def call(
        path: str, token: str, body: dict[str, Any] | None, profiler: cProfile.Profile | None
    ) -> tuple[dict[str, Any], tuple[float, float, int]]:
        """POST through the handler: the JSON answer ({} when empty) and (CPU s, wall s,
        SQL statements)."""
        raw = json.dumps(body or {}).encode()
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "HTTP_HOST": "127.0.0.1",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(raw),
            "wsgi.errors": sys.stderr,
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(raw)),
            "HTTP_AUTHORIZATION": f"Token {token}",
        }
        if "?" in path:
            environ["PATH_INFO"], environ["QUERY_STRING"] = path.split("?", 1)
        status: list[str] = []

        def start_response(
            code: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            status.append(code)
            return lambda data: None

        reset_queries()
        t0, c0 = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        body_out = b"".join(handler(environ, start_response))
        if profiler:
            profiler.disable()
        sample = (time.process_time() - c0, time.perf_counter() - t0, len(connection.queries))
        code = int(status[0].split()[0])
        if code >= 400:
            raise RuntimeError(f"{path}: {status[0]} {body_out[:300]!r}")
        return (json.loads(body_out) if body_out else {}), sample

    users = seeded["users"]
    results = {}
    for style, tokens in (
        ("two calls", [u["token"] for u in users[: args.annotators]]),
        ("one call", [u["token"] for u in users[args.annotators :]]),
    ):
        leases: dict[str, int | None] = {}
        samples: dict[str, list[tuple[float, float, int]]] = {"next": [], "judgment": []}
        profiler = cProfile.Profile() if args.profile else None
        connection.force_debug_cursor = True  # count statements without DEBUG's overhead elsewhere

        done = 0
        rng = random.Random(7)
        while done < per_style:
            for token in tokens:
                lease = leases.get(token)
                if lease is None:
                    out, sample = call("/api/v1/campaigns/hot/next/", token, None, profiler)
                    samples["next"].append(sample)
                    lease = out.get("assignment")
                choice = rng.choice(["left", "right", "tie"])
                path = f"/api/v1/assignments/{lease}/judgment/"
                body = {"choices": choice, "next": style == "one call"}
                out, sample = call(path, token, body, profiler)
                samples["judgment"].append(sample)
                nxt = out.get("next") if style == "one call" else None
                leases[token] = nxt["assignment"] if nxt else None
                done += 1
        connection.force_debug_cursor = False
        cpu = sum(s[0] for v in samples.values() for s in v) / done
        wall = sum(s[1] for v in samples.values() for s in v) / done
        queries = sum(s[2] for v in samples.values() for s in v) / done
        results[style] = (cpu, wall, queries)
        print(
            f"{style:>9}: {done} judgments; per judgment: CPU {cpu * 1000:.2f} ms, wall "
            f"{wall * 1000:.2f} ms, {queries:.1f} SQL statements "
            f"(next: {len(samples['next'])} calls, median CPU "
            f"{statistics.median([s[0] for s in samples['next']] or [0]) * 1000:.2f} ms; "
            f"judgment: median CPU "
            f"{statistics.median([s[0] for s in samples['judgment']]) * 1000:.2f} ms)",
            flush=True,
        )
        if profiler:
            report = io.StringIO()
            pstats.Stats(profiler, stream=report).sort_stats(args.sort).print_stats(args.profile)
            print(report.getvalue())
    servers.flush_redis()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Load test of the annotation loop through the REST API: lease a pair, judge it, repeat.

    .venv/bin/python bench/annotate_loop.py [--concurrency 1,8,32] [--duration 20]
        [--port 8765] [--workers 2] [--threads 8] [--no-worker] [--client httpx|raw]
        [--json out.json] [--sql "CREATE INDEX ..."]

What it does, all on 127.0.0.1:
  1. drops and recreates the database `feedback_bench`, migrates it, and seeds one active text
     campaign (k=3, --prompts prompts x --responses responses, every pair of a prompt's
     responses) and one annotator per client of every concurrency level, each a member with an
     API token;
  2. starts gunicorn through bin/web (gunicorn.conf.py, DEBUG=0, no access log) and, unless
     --no-worker, a Celery worker, with REDIS_URL on Redis database 14, which is flushed at
     the start and the end (bench/stack.py: the processes shared with bench/crowd.py);
  3. for each concurrency level c, runs c annotators (one keep-alive httpx.AsyncClient each,
     fresh users per level) that POST next/ then POST judgment/ for --warmup + --duration
     seconds; only loops started after the warm-up count;
  4. prints judgments/s, p50/p99 of next, submit and the whole loop, errors, and how many
     CPU cores each process group used during the measured window.

gunicorn and the worker run in their own process groups and are always killed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

try:
    from bench import stack
except ImportError:  # run as a script: bench/ is on sys.path, the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import stack

DB_NAME = "feedback_bench"
REDIS_URL = "redis://127.0.0.1:6379/14"
SLUG = "bench"
CHOICES = ("left", "right", "tie")
CLK_TCK = stack.CLK_TCK
pct = stack.pct


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, utime+stime ticks, comm) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[11]) + int(rest[12]), comm


class CpuMeter:
    """CPU used by gunicorn (master and workers), the Celery worker, PostgreSQL (every
    `postgres` process: backends, autovacuum, WAL writer...), this load generator and the
    whole machine. Sampled per process every half second, so the CPU of a process that exits
    mid-window (a backend closed at CONN_MAX_AGE, an autovacuum worker) is counted up to its
    last sample."""

    def __init__(self, groups: dict[str, int]) -> None:
        self.groups = groups
        self.totals: dict[str, float] = {}
        self.last: dict[int, int] = {}

    def sample(self) -> None:
        procs = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (st := _stat(int(entry))) is not None:
                procs[int(entry)] = st
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        owner: dict[int, str] = {}
        for name, root in self.groups.items():
            todo = [root]
            while todo:
                pid = todo.pop()
                if pid in procs:
                    owner[pid] = name
                    todo += children.get(pid, [])
        first = not self.last
        for pid, (_, ticks, comm) in procs.items():
            group = owner.get(pid) or ("postgres" if comm.startswith("postgres") else None)
            if group is not None and not first:
                delta = ticks - self.last.get(pid, 0)
                self.totals[group] = self.totals.get(group, 0) + max(0, delta)
        self.last = {pid: ticks for pid, (_, ticks, _) in procs.items()}

    async def measure(self, until: float) -> dict[str, float]:
        """Sample until `until` (a perf_counter time); return cores used per group."""
        self.sample()
        wall0, self0, busy0 = time.perf_counter(), os.times(), stack.machine_busy_ticks()
        while (left := until - time.perf_counter()) > 0:
            await asyncio.sleep(min(0.5, left))
            self.sample()
        wall1, self1, busy1 = time.perf_counter(), os.times(), stack.machine_busy_ticks()
        elapsed = wall1 - wall0
        out = {name: self.totals.get(name, 0) / CLK_TCK / elapsed for name in self.groups}
        out["postgres"] = self.totals.get("postgres", 0) / CLK_TCK / elapsed
        out["loadgen"] = (self1.user + self1.system - self0.user - self0.system) / elapsed
        out["machine"] = (busy1 - busy0) / CLK_TCK / elapsed
        out["other"] = max(0.0, out["machine"] - sum(v for k, v in out.items() if k != "machine"))
        return out


# ---- load ------------------------------------------------------------------------------------


@dataclass
class LevelStats:
    concurrency: int
    duration: float
    next_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    loop_ms: list[float] = field(default_factory=list)
    judgments: int = 0
    exhausted: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    def error(self, key: str, sample: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{key}: {sample[:300]}")


@dataclass
class Reply:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> dict:
        return json.loads(self.content)


class RawClient:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams, for --client raw: it costs
    the load generator a fraction of httpx's CPU, which matters when both share 2 cores.
    Handles only what this API answers: Content-Length bodies (or none, for 204)."""

    def __init__(self, port: int, token: str, timeout: float = 30) -> None:
        self.port, self.timeout = port, timeout
        self.head = f"Host: 127.0.0.1:{port}\r\nAuthorization: Token {token}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, json_body: dict | None = None) -> Reply:
        return await asyncio.wait_for(self._post(path, json_body), self.timeout)

    async def _post(self, path: str, json_body: dict | None) -> Reply:
        body = json.dumps(json_body).encode() if json_body is not None else b""
        ctype = "Content-Type: application/json\r\n" if json_body is not None else ""
        request = (
            f"POST {path} HTTP/1.1\r\n{self.head}{ctype}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        try:
            self.writer.write(request)
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError):
            await self.close()  # the server closed an idle keep-alive connection: retry once
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.writer.write(request)
            head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(
            (k.strip().lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:] if x)
        )
        length = int(headers.get("content-length", "0"))
        content = await self.reader.readexactly(length) if length else b""
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Reply(status, content)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


class HttpxClient:
    def __init__(self, port: int, token: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Token {token}"},
            timeout=30,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    async def post(self, path: str, json_body: dict | None = None) -> Reply:
        r = await self.client.post(path, json=json_body)
        return Reply(r.status_code, r.content)

    async def close(self) -> None:
        await self.client.aclose()


async def annotator(
    client: RawClient | HttpxClient,
    slug: str,
    stats: LevelStats,
    measure_from: float,
    stop_at: float,
    seed: int,
    one_call: bool = False,
) -> None:
    rng = random.Random(seed)
    held: int | None = None  # the next lease, when the last submit carried it ("one" loop)
    try:
        while (t0 := time.perf_counter()) < stop_at:
            counted = t0 >= measure_from
            if held is None:
                try:
                    r = await client.post(f"/api/v1/campaigns/{slug}/next/")
                except Exception as exc:  # transport errors of either client
                    stats.error("next:" + type(exc).__name__, str(exc))
                    await asyncio.sleep(0.05)
                    continue
                if r.status_code == 204:
                    stats.exhausted += 1
                    return
                if r.status_code != 200:
                    stats.error(f"next:{r.status_code}", r.text)
                    await asyncio.sleep(0.05)
                    continue
                held = r.json()["assignment"]
                asked_next = True
            else:
                asked_next = False
            t1 = time.perf_counter()
            body: dict = {"choices": rng.choice(CHOICES)}
            if one_call:
                body["next"] = True
            assignment, held = held, None
            try:
                r = await client.post(f"/api/v1/assignments/{assignment}/judgment/", body)
            except Exception as exc:
                stats.error("submit:" + type(exc).__name__, str(exc))
                continue
            t2 = time.perf_counter()
            if r.status_code != 201:
                stats.error(f"submit:{r.status_code}", r.text)
                continue
            if one_call:
                nxt = r.json().get("next")
                held = nxt["assignment"] if nxt else None
                if nxt is None:
                    stats.exhausted += 1
                    return
            if counted and t2 <= stop_at:
                if asked_next:
                    stats.next_ms.append((t1 - t0) * 1000)
                stats.submit_ms.append((t2 - t1) * 1000)
                stats.loop_ms.append((t2 - t0) * 1000)
                stats.judgments += 1
    finally:
        await client.close()


async def run_level(
    tokens: list[str], args: argparse.Namespace, groups: dict[str, int]
) -> LevelStats:
    stats = LevelStats(concurrency=len(tokens), duration=args.duration)
    now = time.perf_counter()
    measure_from = now + args.warmup
    stop_at = measure_from + args.duration
    make = RawClient if args.client == "raw" else HttpxClient
    tasks = [
        asyncio.create_task(
            annotator(
                make(args.port, tok), SLUG, stats, measure_from, stop_at, i, args.loop == "one"
            )
        )
        for i, tok in enumerate(tokens)
    ]
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    stats.cpu = await CpuMeter(groups).measure(stop_at)
    # In-flight loops finish (their requests time out after 30 s at worst) but are not counted.
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=90)
    return stats


# ---- report ----------------------------------------------------------------------------------


def summary(s: LevelStats) -> dict:
    return {
        "concurrency": s.concurrency,
        "judgments_per_s": s.judgments / s.duration,
        "judgments": s.judgments,
        "next_p50_ms": pct(s.next_ms, 50),
        "next_p99_ms": pct(s.next_ms, 99),
        "submit_p50_ms": pct(s.submit_ms, 50),
        "submit_p99_ms": pct(s.submit_ms, 99),
        "loop_p50_ms": pct(s.loop_ms, 50),
        "loop_p99_ms": pct(s.loop_ms, 99),
        "errors": sum(s.errors.values()),
        "error_kinds": s.errors,
        "exhausted_annotators": s.exhausted,
        "cpu_cores": {k: round(v, 2) for k, v in s.cpu.items()},
    }


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'conc':>4} {'judg/s':>7} {'next p50':>9} {'p99':>7} {'submit p50':>11} {'p99':>7}"
        f" {'loop p50':>9} {'p99':>7} {'errors':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['concurrency']:>4} {r['judgments_per_s']:>7.1f} {r['next_p50_ms']:>9.1f}"
            f" {r['next_p99_ms']:>7.1f} {r['submit_p50_ms']:>11.1f} {r['submit_p99_ms']:>7.1f}"
            f" {r['loop_p50_ms']:>9.1f} {r['loop_p99_ms']:>7.1f} {r['errors']:>6}"
        )
    print("(latencies in ms; CPU in cores used during the measured window)")
    for r in rows:
        cpu = "  ".join(f"{k}={v:.2f}" for k, v in r["cpu_cores"].items())
        print(f"  c={r['concurrency']:<3} cpu: {cpu}")
        if r["judgments_per_s"] > 0:
            per = "  ".join(
                f"{k}={1000 * v / r['judgments_per_s']:.1f}"
                for k, v in r["cpu_cores"].items()
                if k in ("gunicorn", "postgres", "worker", "loadgen")
            )
            print(f"        CPU ms per judgment: {per}")
        if r["errors"]:
            print(f"  c={r['concurrency']:<3} errors: {r['error_kinds']}")


# ---- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--concurrency", default="1,8,32", help="comma-separated client counts (default 1,8,32)"
    )
    p.add_argument("--duration", type=float, default=20, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=3, help="unmeasured seconds before each level")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (WEB_CONCURRENCY)")
    p.add_argument("--threads", type=int, default=8, help="gunicorn threads per worker")
    p.add_argument(
        "--no-worker",
        action="store_true",
        help="do not run a Celery worker (aggregation tasks just queue in Redis)",
    )
    p.add_argument(
        "--client",
        choices=("httpx", "raw"),
        default="httpx",
        help="httpx.AsyncClient (default) or a minimal asyncio HTTP/1.1 client that leaves "
        "more of the CPU to the server",
    )
    p.add_argument(
        "--loop",
        choices=("two", "one"),
        default="two",
        help="two: POST next/ then POST judgment/ (default); one: each judgment carries "
        '"next": true and its answer the next lease, one request per judgment',
    )
    p.add_argument("--prompts", type=int, default=3000, help="prompts to seed")
    p.add_argument(
        "--responses",
        type=int,
        default=4,
        help="responses per prompt; every pair of them is a pair (4 -> 6 pairs)",
    )
    p.add_argument(
        "--sql",
        action="append",
        default=[],
        metavar="STATEMENT",
        help="experiment hook: SQL run against feedback_bench after seeding "
        "(e.g. an index to try); repeatable",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep-logs", action="store_true", help="print where the server logs are")
    args = p.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stack.exit_on_sigterm()
    logdir = Path(tempfile.mkdtemp(prefix="annotate_loop-"))
    servers = stack.Stack(
        db_name=DB_NAME,
        logdir=logdir,
        port=args.port,
        web_workers=args.workers,
        threads=args.threads,
        redis_url=REDIS_URL,
    )
    env = servers.env
    info = stack.machine()
    print(
        f"machine: {info['nproc']} cores, {info['cpu_model']}, loadavg {' '.join(info['loadavg'])}"
    )
    print(
        f"gunicorn: gthread, workers={args.workers} threads={args.threads}, keepalive 5 s, "
        f"no access log, DEBUG=0, CONN_MAX_AGE={env.get('CONN_MAX_AGE', '60')}; "
        f"celery worker: {'no' if args.no_worker else 'yes (concurrency 1)'}; "
        f"client: {args.client}; loop: {args.loop} request(s) per judgment"
    )

    t = time.perf_counter()
    servers.database_prepare()
    seeded = servers.seed(
        {
            "slug": SLUG,
            "name": "Benchmark",
            "k": 3,
            "prompts": args.prompts,
            "responses": args.responses,
            "users": sum(args.levels),
            "user_prefix": "bench",
        }
    )
    for statement in args.sql:
        stack.run_sql(DB_NAME, statement)
        print(f"ran: {statement}")
    servers.flush_redis()
    tokens = [u["token"] for u in seeded["users"]]
    print(
        f"seeded {seeded['pairs']} pairs (k=3), {len(tokens)} annotators "
        f"in {time.perf_counter() - t:.1f}s"
    )

    results: list[dict] = []
    try:
        if not args.no_worker:
            servers.start_worker(concurrency=1, loglevel="WARNING")
        servers.start_web()
        groups = {"gunicorn": servers.procs["web"].pid}
        if not args.no_worker:
            groups["worker"] = servers.procs["worker"].pid
        offset = 0
        for c in args.levels:
            level_tokens, offset = tokens[offset : offset + c], offset + c
            stats = asyncio.run(run_level(level_tokens, args, groups))
            row = summary(stats)
            results.append(row)
            print(
                f"c={c}: {row['judgments_per_s']:.1f} judgments/s, loop p50 "
                f"{row['loop_p50_ms']:.1f} ms p99 {row['loop_p99_ms']:.1f} ms, "
                f"{row['errors']} errors",
                flush=True,
            )
            for sample in stats.error_samples:
                print(f"    {sample}")
            if stats.exhausted:
                print(f"    {stats.exhausted} annotators ran out of pairs: seed more (--prompts)")
    finally:
        servers.close()
    print()
    print_table(results)
    if args.keep_logs:
        print(f"server logs: {logdir}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "workers": args.workers,
                    "threads": args.threads,
                    "celery_worker": not args.no_worker,
                    "client": args.client,
                    "duration": args.duration,
                    "warmup": args.warmup,
                    "sql": args.sql,
                    "code": stack.code_version(),
                    "settings": env["DJANGO_SETTINGS_MODULE"],
                    "pairs": seeded["pairs"],
                    "levels": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Load test of the annotation loop through the REST API: lease a pair, judge it, repeat.

    .venv/bin/python bench/annotate_loop.py [--concurrency 1,8,32] [--duration 20]
        [--port 8765] [--workers 2] [--threads 8] [--no-worker] [--client httpx|raw]
        [--json out.json] [--sql "CREATE INDEX ..."]

What it does, all on 127.0.0.1:
  1. drops and recreates the database `feedback_bench`, migrates it, and seeds one active text
     campaign (k=3, --prompts prompts x --responses responses, every pair of a prompt's
     responses) and one annotator per client of every concurrency level, each a member with an
     API token;
  2. starts gunicorn with gunicorn.conf.py (DEBUG=0, no access log) and, unless --no-worker,
     a Celery worker, with REDIS_URL on Redis database 14, which is flushed at the end;
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
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
if not (VENV_BIN / "gunicorn").exists():
    VENV_BIN = ROOT / ".venv" / "bin"
DB_NAME = "feedback_bench"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379/14"
SLUG = "bench"
CHOICES = ("left", "right", "tie")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- environment, database, seed -------------------------------------------------------------


def bench_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{DB_NAME}",
        REDIS_URL=REDIS_URL,
        CELERY_BROKER_URL=REDIS_URL,
        SECRET_KEY="bench",
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        HOST="127.0.0.1",
        PORT=str(args.port),
        WEB_CONCURRENCY=str(args.workers),
        GUNICORN_THREADS=str(args.threads),
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("DJANGO_SETTINGS_MODULE", "feedback_app.settings")
    return env


def database_reset() -> None:
    import psycopg

    with psycopg.connect(dbname="postgres", autocommit=True, connect_timeout=5, **PG) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def run_sql(statement: str) -> None:
    import psycopg

    with psycopg.connect(dbname=DB_NAME, autocommit=True, connect_timeout=5, **PG) as conn:
        conn.execute(statement)


def code_version() -> dict[str, str]:
    """Short hashes of the files whose edits change the numbers (the tree is edited often)."""
    import hashlib

    files = [
        "annotation/models.py",
        *sorted(str(f.relative_to(ROOT)) for f in (ROOT / "annotation/migrations").glob("0*.py")),
        "annotation/services.py",
        "annotation/selectors.py",
        "annotation/api.py",
        "annotation/serializers.py",
        "labeling/services.py",
        "feedback_app/settings.py",
        "gunicorn.conf.py",
    ]
    return {
        f: hashlib.sha256((ROOT / f).read_bytes()).hexdigest()[:12]
        for f in files
        if (ROOT / f).exists()
    }


def redis_flush() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).flushdb()


def seed(n_users: int, n_prompts: int, n_responses: int) -> None:
    """Runs in a child process (`annotate_loop.py _seed ...`) so the load generator never
    imports Django. Prints {"slug", "tokens", "pairs"} as JSON on the last line."""
    from itertools import combinations

    import django

    sys.path.insert(0, str(ROOT))
    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.db import transaction
    from rest_framework.authtoken.models import Token

    from annotation import services
    from annotation.models import Campaign, Item, Membership, Pair, Prompt

    rng = random.Random(1)
    words = [
        "the",
        "a",
        "model",
        "answer",
        "because",
        "therefore",
        "which",
        "result",
        "first",
        "then",
        "data",
        "step",
    ]

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n)).capitalize() + "."

    with transaction.atomic():
        campaign = services.campaign_create(
            name="Benchmark",
            slug=SLUG,
            kind=Campaign.Kind.TEXT,
            status=Campaign.Status.ACTIVE,
            judgments_per_pair=3,
        )
        prompts = Prompt.objects.bulk_create(
            [
                Prompt(
                    campaign=campaign,
                    external_id=f"p{i}",
                    messages=[{"role": "user", "content": text(30)}],
                )
                for i in range(n_prompts)
            ],
            batch_size=2000,
        )
        items = Item.objects.bulk_create(
            [
                Item(
                    campaign=campaign,
                    prompt=p,
                    external_id=f"{p.external_id}-r{j}",
                    content=text(80),
                    source=f"model-{j}",
                )
                for p in prompts
                for j in range(n_responses)
            ],
            batch_size=2000,
        )
        pairs = []
        for i in range(n_prompts):
            group = sorted(it.pk for it in items[i * n_responses : (i + 1) * n_responses])
            pairs += [
                Pair(campaign=campaign, item_a_id=a, item_b_id=b) for a, b in combinations(group, 2)
            ]
        Pair.objects.bulk_create(pairs, batch_size=5000)
        password = make_password(None)
        users = get_user_model().objects.bulk_create(
            [get_user_model()(username=f"bench{i:04d}", password=password) for i in range(n_users)]
        )
        tokens = Token.objects.bulk_create([Token(user=u, key=Token.generate_key()) for u in users])
        Membership.objects.bulk_create([Membership(campaign=campaign, user=u) for u in users])
    print(json.dumps({"slug": SLUG, "tokens": [t.key for t in tokens], "pairs": len(pairs)}))


def run_seed(env: dict[str, str], n_users: int, n_prompts: int, n_responses: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "_seed", str(n_users), str(n_prompts), str(n_responses)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- processes -------------------------------------------------------------------------------


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    fh = open(log, "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM the leader (gunicorn and celery shut their children down), then SIGKILL
    whatever is left of its process group."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(
        f"gunicorn did not answer /healthz within {timeout:.0f}s:\n{log.read_text()[-3000:]}"
    )


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, utime+stime ticks, comm) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[11]) + int(rest[12]), comm


def _machine_busy() -> int:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


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
            name = owner.get(pid) or ("postgres" if comm.startswith("postgres") else None)
            if name is not None and not first:
                delta = ticks - self.last.get(pid, 0)
                self.totals[name] = self.totals.get(name, 0) + max(0, delta)
        self.last = {pid: ticks for pid, (_, ticks, _) in procs.items()}

    async def measure(self, until: float) -> dict[str, float]:
        """Sample until `until` (a perf_counter time); return cores used per group."""
        self.sample()
        wall0, self0, busy0 = time.perf_counter(), os.times(), _machine_busy()
        while (left := until - time.perf_counter()) > 0:
            await asyncio.sleep(min(0.5, left))
            self.sample()
        wall1, self1, busy1 = time.perf_counter(), os.times(), _machine_busy()
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
        import httpx

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
) -> None:
    rng = random.Random(seed)
    try:
        while (t0 := time.perf_counter()) < stop_at:
            counted = t0 >= measure_from
            try:
                r = await client.post(f"/api/v1/campaigns/{slug}/next/")
            except Exception as exc:  # transport errors of either client
                stats.error("next:" + type(exc).__name__, str(exc))
                await asyncio.sleep(0.05)
                continue
            t1 = time.perf_counter()
            if r.status_code == 204:
                stats.exhausted += 1
                return
            if r.status_code != 200:
                stats.error(f"next:{r.status_code}", r.text)
                await asyncio.sleep(0.05)
                continue
            assignment = r.json()["assignment"]
            try:
                r = await client.post(
                    f"/api/v1/assignments/{assignment}/judgment/",
                    {"choices": rng.choice(CHOICES)},
                )
            except Exception as exc:
                stats.error("submit:" + type(exc).__name__, str(exc))
                continue
            t2 = time.perf_counter()
            if r.status_code != 201:
                stats.error(f"submit:{r.status_code}", r.text)
                continue
            if counted and t2 <= stop_at:
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
        asyncio.create_task(annotator(make(args.port, tok), SLUG, stats, measure_from, stop_at, i))
        for i, tok in enumerate(tokens)
    ]
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    stats.cpu = await CpuMeter(groups).measure(stop_at)
    # In-flight loops finish (their requests time out after 30 s at worst) but are not counted.
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=90)
    return stats


# ---- report ----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


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


def machine() -> dict:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
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
    if argv[:1] == ["_seed"]:
        seed(*(int(a) for a in argv[1:4]))
        return 0
    args = parse_args(argv)
    env = bench_env(args)
    logdir = Path(tempfile.mkdtemp(prefix="annotate_loop-"))
    info = machine()
    print(
        f"machine: {info['nproc']} cores, {info['cpu_model']}, loadavg {' '.join(info['loadavg'])}"
    )
    print(
        f"gunicorn: gthread, workers={args.workers} threads={args.threads}, keepalive 5 s, "
        f"access log /dev/null, DEBUG=0, CONN_MAX_AGE={env.get('CONN_MAX_AGE', '60')}; "
        f"celery worker: {'no' if args.no_worker else 'yes (concurrency 1)'}; "
        f"client: {args.client}"
    )

    t = time.perf_counter()
    database_reset()
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )
    seeded = run_seed(env, sum(args.levels), args.prompts, args.responses)
    run_sql("ANALYZE")  # fresh planner statistics, as autovacuum would soon give them
    for statement in args.sql:
        run_sql(statement)
        print(f"ran: {statement}")
    redis_flush()
    print(
        f"seeded {seeded['pairs']} pairs (k=3), {len(seeded['tokens'])} annotators "
        f"in {time.perf_counter() - t:.1f}s"
    )

    gunicorn = worker = None
    results: list[dict] = []
    try:
        if not args.no_worker:
            worker = start(
                [
                    str(VENV_BIN / "celery"),
                    "-A",
                    "feedback_app",
                    "worker",
                    "--queues",
                    "labels,default",
                    "--concurrency",
                    "1",
                    "--loglevel",
                    "WARNING",
                ],
                env,
                logdir / "worker.log",
            )
        gunicorn = start(
            [
                str(VENV_BIN / "gunicorn"),
                "feedback_app.wsgi:application",
                "--config",
                "gunicorn.conf.py",
                "--access-logfile",
                "/dev/null",
            ],
            env,
            logdir / "gunicorn.log",
        )
        wait_healthy(args.port, gunicorn, logdir / "gunicorn.log")
        groups = {"gunicorn": gunicorn.pid}
        if worker is not None:
            groups["worker"] = worker.pid
        tokens = seeded["tokens"]
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
        stop(gunicorn)
        stop(worker)
        try:
            redis_flush()
        except Exception as exc:  # the report matters more than the cleanup message
            print(f"could not flush {REDIS_URL}: {exc}", file=sys.stderr)
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
                    "code": code_version(),
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

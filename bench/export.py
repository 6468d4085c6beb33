"""Throughput of the streamed JSON Lines export over HTTP, with the web process's memory.

    .venv/bin/python bench/export.py [--judgments 1000000] [--repeat 3]
        [--app-dir DIR ...] [--port 8790] [--threads 8] [--reseed] [--check]
        [--json out.json]

What it does, all on 127.0.0.1:
  1. (re)creates the database `feedback_bench_export`, migrates it, and seeds one text
     campaign (bench/stack.py's seed: prompts of 30 words, 4 responses of 80 words each, every
     pair of a prompt's responses) with enough prompts for --judgments judgments, 3 a pair by
     3 of --annotators annotators, written with COPY. A database already holding exactly that
     campaign is reused unless --reseed;
  2. for every --app-dir (default: this checkout; give it twice, e.g. an old commit's
     worktree and this one, for an A/B in one run) starts gunicorn with that checkout's
     gunicorn.conf.py through its bin/web, one worker process (WEB_CONCURRENCY=1) so the
     export's process is known;
  3. --repeat times, the apps taking turns, streams GET
     /api/v1/campaigns/<slug>/export/judgments.jsonl with a raw-socket HTTP/1.1 client that
     decodes the chunked body and counts lines, while a thread polls the worker's RSS;
  4. prints per run and as medians: rows/s, MB/s, time to the first response byte and to
     the first row, the worker's peak RSS (polled every 10 ms; VmHWM, the kernel's own
     high-water mark since the worker started, at the end) and the CPU seconds the worker and
     PostgreSQL spent.

--check afterwards parses every line of one more export per app and prints a digest of the
rows as parsed (keys in order, values): equal digests mean the apps export the same rows.

gunicorn runs in its own process group and is always killed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

try:
    from bench import stack
except ImportError:  # run as a script: bench/ is on sys.path, the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import stack
from bench.annotate_loop import CpuMeter

DB_NAME = "feedback_bench_export"
REDIS_URL = "redis://127.0.0.1:6379/12"
SLUG = "bench-export"
RESPONSES = 4  # responses a prompt: 6 pairs
K = 3  # judgments a pair, as campaigns ask for by default
WINDOW = 1000  # pairs judged together
CHOICES = ("a", "b", "tie", "both_bad")
RECV = 1 << 20


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--judgments", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--app-dir",
        action="append",
        type=Path,
        default=[],
        help="checkout whose gunicorn serves the export (repeatable; default: this one)",
    )
    p.add_argument("--annotators", type=int, default=100, help="when seeding")
    p.add_argument("--port", type=int, default=8790, help="first port; one per app")
    p.add_argument("--threads", type=int, default=8, help="gunicorn threads per worker")
    p.add_argument("--redis-url", default=REDIS_URL)
    p.add_argument("--reseed", action="store_true", help="seed even if the database fits")
    p.add_argument("--check", action="store_true", help="parse every row once per app")
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args(argv)
    args.app_dir = [d.resolve() for d in args.app_dir] or [stack.ROOT]
    return args


# ---- seed ------------------------------------------------------------------------------------


def seeded_token(n: int) -> str | None:
    """The staff token, if the database already holds the campaign with exactly n judgments."""
    import psycopg

    try:
        with stack.pg_connect(DB_NAME) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM annotation_judgment j WHERE j.campaign_id = c.id),"
                " (SELECT t.key FROM authtoken_token t JOIN auth_user u ON u.id = t.user_id"
                "  WHERE u.username = 'export-staff')"
                " FROM annotation_campaign c WHERE c.slug = %s",
                (SLUG,),
            ).fetchone()
    except psycopg.Error:
        return None
    return row[1] if row and row[0] == n else None


def seed(servers: stack.Stack, n: int, annotators: int) -> str:
    """Seed the campaign and n judgments, K of each pair by different annotators, in rounds
    over windows of WINDOW pairs (as leases hand pairs out: a pair's judgments come close
    together, not all at once); return the staff token."""
    pairs_per_prompt = RESPONSES * (RESPONSES - 1) // 2
    servers.database_prepare()
    seeded = servers.seed(
        {
            "slug": SLUG,
            "name": "Export benchmark",
            "k": K,
            "prompts": -(-n // (pairs_per_prompt * K)),
            "responses": RESPONSES,
            "users": annotators,
            "user_prefix": "export",
            "staff": True,
        }
    )
    users = [u["id"] for u in seeded["users"]]
    rng = random.Random(2)
    with stack.pg_connect(DB_NAME) as conn:
        pair_rows = conn.execute(
            "SELECT id, item_a_id, item_b_id FROM annotation_pair WHERE campaign_id = %s"
            " ORDER BY id",
            (seeded["campaign_id"],),
        ).fetchall()
        columns = (
            "pair_id, annotator_id, campaign_id, choices, shown_left_id, duration_ms, status,"
            " created_at"
        )
        with conn.cursor().copy(f"COPY annotation_judgment ({columns}) FROM STDIN") as copy:
            written = 0
            for start in range(0, len(pair_rows), WINDOW):
                window = pair_rows[start : start + WINDOW]
                for k in range(K):
                    for p, (pair_id, a, b) in enumerate(window):
                        if written == n:
                            break
                        choice = CHOICES[rng.randrange(4)]
                        copy.write_row(
                            (
                                pair_id,
                                users[(start + p + k) % len(users)],
                                seeded["campaign_id"],
                                f'{{"overall": "{choice}"}}',
                                a if rng.random() < 0.5 else b,
                                rng.randrange(500, 60000),
                                "active",
                                f"2025-01-{1 + written % 28:02d} 12:{written % 60:02d}:"
                                f"{written // 60 % 60:02d}.{written % 1000:03d}+00",
                            )
                        )
                        written += 1
        conn.execute(
            "UPDATE annotation_pair p SET judgment_count = s.n FROM (SELECT pair_id, count(*) n"
            " FROM annotation_judgment GROUP BY pair_id) s WHERE s.pair_id = p.id"
        )
        conn.execute("VACUUM ANALYZE")
    return seeded["staff_token"]


# ---- measurement -----------------------------------------------------------------------------


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class RssPoller(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS"))

    def stop(self) -> int:
        self.done.set()
        self.join()
        return max(self.peak_kb, status_kb(self.pid, "VmRSS"))


@dataclass
class Run:
    rows: int
    header_rows: int
    bytes: int
    seconds: float
    first_byte_ms: float
    first_row_ms: float


def stream(port: int, path: str, token: str, *, sink=None) -> Run:
    """GET `path` over one HTTP/1.1 connection; decode the chunked body, count its lines.
    `sink`, if given, gets every piece of the body."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    buf = bytearray(RECV)
    view = memoryview(buf)
    t0 = time.perf_counter()
    sock.sendall(request)
    n = sock.recv_into(view)
    first_byte = time.perf_counter() - t0
    data = bytearray(view[:n])
    while b"\r\n\r\n" not in data:
        n = sock.recv_into(view)
        if not n:
            raise RuntimeError(f"connection closed in the headers: {bytes(data[:500])!r}")
        data += view[:n]
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if " 200 " not in lines[0] + " ":
        raise RuntimeError(f"{lines[0]}: {rest[:500]!r}")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if headers.get("transfer-encoding") != "chunked":
        raise RuntimeError(f"expected a chunked body, got {headers}")
    header_rows = int(headers.get("x-row-count", -1))

    pending = bytearray(rest)  # undecoded bytes
    rows = total = 0
    first_row = None
    left = 0  # bytes of the current chunk's data still to come
    ended = False
    while True:
        pos = 0
        while pos < len(pending):
            if left > 0:
                take = min(left, len(pending) - pos)
                piece = pending[pos : pos + take]
                rows += piece.count(b"\n")
                total += take
                if sink is not None:
                    sink(piece)
                if first_row is None and rows:
                    first_row = time.perf_counter() - t0
                pos += take
                left -= take
                if not left:
                    left = -2  # the CRLF after the data
                continue
            if left < 0:
                skip = min(-left, len(pending) - pos)
                pos += skip
                left += skip
                continue
            eol = pending.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(pending[pos:eol].split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                ended = True
                break
            left = size
        if ended:
            break
        del pending[:pos]
        n = sock.recv_into(view)
        if not n:
            raise RuntimeError(f"body cut after {total} bytes, {rows} rows")
        pending += view[:n]
    seconds = time.perf_counter() - t0
    sock.close()
    return Run(rows, header_rows, total, seconds, 1000 * first_byte, 1000 * (first_row or 0))


def digest(port: int, path: str, token: str) -> tuple[int, str]:
    """Rows and a digest of every row as parsed (key order kept)."""
    h = hashlib.sha256()
    tail = bytearray()
    count = 0

    def sink(piece: bytes) -> None:
        nonlocal count
        tail.extend(piece)
        *whole, rest = bytes(tail).split(b"\n")
        for line in whole:
            h.update(json.dumps(json.loads(line), ensure_ascii=False).encode() + b"\n")
            count += 1
        tail[:] = rest

    stream(port, path, token, sink=sink)
    assert not tail, "the body does not end with a newline"
    return count, h.hexdigest()


# ---- main ------------------------------------------------------------------------------------


def start_app(servers: stack.Stack, app_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = dict(servers.env, PORT=str(port), WEB_CONCURRENCY="1")
    env["PYTHONPATH"] = str(app_dir)
    proc = subprocess.Popen(
        ["sh", "bin/web"],
        cwd=app_dir,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack.wait_healthy(port, proc, log)
    return proc


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stack.exit_on_sigterm()
    logdir = Path(tempfile.mkdtemp(prefix="export-bench-"))
    servers = stack.Stack(
        db_name=DB_NAME,
        logdir=logdir,
        port=args.port,
        threads=args.threads,
        redis_url=args.redis_url,
    )
    info = stack.machine()
    print(
        f"machine: {info['nproc']} cores, {info['cpu_model']}, loadavg {' '.join(info['loadavg'])}"
    )
    t = time.perf_counter()
    token = None if args.reseed else seeded_token(args.judgments)
    if token is None:
        token = seed(servers, args.judgments, args.annotators)
        print(f"seeded {args.judgments} judgments in {time.perf_counter() - t:.1f}s")
    else:
        print(f"reused the seeded database ({args.judgments} judgments)")
    path = f"/api/v1/campaigns/{SLUG}/export/judgments.jsonl"
    print(
        f"gunicorn: gthread, 1 worker, {args.threads} threads, DEBUG=0, no access log; GET {path}"
    )

    apps: list[tuple[Path, int, subprocess.Popen]] = []
    results: dict[str, list[dict]] = {str(d): [] for d in args.app_dir}
    try:
        for i, app_dir in enumerate(args.app_dir):
            port = args.port + i
            proc = start_app(servers, app_dir, port, logdir / f"gunicorn-{i}.log")
            apps.append((app_dir, port, proc))
        for r in range(args.repeat):
            for app_dir, port, proc in apps:
                (worker,) = stack.children_of(proc.pid)
                poller = RssPoller(worker)
                poller.start()
                meter = CpuMeter({"worker": worker})
                meter.sample()
                run = stream(port, path, token)
                meter.sample()
                peak = poller.stop()
                cpu = meter.totals.get("worker", 0) / stack.CLK_TCK
                pg = meter.totals.get("postgres", 0) / stack.CLK_TCK
                if run.rows != run.header_rows or run.rows != args.judgments:
                    raise RuntimeError(
                        f"{run.rows} rows, X-Row-Count {run.header_rows}, expected {args.judgments}"
                    )
                row = {
                    "rows_per_s": run.rows / run.seconds,
                    "mb_per_s": run.bytes / run.seconds / 1e6,
                    "seconds": run.seconds,
                    "bytes": run.bytes,
                    "first_byte_ms": run.first_byte_ms,
                    "first_row_ms": run.first_row_ms,
                    "peak_rss_mb": peak / 1024,
                    "vm_hwm_mb": status_kb(worker, "VmHWM") / 1024,
                    "worker_cpu_s": cpu,
                    "postgres_cpu_s": pg,
                }
                results[str(app_dir)].append(row)
                print(
                    f"run {r + 1} {app_dir}: {row['rows_per_s']:,.0f} rows/s "
                    f"({row['mb_per_s']:.0f} MB/s, {run.seconds:.2f} s), first byte "
                    f"{run.first_byte_ms:.0f} ms, first row {run.first_row_ms:.0f} ms, peak RSS "
                    f"{row['peak_rss_mb']:.0f} MB, CPU worker {cpu:.2f} s / postgres {pg:.2f} s",
                    flush=True,
                )
        print()
        print(f"medians of {args.repeat} runs, {args.judgments:,} rows:")
        for app_dir, _, proc in apps:
            rows = results[str(app_dir)]
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            (worker,) = stack.children_of(proc.pid)
            print(
                f"  {app_dir}: {med['rows_per_s']:,.0f} rows/s, {med['mb_per_s']:.0f} MB/s, "
                f"first byte {med['first_byte_ms']:.0f} ms, first row {med['first_row_ms']:.0f}"
                f" ms, peak RSS {med['peak_rss_mb']:.0f} MB (VmHWM "
                f"{status_kb(worker, 'VmHWM') / 1024:.0f} MB), CPU worker "
                f"{med['worker_cpu_s']:.2f} s, postgres {med['postgres_cpu_s']:.2f} s"
            )
        if args.check:
            for app_dir, port, _ in apps:
                count, hexdigest = digest(port, path, token)
                print(f"  {app_dir}: {count} rows parsed, digest {hexdigest[:16]}")
    finally:
        for _, _, proc in apps:
            stack.stop(proc)
        servers.close()
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "judgments": args.judgments,
                    "threads": args.threads,
                    "code": stack.code_version(),
                    "runs": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

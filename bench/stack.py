"""The server stack the benchmarks drive: a PostgreSQL database of their own, gunicorn, Celery
worker and beat, a broker, all on 127.0.0.1, plus the seed of a campaign with annotators.

`bench/annotate_loop.py` (throughput of the annotate loop) and `bench/crowd.py` (a crowd with
fault injection and invariant checks) both start their servers through `Stack`, so the two
run the same processes the same way (gunicorn through `bin/web`, the worker and beat as in the
Procfile). Every process runs in its own process group; `Stack.close()` kills them all and is
safe to call twice, from `finally`, `atexit` or a signal handler.

The seed runs in a child process (`python bench/stack.py _seed '<json spec>'`) so a load
generator never imports Django.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any, TypedDict

import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
if not (VENV_BIN / "gunicorn").exists():
    VENV_BIN = ROOT / ".venv" / "bin"


class PgServer(TypedDict):
    host: str
    port: int
    user: str


PG: PgServer = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
# Connections of the driver itself carry this name, so a fault that terminates "every
# connection of the app's database" can spare them.
DRIVER_APP_NAME = "bench-driver"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- small helpers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


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


def code_version() -> dict[str, str]:
    """Short hashes of the files whose edits change the numbers (the tree is edited often)."""
    files = [
        "annotation/models.py",
        *sorted(str(f.relative_to(ROOT)) for f in (ROOT / "annotation/migrations").glob("0*.py")),
        *sorted(str(f.relative_to(ROOT)) for f in (ROOT / "labeling/migrations").glob("0*.py")),
        "annotation/services.py",
        *sorted(str(f.relative_to(ROOT)) for f in (ROOT / "annotation/services").glob("*.py")),
        "annotation/selectors.py",
        "annotation/api.py",
        "annotation/serializers.py",
        "labeling/services.py",
        *sorted(str(f.relative_to(ROOT)) for f in (ROOT / "labeling/services").glob("*.py")),
        *sorted(str(f.relative_to(ROOT)) for f in (ROOT / "labeling/tasks").glob("*.py")),
        "feedback_app/settings.py",
        "gunicorn.conf.py",
    ]
    return {
        f: hashlib.sha256((ROOT / f).read_bytes()).hexdigest()[:12]
        for f in files
        if (ROOT / f).is_file()
    }


def machine_busy_ticks() -> int:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


# ---- database --------------------------------------------------------------------------------


def pg_connect(dbname: str, **kwargs: Any) -> Any:
    return psycopg.connect(
        dbname=dbname,
        autocommit=True,
        connect_timeout=5,
        application_name=DRIVER_APP_NAME,
        **PG,
        **kwargs,
    )


def database_reset(db_name: str) -> None:
    with pg_connect("postgres") as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db_name}"')


def run_sql(db_name: str, statement: str) -> None:
    with pg_connect(db_name) as conn:
        conn.execute(statement)


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )


def terminate_backends(db_name: str) -> int:
    """pg_terminate_backend every connection to `db_name` except the driver's own."""
    with pg_connect("postgres") as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()"
            " AND coalesce(application_name, '') <> %s",
            (db_name, DRIVER_APP_NAME),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


# ---- seed ------------------------------------------------------------------------------------

WORDS = (
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
)


def seed(spec: dict) -> dict:
    """Create one active text campaign and its annotators. Runs in a child process with the
    stack's environment. `spec`: slug, name, k, lease_seconds, prompts, responses, users,
    user_prefix, staff (also create a staff user with a token, for exports).

    Returns {"slug", "campaign_id", "pairs", "users": [{"username", "id", "token"}],
    "staff_token"}."""
    # Django only here, in the seed's child process: the load generators that import this
    # module never load it, and the models can be imported only after django.setup().
    import django

    sys.path.insert(0, str(ROOT))
    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.db import transaction
    from rest_framework.authtoken.models import Token

    from annotation import services
    from annotation.models import Campaign, Item, Membership, Pair, Prompt, pairs_prepare

    rng = random.Random(1)
    n_prompts, n_responses = spec["prompts"], spec["responses"]

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."

    User = get_user_model()
    with transaction.atomic():
        extra = {"lease_seconds": spec["lease_seconds"]} if spec.get("lease_seconds") else {}
        campaign = services.campaign_create(
            name=spec.get("name", spec["slug"]),
            slug=spec["slug"],
            kind=Campaign.Kind.TEXT,
            status=Campaign.Status.ACTIVE,
            judgments_per_pair=spec.get("k", 3),
            **extra,
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
        Pair.objects.bulk_create(pairs_prepare(pairs), batch_size=5000)
        password = make_password(None)
        prefix = spec.get("user_prefix", "bench")
        users = User.objects.bulk_create(
            [User(username=f"{prefix}{i:04d}", password=password) for i in range(spec["users"])]
        )
        tokens = Token.objects.bulk_create([Token(user=u, key=Token.generate_key()) for u in users])
        Membership.objects.bulk_create([Membership(campaign=campaign, user=u) for u in users])
        staff_token = None
        if spec.get("staff"):
            staff = User.objects.create(
                username=f"{prefix}-staff", password=password, is_staff=True, is_superuser=True
            )
            staff_token = Token.objects.create(user=staff, key=Token.generate_key()).key
    return {
        "slug": campaign.slug,
        "campaign_id": campaign.pk,
        "pairs": len(pairs),
        "users": [
            {"username": u.username, "id": u.pk, "token": t.key}
            for u, t in zip(users, tokens, strict=True)
        ],
        "staff_token": staff_token,
    }


def run_seed(env: dict[str, str], spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "_seed", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"seeding failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- processes -------------------------------------------------------------------------------


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start `cmd` in a process group of its own (so a kill reaches its children, and a
    Ctrl-C in the terminal reaches only the driver, which then stops it)."""
    fh = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen | None, *, term_wait: float = 20) -> None:
    """SIGTERM the leader (gunicorn and celery shut their children down), then SIGKILL
    whatever is left of its process group."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(term_wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
            out.append(int(entry))
    return sorted(out)


def wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
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


def wait_log(log: Path, needle: str, *, offset: int, timeout: float) -> float | None:
    """Seconds until `needle` appears in `log` after byte `offset`, None on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(OSError), open(log, "rb") as fh:
            fh.seek(offset)
            if needle.encode() in fh.read():
                return time.monotonic() - t0
        time.sleep(0.2)
    return None


class Stack:
    """gunicorn + Celery worker (+ beat) + broker for one benchmark database.

    With `redis_url` None a throwaway `redis-server` (no persistence) is started on a spare
    port and used as the broker, so it can be stopped and restarted as a fault; otherwise
    the given URL (a database number of the benchmark's own) is used and flushed on close.
    """

    def __init__(
        self,
        *,
        db_name: str,
        logdir: Path,
        port: int,
        web_workers: int = 2,
        threads: int = 8,
        redis_url: str | None = None,
        access_log: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.db_name = db_name
        self.logdir = logdir
        self.port = port
        self.web_workers = web_workers
        self.threads = threads
        self.own_redis = redis_url is None
        self.redis_port = free_port() if self.own_redis else None
        self.redis_url = redis_url or f"redis://127.0.0.1:{self.redis_port}/0"
        self.procs: dict[str, subprocess.Popen] = {}
        self.worker_args: list[str] = []
        self.closed = False
        logdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            DATABASE_URL=f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{db_name}",
            REDIS_URL=self.redis_url,
            CELERY_BROKER_URL=self.redis_url,
            SECRET_KEY="bench",
            DEBUG="0",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            HOST="127.0.0.1",
            PORT=str(port),
            WEB_CONCURRENCY=str(web_workers),
            GUNICORN_THREADS=str(threads),
            GUNICORN_ACCESSLOG=str(logdir / "access.log") if access_log else "",
            MIGRATE_ON_START="false",  # the driver migrates before starting anything
            VAR_DIR=str(logdir / "var"),
            CELERY_BEAT_SCHEDULE_FILENAME=str(logdir / "celerybeat-schedule"),
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
            # Rate limits off: every simulated annotator comes from 127.0.0.1.
            THROTTLE_API="",
            THROTTLE_JUDGMENTS="",
            THROTTLE_LOGIN="",
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        env.update(extra_env or {})
        env.setdefault("DJANGO_SETTINGS_MODULE", "feedback_app.settings")
        self.env = env

    def log(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    # -- setup

    def database_prepare(self) -> None:
        database_reset(self.db_name)
        migrate(self.env)

    def seed(self, spec: dict) -> dict:
        seeded = run_seed(self.env, spec)
        run_sql(self.db_name, "ANALYZE")  # fresh planner statistics, as autovacuum would give
        return seeded

    # -- processes

    def start_redis(self) -> None:
        assert self.own_redis
        self.procs["redis"] = start(
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.logdir),
            ],
            self.env,
            self.log("redis"),
        )
        self.wait_redis()

    def wait_redis(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1)
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"redis-server did not answer:\n{self.log('redis').read_text()[-2000:]}")

    def stop_redis(self) -> None:
        stop(self.procs.pop("redis", None), term_wait=10)

    def start_web(self) -> None:
        # As the Procfile runs it: bin/web (with MIGRATE_ON_START=false), which execs gunicorn
        # with gunicorn.conf.py, so the process started here is the gunicorn master.
        self.procs["web"] = start(["sh", "bin/web"], self.env, self.log("gunicorn"))
        wait_healthy(self.port, self.procs["web"], self.log("gunicorn"))

    def web_worker_pids(self) -> list[int]:
        return children_of(self.procs["web"].pid)

    def start_worker(
        self, *, concurrency: int = 2, queues: str = "labels,default", loglevel: str = "INFO"
    ) -> None:
        self.worker_args = [
            str(VENV_BIN / "celery"),
            "-A",
            "feedback_app",
            "worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"bench-worker-{self.port}@%h",
            "--loglevel",
            loglevel,
        ]
        self.procs["worker"] = start(self.worker_args, self.env, self.log("worker"))

    def restart_worker(self) -> None:
        self.procs["worker"] = start(self.worker_args, self.env, self.log("worker"))

    def start_beat(self) -> None:
        self.procs["beat"] = start(
            [
                str(VENV_BIN / "celery"),
                "-A",
                "feedback_app",
                "beat",
                "--pidfile",
                str(self.logdir / "celerybeat.pid"),
                "--schedule",
                str(self.logdir / "celerybeat-schedule"),
                "--loglevel",
                "INFO",
            ],
            self.env,
            self.log("beat"),
        )

    def restart(self, name: str) -> None:
        """Start the process `name` again (after it died), as it was started first."""
        {
            "web": self.start_web,
            "worker": self.restart_worker,
            "beat": self.start_beat,
            "redis": self.start_redis,
        }[name]()

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    def flush_redis(self) -> None:
        redis.Redis.from_url(self.redis_url, socket_connect_timeout=3).flushdb()

    def close(self) -> None:
        """Stop every process this stack started; idempotent."""
        if self.closed:
            return
        self.closed = True
        for name in ("web", "beat", "worker", "redis"):
            proc = self.procs.pop(name, None)
            with contextlib.suppress(Exception):
                stop(proc)
        if not self.own_redis:
            try:
                self.flush_redis()
            except Exception as exc:  # the report matters more than the cleanup message
                print(f"could not flush {self.redis_url}: {exc}", file=sys.stderr)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exit_on_sigterm() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit, so `finally` blocks (and Stack.close) run."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_seed"]:
        print(json.dumps(seed(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: stack.py _seed '<json spec>' (used by the benchmarks)")

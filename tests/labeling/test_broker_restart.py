"""A real worker (the Procfile's command, with beat embedded) survives its Redis broker
restarting empty -- the compose Redis keeps nothing -- while it holds an aggregation, and the
scores still catch up. Runs a throwaway redis-server on a spare port, never the shared one."""

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
from django.db import connection
from django.db.models.functions import Now

from feedback_app.celery import app
from labeling.models import AggregationState, ItemScore
from labeling.tasks import aggregate_campaign
from tests.factories import judged_campaign

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_start(port: int, folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                return proc
        assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def worker_command() -> list[str]:
    line = next(
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("worker:")
    )
    # One process is enough here; beat embedded (-B) so the sweep runs on its real schedule.
    return [*shlex.split(line.split(":", 1)[1]), "--concurrency", "1", "--beat"]


def test_worker_survives_a_broker_restart_and_scores_catch_up(transactional_db, tmp_path):
    campaign = judged_campaign()

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    db = connection.settings_dict
    env = {
        **os.environ,
        "ENV_FILE": "/dev/null",
        "REDIS_URL": url,
        "CELERY_BROKER_URL": url,
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        "CELERY_BEAT_SCHEDULE_FILENAME": str(tmp_path / "beat-schedule"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    broker = redis_start(port, tmp_path)
    log_path = tmp_path / "worker.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in the finally below
    worker = subprocess.Popen(
        worker_command(),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def tail() -> str:
        """The worker's log lines that say what went wrong, then the end of its log."""
        text = log_path.read_text()
        loud = [line for line in text.splitlines() if " CRITICAL " in line or " ERROR " in line]
        return "\n".join(loud)[-3000:] + "\n...\n" + text[-2000:]

    try:
        assert wait_for(lambda: "ready." in log_path.read_text(), 30), tail()
        # A judgment's request: the flag set (database clock), one task published with a
        # countdown, which the worker receives and holds until it is due.
        AggregationState.objects.create(campaign=campaign, pending=True, requested_at=Now())
        requested = time.monotonic()
        with app.connection_for_write(url) as conn:
            aggregate_campaign.apply_async((campaign.pk,), countdown=60, connection=conn)
        assert wait_for(lambda: "aggregate_campaign[" in log_path.read_text(), 10), tail()

        broker.kill()
        broker.wait(timeout=10)
        time.sleep(1.0)
        broker = redis_start(port, tmp_path)  # the same port, empty

        # celery 5.7.0 exits here: "Unrecoverable error: AttributeError("'NoneType' object
        # has no attribute 'hostname'")".
        reconnected = lambda: log_path.read_text().count("Connected to redis") >= 2  # noqa: E731
        assert wait_for(lambda: worker.poll() is not None or reconnected(), 20), tail()
        assert worker.poll() is None, tail()

        # The held message went with the old broker (and its countdown is not due for a
        # minute): the sweep, run by beat, finds the flag stale and enqueues again.
        assert wait_for(lambda: ItemScore.objects.filter(campaign=campaign).exists(), 30), tail()
        assert time.monotonic() - requested < 30
        assert "was owed and had no task" in log_path.read_text()
        state = AggregationState.objects.get(campaign=campaign)
        assert state.judgments_used == 2 and not state.pending
        assert worker.poll() is None, tail()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        broker.kill()
        broker.wait(timeout=10)
        log.close()

"""The core flow in embedded mode: no DATABASE_URL or REDIS_URL, so SQLite and kombu's
filesystem broker under a fresh VAR_DIR, served by gunicorn with a separate Celery worker
process -- the same commands the Procfile runs."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procfile_command(name: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in Procfile")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    var = tmp_path_factory.mktemp("var")
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY")
    }
    env.update(
        VAR_DIR=str(var),
        DEBUG="false",
        HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY="2",
        GUNICORN_THREADS="4",
        PATH=f"{BIN}:{env['PATH']}",
        GUNICORN_ACCESSLOG="/dev/null",
        ENV_FILE="/dev/null",  # a developer's .env must not switch this run to PostgreSQL
    )
    for command in (["migrate", "--noinput"], ["seed_demo"]):
        seed = subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert seed.returncode == 0, seed.stderr
    tokens = dict(
        re.findall(r"^\s+\w+\s+(\S+)\s+password \S+\s+API token (\w+)$", seed.stdout, re.M)
    )
    logs = {name: open(var / f"{name}.log", "w") for name in ("web", "worker")}  # noqa: SIM115
    procs = [
        subprocess.Popen(
            procfile_command(name),
            shell=True,
            cwd=ROOT,
            env=env,
            stdout=logs[name],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for name in ("web", "worker")
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (var / "web.log").read_text()
            time.sleep(0.3)
        yield {"base": base, "tokens": tokens, "var": var}
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            # The shell may be gone while a worker it started still shuts down: end the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for f in logs.values():
            f.close()


def test_runs_on_sqlite_and_the_filesystem_broker(embedded):
    var = embedded["var"]
    assert (var / "db.sqlite3").exists() and (var / "secret_key").exists()
    assert (var / "broker" / "messages").is_dir()
    health = httpx.get(embedded["base"] + "/healthz").json()
    assert health == {"status": "ok", "database": "ok", "broker": "ok"}


def test_lease_submit_aggregate_export(embedded):
    base, tokens = embedded["base"], embedded["tokens"]
    annotators = ["annotator1", "annotator2", "annotator3"]
    results: dict[str, Counter] = {}

    def annotate(name):
        counts: Counter = Counter()
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Token {tokens[name]}"}, timeout=30
        ) as c:
            while True:
                r = c.post("/api/v1/campaigns/demo-text/next/")
                counts[f"next {r.status_code}"] += 1
                if r.status_code != 200:
                    break
                lease = r.json()
                r = c.post(
                    f"/api/v1/assignments/{lease['assignment']}/judgment/",
                    json={
                        "choices": {"overall": ["left", "right", "tie"][lease["assignment"] % 3]}
                    },
                )
                counts[f"submit {r.status_code}"] += 1
        results[name] = counts

    # Three annotators at once: concurrent writers on SQLite must queue, never fail.
    threads = [threading.Thread(target=annotate, args=(n,)) for n in annotators]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in annotators:
        assert results[name] == Counter({"next 200": 80, "submit 201": 80, "next 204": 1}), results

    staff = httpx.Client(
        base_url=base, headers={"Authorization": f"Token {tokens['admin']}"}, timeout=30
    )
    deadline = time.monotonic() + 60
    while (scores := staff.get("/api/v1/campaigns/demo-text/scores/").json())[
        "judgments_used"
    ] < 240:
        assert time.monotonic() < deadline, (embedded["var"] / "worker.log").read_text()[-3000:]
        time.sleep(0.5)
    assert len(scores["scores"]) == 72  # every response of the 24 prompts
    labels = staff.get("/api/v1/campaigns/demo-text/labels/").json()["labels"]
    assert len(labels) == 80 and {label["count"] for label in labels} == {3}

    with staff.stream("GET", "/api/v1/campaigns/demo-text/export/judgments.jsonl") as r:
        assert r.status_code == 200
        expected = int(r.headers["X-Row-Count"])
        rows = [json.loads(line) for line in r.iter_lines() if line]
    assert expected == len(rows) == 240
    per_pair = Counter(row["pair_id"] for row in rows)
    assert set(per_pair.values()) == {3}  # no pair passed k
    assert len({(row["pair_id"], row["annotator"]) for row in rows}) == 240

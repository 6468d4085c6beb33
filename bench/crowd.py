"""A crowd of annotators with faults injected, then the invariants checked.

    .venv/bin/python bench/crowd.py --annotators 200 --duration 120 --faults all --json out.json
        [--faults none | web,db,broker,worker] [--mix normal=50,abandoner=10,...]
        [--prompts 60 --responses 4 --k 3 --lease-seconds 12] [--think 4,20]
        [--web-workers 3] [--catchup-aim 30] [--catchup-timeout 120] [--keep-logs]

What it does, all on 127.0.0.1 (servers through bench/stack.py, shared with annotate_loop.py):
  1. drops, recreates and migrates the database `feedback_crowd`; seeds one active text
     campaign (k=--k, short --lease-seconds, --prompts x every pair of --responses responses),
     --annotators members with API tokens and one staff user (for the export);
  2. starts a throwaway `redis-server` on a spare port (no persistence) as the broker,
     gunicorn through bin/web (--web-workers x 8 threads, access log kept), the Celery
     worker as in the Procfile (queues labels,default, concurrency 2) and beat;
  3. drives the annotators for --duration seconds (asyncio + httpx, one client each, staggered
     over --ramp seconds), each with one behaviour of the --mix:
       normal     lease, think (renewing a lease that would run out), judge;
       abandoner  every other lease, walks away without a word and comes back after it expired;
       double     sends the same judgment twice, concurrently, on two connections;
       retry      sends the judgment with a --cut-timeout read timeout, so the connection is
                  cut before the answer, then sends it again;
       skipper    skips most pairs (--skip-share), judges the rest;
       late       sleeps past the lease, then judges (201 or 409 lease_lost);
     any 5xx or broken connection on a judgment is retried (up to --retries), as a client
     would. A judgment is *acknowledged* by a 201, or by a 409 already_judged that carries
     judgment_id: both are recorded as (judgment id, pair id, annotator);
  4. injects the --faults, evenly spaced over the run, each recorded as a window
     [start, end + --grace]: web (SIGKILL one gunicorn worker; the master respawns it), db
     (pg_terminate_backend every connection of the database but the driver's), broker (stop
     the redis-server, restart it after --broker-down s: its queue is lost), worker (SIGKILL
     the Celery worker's process group, restart it after --worker-down s);
  5. stops the load, waits up to --catchup-timeout s for aggregation to catch up
     (AggregationState: a finished run that used every active judgment, after the last one),
     streams the export, and checks the invariants (see INVARIANTS); prints the report,
     writes it to --json, exits 1 if any invariant failed.

Every process it started is stopped at the end, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

try:
    from bench import stack
except ImportError:  # run as a script: bench/ is on sys.path, the repository root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import stack

DB_NAME = "feedback_crowd"
SLUG = "crowd"
# Below gunicorn.conf.py's keepalive (5 s); see Crowd.annotate.
CLIENT_KEEPALIVE_S = 3.0

BEHAVIOURS = ("normal", "abandoner", "double", "retry", "skipper", "late")
DEFAULT_MIX = "normal=50,abandoner=10,double=10,retry=10,skipper=10,late=10"
FAULT_KINDS = ("web", "db", "broker", "worker")
CHOICES = ("left", "right", "tie")

INVARIANTS = {
    "no_pair_over_k": "no pair has more active judgments than k",
    "no_pair_annotator_twice": "no (pair, annotator) has two judgments, in the database or "
    "among the acknowledgements",
    "acknowledged_in_db": "every acknowledged judgment id is in the database, with the pair "
    "and annotator it was acknowledged for",
    "export_exact": "the streamed export has X-Row-Count lines, each judgment of the campaign "
    "exactly once, every acknowledged one included",
    "no_5xx_outside_faults": "no 5xx and no broken connection outside a fault window",
    "aggregation_caught_up": "after the load, a finished aggregation run used every active "
    "judgment, within --catchup-aim s of the last acknowledged judgment",
    "aggregation_resumed_after_faults": "after each fault, the first judgment acknowledged "
    "after it is in scores within --catchup-aim s",
    "no_process_crash": "no server process exits unless a fault kills it",
}


# ---- records ---------------------------------------------------------------------------------


@dataclass
class Call:
    endpoint: str
    behaviour: str
    t0: float
    t1: float
    status: int | None  # None: no HTTP answer (connection refused, reset, timed out)
    error: str = ""  # the API's error code, or the transport exception's name
    cut: bool = False  # a read timeout the retry behaviour asked for
    # Seconds since this annotator's previous call ended: about gunicorn's keepalive (5 s) on
    # a broken connection points at a keep-alive connection closed as the request went out.
    idle: float | None = None

    @property
    def failed(self) -> bool:
        return not self.cut and (self.status is None or self.status >= 500)


@dataclass
class Ack:
    judgment_id: int
    # The lease it came through: annotators are not told pair ids (they would reveal import
    # order), so the pair is looked up from the lease when the invariants are checked.
    assignment_id: int
    user_id: int
    username: str
    behaviour: str
    via: str  # "201" or "409"
    t: float


@dataclass
class Fault:
    kind: str
    scheduled: float  # seconds after the start of the load
    grace: float
    start: float = 0.0
    end: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def window(self) -> tuple[float, float]:
        return self.start, self.end + self.grace

    def covers(self, call: Call) -> bool:
        lo, hi = self.window
        return self.start > 0 and call.t0 <= hi and call.t1 >= lo


@dataclass
class Annotator:
    index: int
    username: str
    user_id: int
    token: str
    behaviour: str
    events: collections.Counter = field(default_factory=collections.Counter)
    last_call_end: float | None = None


# ---- the run ---------------------------------------------------------------------------------


class Crowd:
    def __init__(self, args: argparse.Namespace, servers: stack.Stack, seeded: dict) -> None:
        self.args = args
        self.servers = servers
        self.seeded = seeded
        self.campaign_id = seeded["campaign_id"]
        self.base_url = f"http://127.0.0.1:{servers.port}"
        self.calls: list[Call] = []
        self.acks: list[Ack] = []
        self.anomalies: list[str] = []
        self.double_outcomes: collections.Counter = collections.Counter()
        self.faults = [
            Fault(kind, args.duration * (i + 1) / (len(args.faults) + 1), args.grace)
            for i, kind in enumerate(args.faults)
        ]
        self.annotators = self._annotators()
        self.stop = asyncio.Event()
        self.t_start = self.t_stop = self.t_end = 0.0
        self.first_exhausted: float | None = None
        self.cpu: dict[str, Any] = {}
        # Aggregation, sampled by a thread while the load runs and until the report.
        self.monitor_stop = threading.Event()
        self.run_started: dict[int, float] = {}
        self.run_finished: dict[int, tuple[float, int]] = {}
        self.monitor_errors = 0
        self.lock = threading.Lock()
        self.procs_lock = threading.Lock()
        self.exits: list[dict[str, Any]] = []

    def _annotators(self) -> list[Annotator]:
        weights = self.args.mix
        total = sum(weights.values())
        n = len(self.seeded["users"])
        # Exact shares (largest remainder), then shuffled so behaviours start interleaved.
        raw = {b: n * w / total for b, w in weights.items()}
        counts = {b: int(v) for b, v in raw.items()}
        for b in sorted(raw, key=lambda b: raw[b] - counts[b], reverse=True)[
            : n - sum(counts.values())
        ]:
            counts[b] += 1
        kinds = [b for b in BEHAVIOURS for _ in range(counts.get(b, 0))]
        random.Random(self.args.seed).shuffle(kinds)
        return [
            Annotator(i, u["username"], u["id"], u["token"], kinds[i])
            for i, u in enumerate(self.seeded["users"])
        ]

    # -- HTTP

    async def post(
        self,
        a: Annotator,
        client: Any,
        endpoint: str,
        path: str,
        body: dict | None = None,
        *,
        cut_timeout: float | None = None,
    ) -> Any:
        """POST and record the call; returns the httpx.Response, or None without an answer."""
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = body
        if cut_timeout is not None:
            kwargs["timeout"] = httpx.Timeout(30, read=cut_timeout)
        t0 = time.time()
        idle = None if a.last_call_end is None else t0 - a.last_call_end
        try:
            r = await client.post(path, **kwargs)
        except httpx.HTTPError as exc:
            a.last_call_end = t1 = time.time()
            cut = cut_timeout is not None and isinstance(exc, httpx.ReadTimeout)
            self.calls.append(
                Call(endpoint, a.behaviour, t0, t1, None, type(exc).__name__, cut, idle)
            )
            return None
        a.last_call_end = t1 = time.time()
        error = ""
        if r.status_code >= 400:
            try:
                error = str(r.json().get("error", ""))
            except ValueError:
                error = r.text[:80]
        self.calls.append(Call(endpoint, a.behaviour, t0, t1, r.status_code, error, idle=idle))
        return r

    async def pause(self, seconds: float) -> bool:
        """Sleep; True if the run stopped meanwhile."""
        try:
            await asyncio.wait_for(self.stop.wait(), max(0.0, seconds))
            return True
        except TimeoutError:
            return False

    async def think(
        self, a: Annotator, client: Any, assignment: int, seconds: float, *, renew: bool
    ) -> bool:
        """Work on the pair for `seconds`, renewing the lease before it runs out if `renew`.
        False if the run stopped meanwhile (the annotator leaves without submitting)."""
        lease = self.args.lease_seconds
        left = seconds
        while left > 0:
            step = min(left, 0.6 * lease) if renew else left
            if await self.pause(step):
                return False
            left -= step
            if left > 0 and renew:
                r = await self.post(a, client, "renew", f"/api/v1/assignments/{assignment}/renew/")
                a.events["renew" if r is not None and r.status_code == 200 else "renew_failed"] += 1
        return True

    async def submit(
        self,
        a: Annotator,
        client: Any,
        assignment: int,
        pair: int,
        body: dict,
        *,
        cut_first: bool = False,
        first_try_may_409: bool = False,
    ) -> str:
        """Send a judgment until it gets an answer; record an acknowledgement. Returns the
        outcome: created, already_judged, lease_lost, an error code, or gave_up."""
        path = f"/api/v1/assignments/{assignment}/judgment/"
        for attempt in range(self.args.retries + 1):
            cut = cut_first and attempt == 0
            r = await self.post(
                a, client, "submit", path, body, cut_timeout=self.args.cut_timeout if cut else None
            )
            if r is None or r.status_code >= 500:
                if cut and r is None:
                    a.events["cut"] += 1
                    await asyncio.sleep(random.uniform(0.05, 0.3))
                else:
                    a.events["submit_retried"] += 1
                    await asyncio.sleep(0.5 * (attempt + 1))
                continue
            if cut:
                a.events["not_cut"] += 1  # the answer beat the cut
            data = _json(r)
            if r.status_code == 201:
                self.ack(a, data.get("judgment"), pair, "201")
                a.events["created"] += 1
                return "created"
            if r.status_code == 409 and data.get("error") == "already_judged":
                if "judgment_id" in data:
                    self.ack(a, data["judgment_id"], pair, "409")
                else:
                    self.anomaly(f"{a.username}: 409 already_judged without judgment_id")
                if attempt == 0 and not first_try_may_409:
                    # Nothing of ours was sent before: the lease engine offered a pair this
                    # annotator had judged already.
                    self.anomaly(f"{a.username}: first submit of pair {pair} got already_judged")
                a.events["already_judged"] += 1
                return "already_judged"
            code = data.get("error") or str(r.status_code)
            a.events[code] += 1
            if code != "lease_lost":
                self.anomaly(f"{a.username} ({a.behaviour}): submit {r.status_code} {r.text[:200]}")
            return code
        a.events["gave_up"] += 1
        return "gave_up"

    def ack(self, a: Annotator, judgment_id: Any, pair: int, via: str) -> None:
        if not isinstance(judgment_id, int):
            self.anomaly(f"{a.username}: acknowledgement without a judgment id ({judgment_id!r})")
            return
        self.acks.append(
            Ack(judgment_id, pair, a.user_id, a.username, a.behaviour, via, time.time())
        )

    def anomaly(self, text: str) -> None:
        self.anomalies.append(f"t={time.time() - self.t_start:.1f}s {text}")

    # -- annotators

    async def annotate(self, a: Annotator) -> None:
        args = self.args
        rng = random.Random(args.seed * 100_003 + a.index)
        async with httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Token {a.token}"},
            timeout=30,
            # Two connections: the double-submitter sends both copies at once. An idle
            # connection is dropped before gunicorn's keepalive (5 s) would close it: reusing
            # one the server is closing at that instant is HTTP/1.1's keep-alive race, which
            # every client must avoid or retry, not a fault of the service.
            limits=httpx.Limits(
                max_connections=2, max_keepalive_connections=2, keepalive_expiry=CLIENT_KEEPALIVE_S
            ),
        ) as client:
            if await self.pause(rng.uniform(0, args.ramp)):
                return
            abandon_next = rng.random() < 0.5
            while not self.stop.is_set():
                r = await self.post(a, client, "next", f"/api/v1/campaigns/{SLUG}/next/")
                if r is None or r.status_code >= 500:
                    if await self.pause(rng.uniform(0.5, 1.5)):
                        return
                    continue
                if r.status_code == 204:
                    a.events["exhausted"] += 1
                    if self.first_exhausted is None:
                        self.first_exhausted = time.time()
                    if await self.pause(rng.uniform(5, 10)):
                        return
                    continue
                if r.status_code != 200:
                    a.events[f"next_{r.status_code}"] += 1
                    self.anomaly(f"{a.username}: next {r.status_code} {r.text[:200]}")
                    if await self.pause(2):
                        return
                    continue
                lease = r.json()
                # `pair` stands for the lease until the checks map leases to pairs.
                assignment = pair = lease["assignment"]
                a.events["leases"] += 1
                think = rng.uniform(*args.think)
                body = {"choices": rng.choice(CHOICES), "duration_ms": int(think * 1000)}
                b = a.behaviour
                if b == "abandoner" and abandon_next:
                    a.events["abandoned"] += 1
                    abandon_next = False
                    if await self.pause(args.lease_seconds + rng.uniform(1, 5)):
                        return
                    continue
                abandon_next = True
                if b == "late":
                    wait = args.lease_seconds + rng.uniform(1, 6)
                    if not await self.think(a, client, assignment, wait, renew=False):
                        return
                    await self.submit(a, client, assignment, pair, body)
                    continue
                if not await self.think(a, client, assignment, think, renew=True):
                    return
                if b == "skipper" and rng.random() < args.skip_share:
                    r = await self.post(
                        a,
                        client,
                        "skip",
                        f"/api/v1/assignments/{assignment}/skip/",
                        {"reason": "crowd driver"},
                    )
                    a.events[
                        "skipped" if r is not None and r.status_code == 201 else "skip_failed"
                    ] += 1
                elif b == "double":
                    outcomes = await asyncio.gather(
                        self.submit(a, client, assignment, pair, body, first_try_may_409=True),
                        self.submit(a, client, assignment, pair, body, first_try_may_409=True),
                    )
                    self.double_outcomes["+".join(sorted(outcomes))] += 1
                elif b == "retry":
                    await self.submit(a, client, assignment, pair, body, cut_first=True)
                else:
                    await self.submit(a, client, assignment, pair, body)

    # -- faults

    async def inject_faults(self) -> None:
        for fault in self.faults:
            if await self.pause(self.t_start + fault.scheduled - time.time()):
                return
            fault.start = time.time()
            try:
                await asyncio.to_thread(self.inject, fault)
            except Exception as exc:  # report it; the run goes on
                fault.detail["error"] = f"{type(exc).__name__}: {exc}"
            fault.end = time.time()
            print(
                f"  fault {fault.kind} at {fault.start - self.t_start:.1f}s, "
                f"{fault.end - fault.start:.1f}s: {fault.detail}",
                flush=True,
            )

    def inject(self, fault: Fault) -> None:
        # Under the lock: the supervisor must not take a process this fault stops for its own
        # crash, nor restart it first.
        with self.procs_lock:
            self._inject(fault)

    def _inject(self, fault: Fault) -> None:
        s, args = self.servers, self.args
        if fault.kind == "web":
            before = s.web_worker_pids()
            victim = random.choice(before)
            os.kill(victim, signal.SIGKILL)
            fault.detail["killed_pid"] = victim
            t0 = time.time()
            while time.time() - t0 < 30:
                now = s.web_worker_pids()
                if len(now) >= len(before) and victim not in now:
                    fault.detail["respawned_after_s"] = round(time.time() - t0, 2)
                    break
                time.sleep(0.05)
        elif fault.kind == "db":
            fault.detail["terminated_backends"] = stack.terminate_backends(DB_NAME)
        elif fault.kind == "broker":
            s.stop_redis()
            time.sleep(args.broker_down)
            s.start_redis()
            fault.detail["down_s"] = args.broker_down
        elif fault.kind == "worker":
            log = s.log("worker")
            fault.detail["was_running"] = s.procs["worker"].poll() is None
            stack.kill_group(s.procs["worker"])
            fault.detail["killed_pid"] = s.procs["worker"].pid
            time.sleep(args.worker_down)
            offset = log.stat().st_size
            s.restart_worker()
            ready = stack.wait_log(log, " ready.", offset=offset, timeout=60)
            fault.detail["down_s"] = args.worker_down
            fault.detail["ready_after_s"] = round(ready, 2) if ready is not None else None

    # -- aggregation monitor

    def aggregation_sample(self, conn: Any) -> dict[str, Any]:
        """AggregationState and the active judgments, read in one statement (one snapshot)."""
        row = conn.execute(
            "SELECT s.started_seq, s.applied_seq, s.runs_completed, s.last_started_at,"
            " s.last_finished_at, s.judgments_used, s.pending, s.requested_at, s.last_error,"
            " j.active, j.newest"
            " FROM (SELECT count(*) AS active, max(created_at) AS newest"
            "       FROM annotation_judgment WHERE campaign_id = %s AND status = 'active') j"
            " LEFT JOIN labeling_aggregationstate s ON s.campaign_id = %s",
            (self.campaign_id, self.campaign_id),
        ).fetchone()
        keys = (
            "started_seq",
            "applied_seq",
            "runs",
            "started",
            "finished",
            "used",
            "pending",
            "requested",
            "error",
            "active",
            "newest",
        )
        sample: dict[str, Any] = dict(zip(keys, row, strict=True))
        sample["t"] = time.time()
        for k in ("started", "finished", "requested", "newest"):
            sample[k] = _ts(sample[k])
        self.track(sample)
        return sample

    def track(self, sample: dict[str, Any]) -> None:
        """Collect (start, finish) per run sequence number. last_started_at belongs to
        started_seq and last_finished_at to applied_seq (each set in one transaction with
        its number), so sampling often enough pairs them up even when runs overlap."""
        with self.lock:
            if sample.get("started_seq"):
                self.run_started.setdefault(sample["started_seq"], sample["started"])
            if sample.get("applied_seq") and sample.get("finished") is not None:
                self.run_finished.setdefault(
                    sample["applied_seq"], (sample["finished"], sample["used"])
                )

    def runs(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {"seq": seq, "started": self.run_started[seq], "finished": f, "used": used}
                for seq, (f, used) in sorted(self.run_finished.items())
                if seq in self.run_started
            ]

    def monitor(self) -> None:
        conn = None
        while not self.monitor_stop.is_set():
            try:
                if conn is None:
                    conn = stack.pg_connect(DB_NAME)
                self.aggregation_sample(conn)
            except Exception:
                self.monitor_errors += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            self.supervise()
            self.monitor_stop.wait(self.args.poll)
        if conn is not None:
            conn.close()

    def supervise(self) -> None:
        """Record every server process that exited on its own (no fault killed it) and, as
        compose's `restart: unless-stopped` would, start it again (unless --no-supervise)."""
        if not self.procs_lock.acquire(blocking=False):
            return  # a fault is stopping or restarting something
        try:
            for name, proc in list(self.servers.procs.items()):
                if proc.poll() is None:
                    continue
                entry = {
                    "process": name,
                    "pid": proc.pid,
                    "returncode": proc.returncode,
                    "seen_at_s": _r(time.time() - self.t_start),
                }
                stack.kill_group(proc)  # whatever it left behind
                if self.args.supervise:
                    try:
                        self.servers.restart(name)
                        entry["restarted"] = True
                    except Exception as exc:
                        entry["restart_error"] = f"{type(exc).__name__}: {exc}"
                        self.servers.procs.pop(name, None)
                else:
                    self.servers.procs.pop(name, None)
                self.exits.append(entry)
                print(f"  ! {name} exited on its own: {entry}", flush=True)
        finally:
            self.procs_lock.release()

    # -- driving

    async def drive(self) -> None:
        self.t_start = time.time()
        cpu0, busy0 = os.times(), stack.machine_busy_ticks()
        tasks = [asyncio.create_task(self.annotate(a)) for a in self.annotators]
        faults = asyncio.create_task(self.inject_faults())
        await self.pause(self.args.duration)
        self.stop.set()
        self.t_stop = time.time()
        cpu1, busy1 = os.times(), stack.machine_busy_ticks()
        seconds = self.t_stop - self.t_start
        # The machine is shared: cores busy in all (ours and other jobs'), and the driver's.
        self.cpu = {
            "machine_busy_cores": _r((busy1 - busy0) / stack.CLK_TCK / seconds),
            "load_generator_cores": _r(
                (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / seconds
            ),
        }
        await faults  # a fault in progress finishes (restarts what it stopped)
        # Requests in flight finish (a judgment may be retried a few times); then give up.
        done, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                self.anomaly(f"annotator task failed: {task.exception()!r}")
        self.t_end = time.time()


def _json(r: Any) -> dict:
    try:
        data = r.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


# ---- after the run ---------------------------------------------------------------------------


def wait_catch_up(crowd: Crowd, timeout: float) -> dict[str, Any]:
    """Poll until AggregationState shows a finished run that used every active judgment and
    finished after the newest one was created."""
    deadline = time.time() + timeout
    sample: dict[str, Any] = {}
    with stack.pg_connect(DB_NAME) as conn:
        while True:
            try:
                sample = crowd.aggregation_sample(conn)
            except Exception as exc:
                sample = {"error": repr(exc)}
            if (
                sample.get("finished") is not None
                and sample.get("used") == sample.get("active")
                and (sample.get("newest") is None or sample["finished"] > sample["newest"])
            ):
                sample["caught_up"] = True
                return sample
            if time.time() > deadline:
                sample["caught_up"] = False
                return sample
            time.sleep(crowd.args.poll / 2)


def check_export(crowd: Crowd) -> dict[str, Any]:
    url = f"{crowd.base_url}/api/v1/campaigns/{SLUG}/export/judgments.jsonl"
    headers = {"Authorization": f"Token {crowd.seeded['staff_token']}"}
    out: dict[str, Any] = {}
    t0 = time.time()
    try:
        with httpx.stream("GET", url, headers=headers, timeout=120) as r:
            out["status"] = r.status_code
            out["x_row_count"] = int(r.headers.get("X-Row-Count", "-1"))
            rows = [json.loads(line) for line in r.iter_lines() if line.strip()]
    except (httpx.HTTPError, ValueError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        rows = []
    out["seconds"] = round(time.time() - t0, 2)
    out["lines"] = len(rows)
    out["ids"] = collections.Counter(row.get("judgment_id") for row in rows)
    out["pairs"] = {row.get("judgment_id"): row.get("pair_id") for row in rows}
    return out


def check_invariants(crowd: Crowd, catch_up: dict[str, Any]) -> dict[str, Any]:
    args = crowd.args
    inv: dict[str, dict[str, Any]] = {}

    with stack.pg_connect(DB_NAME) as conn:
        db_rows = conn.execute(
            "SELECT id, pair_id, annotator_id, status FROM annotation_judgment"
            " WHERE campaign_id = %s",
            (crowd.campaign_id,),
        ).fetchall()
        over_k = conn.execute(
            "SELECT pair_id, count(*) FROM annotation_judgment"
            " WHERE campaign_id = %s AND status = 'active'"
            " GROUP BY pair_id HAVING count(*) > %s ORDER BY pair_id",
            (crowd.campaign_id, args.k),
        ).fetchall()
        twice = conn.execute(
            "SELECT pair_id, annotator_id, count(*) FROM annotation_judgment"
            " WHERE campaign_id = %s GROUP BY pair_id, annotator_id HAVING count(*) > 1",
            (crowd.campaign_id,),
        ).fetchall()
        count_drift = conn.execute(
            "SELECT p.id, p.judgment_count, count(j.id) FROM annotation_pair p"
            " LEFT JOIN annotation_judgment j ON j.pair_id = p.id AND j.status = 'active'"
            " WHERE p.campaign_id = %s GROUP BY p.id HAVING p.judgment_count <> count(j.id)",
            (crowd.campaign_id,),
        ).fetchall()
        filled = conn.execute(
            "SELECT count(*) FILTER (WHERE judgment_count >= %s), count(*) FROM annotation_pair"
            " WHERE campaign_id = %s",
            (args.k, crowd.campaign_id),
        ).fetchone()
        skips = conn.execute(
            "SELECT count(*) FROM annotation_skip WHERE campaign_id = %s", (crowd.campaign_id,)
        ).fetchone()[0]
        lease_pairs = dict(
            conn.execute(
                "SELECT id, pair_id FROM annotation_assignment WHERE campaign_id = %s",
                (crowd.campaign_id,),
            ).fetchall()
        )
        open_leases = conn.execute(
            "SELECT count(*) FROM annotation_assignment WHERE campaign_id = %s"
            " AND status = 'open' AND expires_at > now()",
            (crowd.campaign_id,),
        ).fetchone()[0]
    db = {jid: (pair, user, status) for jid, pair, user, status in db_rows}

    inv["no_pair_over_k"] = {
        "ok": not over_k,
        "pairs_over_k": [{"pair": p, "active_judgments": n} for p, n in over_k[:20]],
        "count": len(over_k),
    }

    # Acknowledgements: one judgment id may be acknowledged twice (a double submit: 201 and
    # 409 with the same id); two different ids for one (pair, annotator) is a duplicate.
    by_id: dict[int, tuple[int, int]] = {}
    mismatched_ids = []
    by_key: dict[tuple[int, int], set[int]] = collections.defaultdict(set)
    for ack in crowd.acks:
        key = (lease_pairs.get(ack.assignment_id, -1), ack.user_id)
        if by_id.setdefault(ack.judgment_id, key) != key:
            mismatched_ids.append(ack.judgment_id)
        by_key[key].add(ack.judgment_id)
    acked_twice = {f"{k[0]}/{k[1]}": sorted(v) for k, v in by_key.items() if len(v) > 1}
    inv["no_pair_annotator_twice"] = {
        "ok": not twice and not acked_twice,
        "in_db": [{"pair": p, "annotator": u, "judgments": n} for p, u, n in twice[:20]],
        "acknowledged_with_different_ids": dict(list(acked_twice.items())[:20]),
    }

    missing = [jid for jid in by_id if jid not in db]
    wrong = [
        {"judgment": jid, "acknowledged": by_id[jid], "db": db[jid][:2]}
        for jid in by_id
        if jid in db and db[jid][:2] != by_id[jid]
    ]
    inv["acknowledged_in_db"] = {
        "ok": not missing and not wrong and not mismatched_ids,
        "acknowledged": len(by_id),
        "missing": missing[:20],
        "missing_count": len(missing),
        "wrong_pair_or_annotator": wrong[:20],
        "one_id_acknowledged_for_two_pairs": mismatched_ids[:20],
        "in_db_not_acknowledged": len(set(db) - set(by_id)),
    }

    export = check_export(crowd)
    ids: collections.Counter = export.pop("ids")
    pairs = export.pop("pairs")
    dup = sorted(j for j, n in ids.items() if n > 1)
    not_exported = sorted(set(db) - set(ids))
    unknown = sorted(j for j in ids if j not in db)
    ack_missing = sorted(j for j in by_id if ids.get(j, 0) != 1)
    wrong_pair = sorted(j for j, p in pairs.items() if j in db and db[j][0] != p)
    inv["export_exact"] = {
        "ok": export.get("status") == 200
        and "error" not in export
        and export["lines"] == export.get("x_row_count")
        and not dup
        and not not_exported
        and not unknown
        and not ack_missing
        and not wrong_pair,
        **export,
        "db_judgments": len(db),
        "duplicated_ids": dup[:20],
        "db_ids_not_exported": not_exported[:20],
        "exported_ids_not_in_db": unknown[:20],
        "acknowledged_not_exactly_once": ack_missing[:20],
        "wrong_pair": wrong_pair[:20],
    }

    def describe(c: Call) -> str:
        idle = "first call" if c.idle is None else f"{c.idle:.2f}s after the previous"
        return (
            f"t={c.t0 - crowd.t_start:.2f}s {c.behaviour} {c.endpoint} "
            f"{c.status or c.error} after {1000 * (c.t1 - c.t0):.0f} ms, {idle}"
        )

    inside: dict[int, list[Call]] = {i: [] for i in range(len(crowd.faults))}
    outside: list[Call] = []
    for call in crowd.calls:
        if not call.failed:
            continue
        hits = [i for i, f in enumerate(crowd.faults) if f.covers(call)]
        for i in hits:
            inside[i].append(call)
        if not hits:
            outside.append(call)
    for i, fault in enumerate(crowd.faults):
        fault.detail["errors_in_window"] = dict(
            collections.Counter(f"{c.endpoint}:{c.status or c.error}" for c in inside[i])
        )
        fault.detail["error_samples"] = [describe(c) for c in inside[i][:3]]
    inv["no_5xx_outside_faults"] = {
        "ok": not outside,
        "count": len(outside),
        "kinds": dict(collections.Counter(f"{c.endpoint}:{c.status or c.error}" for c in outside)),
        "samples": [describe(c) for c in outside[:10]],
    }

    last_ack = max((a.t for a in crowd.acks), default=None)
    last_fault = max((f.end for f in crowd.faults if f.start), default=None)
    caught = bool(catch_up.get("caught_up"))
    # A sample is caught up only once it has a finished run (wait_catch_up).
    finished: float | None = catch_up.get("finished") if caught else None
    after_judgment = finished - last_ack if finished is not None and last_ack is not None else None
    inv["aggregation_caught_up"] = {
        "ok": caught and (after_judgment is None or after_judgment <= args.catchup_aim),
        "caught_up": caught,
        "catch_up_after_last_judgment_s": _r(after_judgment),
        "catch_up_after_last_fault_s": (
            _r(finished - last_fault) if finished is not None and last_fault else None
        ),
        "catch_up_after_load_stop_s": (
            _r(finished - crowd.t_stop) if finished is not None else None
        ),
        "aim_s": args.catchup_aim,
        "state": {
            k: catch_up.get(k)
            for k in ("runs", "used", "active", "pending", "error")
            if k in catch_up
        },
        "last_finished_at": _iso(finished),
        "last_acknowledged_at": _iso(last_ack),
    }

    # After each fault: the first judgment acknowledged after it ended must be in a finished
    # run within the aim (a run that started after that acknowledgement includes it).
    resumed = []
    ok = True
    runs = crowd.runs()
    for fault in crowd.faults:
        if not fault.start:
            continue
        first = min((a.t for a in crowd.acks if a.t > fault.end), default=None)
        entry: dict[str, Any] = {"fault": fault.kind, "at_s": _r(fault.start - crowd.t_start)}
        if first is None:
            entry["note"] = "no judgment acknowledged after this fault"
        else:
            run = next(
                (
                    r
                    for r in runs
                    if r.get("started") and r["started"] >= first and r.get("finished")
                ),
                None,
            )
            lag = run["finished"] - first if run else None
            entry["first_judgment_after_s"] = _r(first - fault.end)
            entry["in_scores_after_s"] = _r(lag)
            entry["ok"] = lag is not None and lag <= args.catchup_aim
            ok = ok and entry["ok"]
            fault.detail["aggregation_lag_s"] = _r(lag)
        resumed.append(entry)
    inv["aggregation_resumed_after_faults"] = {"ok": ok, "faults": resumed}

    inv["no_process_crash"] = {"ok": not crowd.exits, "exits": crowd.exits}
    for name, result in inv.items():
        result["means"] = INVARIANTS[name]

    notes = {
        "pair_judgment_count_drift": [
            {"pair": p, "judgment_count": c, "active": n} for p, c, n in count_drift[:20]
        ],
        "pairs_full": filled[0],
        "pairs": filled[1],
        "skips": skips,
        "open_leases_at_end": open_leases,
    }
    return {"invariants": inv, "notes": notes}


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def _seconds(x: float | None) -> str:
    return "never" if x is None else f"{x} s"


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t).isoformat(timespec="milliseconds")


def summarise(crowd: Crowd, checks: dict[str, Any]) -> dict[str, Any]:
    args = crowd.args
    duration = crowd.t_stop - crowd.t_start

    def latencies(endpoint: str, ok: tuple[int, ...]) -> dict[str, Any]:
        calls = [c for c in crowd.calls if c.endpoint == endpoint and c.status in ok]
        ms = [1000 * (c.t1 - c.t0) for c in calls]
        # The same without the calls that overlap a fault window.
        calm = [1000 * (c.t1 - c.t0) for c in calls if not any(f.covers(c) for f in crowd.faults)]
        return {
            "n": len(ms),
            "p50_ms": _r(stack.pct(ms, 50), 1),
            "p99_ms": _r(stack.pct(ms, 99), 1),
            "max_ms": _r(max(ms, default=float("nan")), 1),
            "outside_faults_p50_ms": _r(stack.pct(calm, 50), 1),
            "outside_faults_p99_ms": _r(stack.pct(calm, 99), 1),
        }

    def over_time(endpoint: str, ok: tuple[int, ...], width: float = 10.0) -> list[list[Any]]:
        """[window start s, calls, p50 ms, p99 ms] per `width` seconds of the run: where in
        the run slow calls come from (a campaign filling up, a fault)."""
        buckets: dict[int, list[float]] = collections.defaultdict(list)
        for c in crowd.calls:
            if c.endpoint == endpoint and c.status in ok:
                buckets[int((c.t0 - crowd.t_start) // width)].append(1000 * (c.t1 - c.t0))
        return [
            [int(k * width), len(v), _r(stack.pct(v, 50), 1), _r(stack.pct(v, 99), 1)]
            for k, v in sorted(buckets.items())
        ]

    per_behaviour: dict[str, dict[str, Any]] = {}
    for b in BEHAVIOURS:
        group = [a for a in crowd.annotators if a.behaviour == b]
        if not group:
            continue
        events: collections.Counter = collections.Counter()
        for a in group:
            events.update(a.events)
        acked = len({ack.judgment_id for ack in crowd.acks if ack.behaviour == b})
        per_behaviour[b] = {"annotators": len(group), "acknowledged": acked, **dict(events)}
    statuses = collections.Counter(
        f"{c.endpoint}:{c.status if c.status is not None else c.error}{'(cut)' if c.cut else ''}"
        for c in crowd.calls
    )
    acked = len({a.judgment_id for a in crowd.acks})
    return {
        "machine": stack.machine(),
        "code": stack.code_version(),
        "config": {
            "annotators": args.annotators,
            "duration_s": args.duration,
            "faults": args.faults,
            "mix": args.mix,
            "prompts": args.prompts,
            "responses": args.responses,
            "pairs": crowd.seeded["pairs"],
            "k": args.k,
            "lease_seconds": args.lease_seconds,
            "think_s": args.think,
            "web_workers": args.web_workers,
            "threads": 8,
            "celery_concurrency": args.worker_concurrency,
            "grace_s": args.grace,
        },
        "load": {
            "seconds": _r(duration),
            "drain_s": _r(crowd.t_end - crowd.t_stop),
            "requests": len(crowd.calls),
            "requests_per_s": _r(len(crowd.calls) / duration),
            "acknowledged_judgments": acked,
            "judgments_per_s": _r(acked / duration),
            "cpu": crowd.cpu,
            "campaign_exhausted_at_s": _r(crowd.first_exhausted - crowd.t_start)
            if crowd.first_exhausted
            else None,
            "latency": {
                "lease": latencies("next", (200, 204)),
                "lease_200": latencies("next", (200,)),
                "lease_204": latencies("next", (204,)),
                "submit": latencies("submit", (201, 409)),
                "skip": latencies("skip", (201,)),
                "renew": latencies("renew", (200,)),
            },
            "latency_over_time": {
                "lease_200": over_time("next", (200,)),
                "submit": over_time("submit", (201, 409)),
            },
            "statuses": dict(sorted(statuses.items())),
            "double_submit_outcomes": dict(crowd.double_outcomes),
        },
        "behaviours": per_behaviour,
        "faults": [
            {
                "kind": f.kind,
                "at_s": _r(f.start - crowd.t_start) if f.start else None,
                "window_s": [_r(f.window[0] - crowd.t_start), _r(f.window[1] - crowd.t_start)]
                if f.start
                else None,
                **f.detail,
            }
            for f in crowd.faults
        ],
        "aggregation_runs_seen": len(crowd.runs()),
        "aggregation_monitor_errors": crowd.monitor_errors,
        "anomalies": crowd.anomalies[:50],
        "anomaly_count": len(crowd.anomalies),
        **checks,
    }


def print_report(report: dict[str, Any]) -> None:
    c, load = report["config"], report["load"]
    m = report["machine"]
    print()
    print(f"machine: {m['nproc']} cores, {m['cpu_model']}, loadavg {' '.join(m['loadavg'])}")
    print(
        f"crowd: {c['annotators']} annotators for {c['duration_s']:.0f}s, faults "
        f"{','.join(c['faults']) or 'none'}; {c['pairs']} pairs x k={c['k']}, lease "
        f"{c['lease_seconds']}s; gunicorn {c['web_workers']}x{c['threads']}, celery "
        f"concurrency {c['celery_concurrency']}"
    )
    print(
        f"load: {load['acknowledged_judgments']} judgments acknowledged "
        f"({load['judgments_per_s']}/s), {load['requests']} requests "
        f"({load['requests_per_s']}/s), first 'nothing left' (204) at "
        f"{_seconds(load['campaign_exhausted_at_s'])}, drain {load['drain_s']} s"
    )
    print(
        f"  cpu during the load: machine {load['cpu'].get('machine_busy_cores')} of "
        f"{m['nproc']} cores busy (everything, other jobs included), load generator "
        f"{load['cpu'].get('load_generator_cores')}"
    )
    print("  latency (ms): all calls; in brackets, calls outside the fault windows")
    for name, lat in load["latency"].items():
        print(
            f"  {name:<7} n={lat['n']:<6} p50 {lat['p50_ms']} ({lat['outside_faults_p50_ms']})"
            f"  p99 {lat['p99_ms']} ({lat['outside_faults_p99_ms']})  max {lat['max_ms']}"
        )
    print(f"  double submits: {load['double_submit_outcomes']}")
    print("behaviours:")
    for b, row in report["behaviours"].items():
        rest = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("annotators",))
        print(f"  {b:<10} x{row['annotators']:<4} {rest}")
    print("faults:")
    for f in report["faults"]:
        detail = {k: v for k, v in f.items() if k not in ("kind", "at_s", "window_s")}
        print(f"  {f['kind']:<7} at {f['at_s']}s window {f['window_s']}: {detail}")
    print("invariants:")
    for name, result in report["invariants"].items():
        verdict = "PASS" if result["ok"] else "FAIL"
        extra = {
            k: v
            for k, v in result.items()
            if k not in ("ok", "means") and v not in ([], {}, None, 0)
        }
        text = json.dumps(extra, default=str)
        print(f"  {verdict} {name}: {text[:600]}")
    n = report["notes"]
    print(
        f"notes: pairs full {n['pairs_full']}/{n['pairs']}, skips {n['skips']}, open leases "
        f"{n['open_leases_at_end']}, judgment_count drift on "
        f"{len(n['pair_judgment_count_drift'])} pairs, {report['aggregation_runs_seen']} "
        f"aggregation runs seen"
    )
    if report["anomaly_count"]:
        print(f"anomalies ({report['anomaly_count']}):")
        for line in report["anomalies"][:10]:
            print(f"  {line}")


# ---- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--annotators", type=int, default=200)
    p.add_argument("--duration", type=float, default=120, help="seconds of load")
    p.add_argument(
        "--faults",
        default="all",
        help=f"all, none, or a comma-separated list of {','.join(FAULT_KINDS)}, injected "
        "in the order given, evenly spaced over the run (a kind may repeat)",
    )
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"behaviour weights (default {DEFAULT_MIX})")
    p.add_argument("--prompts", type=int, default=60)
    p.add_argument("--responses", type=int, default=4, help="every pair of them is a pair")
    p.add_argument("--k", type=int, default=3, help="judgments per pair")
    p.add_argument("--lease-seconds", type=int, default=12, help="the campaign's lease (>= 10)")
    p.add_argument("--think", default="4,20", help="min,max seconds an annotator works on a pair")
    p.add_argument("--ramp", type=float, default=10, help="annotators start over this many s")
    p.add_argument("--skip-share", type=float, default=0.7, help="share of pairs a skipper skips")
    p.add_argument("--cut-timeout", type=float, default=0.005, help="retry's first read timeout")
    p.add_argument(
        "--retries", type=int, default=5, help="resends of a judgment on 5xx / no answer"
    )
    p.add_argument("--grace", type=float, default=5, help="seconds added to each fault window")
    p.add_argument("--broker-down", type=float, default=3, help="seconds the broker stays down")
    p.add_argument("--worker-down", type=float, default=1, help="seconds before the restart")
    p.add_argument(
        "--no-supervise",
        dest="supervise",
        action="store_false",
        help="leave a server process that crashed down (default: restart it, as compose does)",
    )
    p.add_argument("--web-workers", type=int, default=3)
    p.add_argument("--worker-concurrency", type=int, default=2)
    p.add_argument("--catchup-aim", type=float, default=30)
    p.add_argument("--catchup-timeout", type=float, default=120)
    p.add_argument("--poll", type=float, default=0.5, help="aggregation sampling interval")
    p.add_argument("--port", type=int, default=0, help="gunicorn port (default: a spare one)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--keep-logs", action="store_true", help="keep and print the server logs' dir")
    args = p.parse_args(argv)
    faults = args.faults.strip().lower()
    args.faults = (
        list(FAULT_KINDS)
        if faults == "all"
        else []
        if faults in ("none", "")
        else [f.strip() for f in faults.split(",") if f.strip()]
    )
    for f in args.faults:
        if f not in FAULT_KINDS:
            p.error(f"unknown fault {f!r}; choose from {', '.join(FAULT_KINDS)}")
    mix = {}
    for part in args.mix.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in BEHAVIOURS:
            p.error(f"unknown behaviour {name!r}; choose from {', '.join(BEHAVIOURS)}")
        mix[name.strip()] = float(weight or 1)
    args.mix = mix
    lo, _, hi = args.think.partition(",")
    args.think = (float(lo), float(hi or lo))
    if args.lease_seconds < 10:
        p.error("--lease-seconds must be at least 10 (the campaign's minimum)")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stack.exit_on_sigterm()
    logdir = Path(tempfile.mkdtemp(prefix="crowd-"))
    servers = stack.Stack(
        db_name=DB_NAME,
        logdir=logdir,
        port=args.port or stack.free_port(),
        web_workers=args.web_workers,
        redis_url=None,  # a throwaway redis-server: the broker fault restarts it
        access_log=True,
        # INFO: the worker's "ready." line tells when a restarted worker consumes again.
        extra_env={"LOG_LEVEL": "INFO"},
    )
    atexit.register(servers.close)
    info = stack.machine()
    print(
        f"machine: {info['nproc']} cores, {info['cpu_model']}, loadavg {' '.join(info['loadavg'])}"
    )
    print(f"logs: {logdir}", flush=True)
    t = time.time()
    servers.database_prepare()
    seeded = servers.seed(
        {
            "slug": SLUG,
            "name": "Crowd",
            "k": args.k,
            "lease_seconds": args.lease_seconds,
            "prompts": args.prompts,
            "responses": args.responses,
            "users": args.annotators,
            "user_prefix": "crowd",
            "staff": True,
        }
    )
    print(
        f"seeded {seeded['pairs']} pairs (k={args.k}, lease {args.lease_seconds}s), "
        f"{args.annotators} annotators in {time.time() - t:.1f}s",
        flush=True,
    )
    crowd = Crowd(args, servers, seeded)
    monitor = threading.Thread(target=crowd.monitor, name="aggregation-monitor", daemon=True)
    try:
        servers.start_redis()
        servers.start_worker(concurrency=args.worker_concurrency)
        servers.start_beat()
        servers.start_web()
        mix = collections.Counter(a.behaviour for a in crowd.annotators)
        print(
            f"stack up (gunicorn :{servers.port}, redis :{servers.redis_port}); driving "
            f"{dict(mix)} for {args.duration:.0f}s, faults {args.faults or 'none'}",
            flush=True,
        )
        monitor.start()
        asyncio.run(crowd.drive())
        print(
            f"load stopped; waiting up to {args.catchup_timeout:.0f}s for aggregation",
            flush=True,
        )
        catch_up = wait_catch_up(crowd, args.catchup_timeout)
        checks = check_invariants(crowd, catch_up)
        checks["processes_alive_at_end"] = servers.alive()
    finally:
        crowd.monitor_stop.set()
        if monitor.is_alive():
            monitor.join(90)  # it may be restarting a process
        servers.close()
    report = summarise(crowd, checks)
    report["logs"] = str(logdir)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"report: {args.json}")
    failed = [name for name, r in report["invariants"].items() if not r["ok"]]
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'all invariants hold'}")
    if not args.keep_logs and not failed:
        shutil.rmtree(logdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # main's `finally` has stopped the servers already
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)

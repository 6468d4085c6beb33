"""Per-process caches of rows that rarely change, invalidated by the database itself.

The annotate loop reads the same few rows on every request — the caller's token and user, the
campaign, its criteria — and they change perhaps once a day. Each web process keeps them in
memory and drops them the moment the database says they changed:

- Triggers (annotation migration `0007_change_notify`) send `NOTIFY feedback_changed` from
  every UPDATE, DELETE or TRUNCATE of `auth_user`, `authtoken_token` and
  `annotation_campaign`, and every write to `annotation_criterion`, however the write was
  made (admin, API, queryset `update()`, raw SQL). Roles and memberships are not cached. PostgreSQL delivers a NOTIFY when
  the writing transaction commits.
- One listener thread per process holds its own connection with `LISTEN feedback_changed`.
  Any notification bumps the process's generation, which invalidates every entry at once
  (changes are rare, so nothing finer is needed).
- An entry is served only while the listener is connected and has heard every notification
  since the entry was read: the generation is taken before the database read and the entry is
  kept only if it is unchanged after it. While the listener is down (connecting, the database
  restarting) nothing is served from memory and every read goes to the database; on
  reconnecting it bumps the generation, since notifications sent meanwhile were lost.
- Inside a transaction the cache is bypassed: what a transaction reads must come from its
  own snapshot (and a test's uncommitted writes send no notification).

A write is visible to every process within the time a notification takes to arrive (well
under a millisecond on one host), the same window as a request that read the row just before
the write. Without PostgreSQL (the embedded SQLite mode) there is no listener and no caching.
Entries also expire after `max_age` seconds, as a backstop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import psycopg
from django.conf import settings
from django.db import connection

log = logging.getLogger(__name__)

CHANNEL = "feedback_changed"
T = TypeVar("T")


class _Listener:
    """The process's LISTEN connection and its generation counter."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation = 0
        self.connected = False
        self.pid = 0
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.backend_pid: int | None = None

    def ensure_started(self) -> None:
        """Start the listener thread in this process (again after a fork)."""
        pid = os.getpid()
        if self.pid == pid and self.thread is not None and self.thread.is_alive():
            return
        with self.lock:
            if self.pid == pid and self.thread is not None and self.thread.is_alive():
                return
            self.pid = pid
            self.connected = False
            self.generation += 1
            self.thread = threading.Thread(target=self._run, name="process-cache", daemon=True)
            self.thread.start()

    def bump(self) -> None:
        with self.lock:
            self.generation += 1

    def _run(self) -> None:
        db = settings.DATABASES["default"]
        while not self.stopping:
            try:
                with psycopg.connect(
                    host=db.get("HOST") or None,
                    port=db.get("PORT") or None,
                    dbname=db["NAME"],
                    user=db.get("USER") or None,
                    password=db.get("PASSWORD") or None,
                    application_name="feedback-cache-listener",
                    autocommit=True,
                    connect_timeout=5,
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.backend_pid = conn.info.backend_pid
                    with self.lock:
                        # Notifications sent while nobody listened are lost: start afresh.
                        self.generation += 1
                        self.connected = True
                    while not self.stopping:
                        heard = False
                        for _ in conn.notifies(timeout=5.0):
                            heard = True
                            self.bump()
                        if not heard:
                            # Quiet for 5 s: make sure the connection is still there, so a
                            # dead one is never mistaken for "nothing changed".
                            conn.execute("SELECT 1")
            except Exception as exc:  # any failure: serve nothing from memory until back
                with self.lock:
                    self.connected = False
                    self.generation += 1
                if not self.stopping:
                    log.warning("process cache listener: %s; retrying in 1 s", exc)
                    time.sleep(1.0)
            finally:
                with self.lock:
                    self.connected = False
                    self.generation += 1


_listener = _Listener()


def enabled() -> bool:
    return connection.vendor == "postgresql" and getattr(settings, "PROCESS_CACHES", True)


def listener_generation() -> int | None:
    """The current generation while entries may be served, else None."""
    if not enabled():
        return None
    _listener.ensure_started()
    if not _listener.connected or connection.in_atomic_block:
        return None
    return _listener.generation


_MISSING = object()


class ProcessCache(Generic[T]):
    """A dict of values read from the database, served while the listener vouches for them."""

    def __init__(self, name: str, *, max_age: float = 300.0, max_size: int = 10_000) -> None:
        self.name = name
        self.max_age = max_age
        self.max_size = max_size
        self._entries: dict[Hashable, tuple[int, float, T]] = {}

    def get_or_load(self, key: Hashable, load: Callable[[], T]) -> T:
        """The cached value for `key`, or `load()` (a database read), kept if still valid."""
        generation = listener_generation()
        if generation is None:
            return load()
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None and entry[0] == generation and now - entry[1] < self.max_age:
            return entry[2]
        value = load()
        if listener_generation() == generation:
            if len(self._entries) >= self.max_size:
                self._entries.clear()
            self._entries[key] = (generation, now, value)
        return value

    def clear(self) -> None:
        self._entries.clear()


def wait_for_listener(timeout: float = 10.0) -> bool:
    """Start the listener and wait until it is connected (tests, warm-up)."""
    if not enabled():
        return False
    _listener.ensure_started()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _listener.connected:
            return True
        time.sleep(0.01)
    return False


def shutdown(timeout: float = 5.0) -> None:
    """Stop this process's listener and close its connection (a test session ends, and its
    database is about to be dropped). The next cache read starts a new one."""
    thread = _listener.thread
    if thread is None or not thread.is_alive() or _listener.pid != os.getpid():
        return
    _listener.stopping = True
    try:
        if _listener.backend_pid is not None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", [_listener.backend_pid])
        thread.join(timeout)
    finally:
        _listener.stopping = False
        _listener.thread = None


def generation() -> int:
    """The raw generation counter (tests wait for it to move)."""
    return _listener.generation


def stats() -> dict[str, Any]:
    return {"connected": _listener.connected, "generation": _listener.generation}

"""Settings helpers for embedded mode: SQLite and a filesystem broker under VAR_DIR.

Imported by settings.py, so no Django imports here.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any


def sqlite_database(path: Path) -> dict[str, Any]:
    """SQLite tuned for a web server and a worker writing at once.

    WAL lets readers proceed while one writer writes. IMMEDIATE transactions take the write
    lock at BEGIN, so two transactions never both read and then fail to upgrade to a write
    ("database is locked" that no retry fixes); they queue on the busy timeout instead. That
    same serialisation is what keeps leases correct here without SELECT ... SKIP LOCKED: a
    lease's read-count-insert runs while no other writer can run.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,  # seconds a writer waits for the lock (the busy timeout)
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
            "PRAGMA foreign_keys=ON;",
        },
    }


def filesystem_broker_options(folder: Path) -> dict[str, Any]:
    """kombu's filesystem transport: producers and consumers share one message folder."""
    messages, control = folder / "messages", folder / "control"
    for path in (messages, control):
        path.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(messages),
        "data_folder_out": str(messages),
        "control_folder": str(control),
        "store_processed": False,
        "polling_interval": 0.5,
    }


def secret_key_from(path: Path) -> str:
    """Read the key kept at `path`, creating it (mode 0600) on first use."""
    try:
        key = path.read_text().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    # Written to a private temporary file and linked into place: when two processes start
    # together, exactly one link succeeds and the other reads a complete key, never a
    # half-written one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    try:
        os.link(tmp, path)
    except FileExistsError:
        key = path.read_text().strip()
    finally:
        tmp.unlink()
    return key

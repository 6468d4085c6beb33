"""Checks that PostgreSQL and Redis answer before the demo or the tests start.

    python -m feedback_app.preflight [--create-db] [--require-servers]

Checks the servers that DATABASE_URL and REDIS_URL name; with neither set the app runs
embedded and there is nothing to check, unless --require-servers (the test suite) asks for
the local defaults. Exits 2 with instructions when one is not reachable; --create-db creates
the configured PostgreSQL database if it does not exist yet.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlparse

import environ
import psycopg
import redis

HOW_TO_START = {
    "postgres": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "redis": 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
}


DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/feedback"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def check(*, create_db: bool = False, require_servers: bool = False) -> list[str]:
    env = environ.Env()
    problems = []
    db_url = os.environ.get("DATABASE_URL") or (DEFAULT_DATABASE_URL if require_servers else "")
    db = env.db_url_config(db_url) if db_url else {"ENGINE": ""}
    if db["ENGINE"].endswith("postgresql"):
        host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
        try:
            with psycopg.connect(
                dbname="postgres",
                host=host,
                port=port,
                user=db.get("USER") or "postgres",
                password=db.get("PASSWORD") or None,
                connect_timeout=3,
                autocommit=True,
            ) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]
                ).fetchone()
                if not exists and create_db:
                    conn.execute(f'CREATE DATABASE "{db["NAME"]}"')
        except psycopg.Error as exc:
            problems.append(
                f"PostgreSQL at {host}:{port} is not reachable ({exc}).\n"
                f"  Start it with: {HOW_TO_START['postgres']}\n"
                "  or point DATABASE_URL at a running server."
            )
    redis_url = os.environ.get("REDIS_URL") or (DEFAULT_REDIS_URL if require_servers else "")
    if not redis_url:
        return problems
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        parsed = urlparse(redis_url)
        problems.append(
            f"Redis at {parsed.hostname}:{parsed.port or 6379} is not reachable ({exc}).\n"
            f"  Start it with: {HOW_TO_START['redis']}\n"
            "  or point REDIS_URL at a running server."
        )
    return problems


def main() -> int:
    problems = check(
        create_db="--create-db" in sys.argv, require_servers="--require-servers" in sys.argv
    )
    for problem in problems:
        print(problem, file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

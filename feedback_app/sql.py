"""Hot-path SQL that PostgreSQL parses and plans once per connection.

The lease engine's statements run several times per judgment, and planning them (subqueries,
an ORDER BY served by an index) cost PostgreSQL more than running them. Through `row()` and
`rows()` they are sent with server-side parameters and prepared after their first use on a
connection (psycopg's `prepare=True`); Django's cursor is still taken first, so its checks
(thread sharing, a broken transaction) apply, its error wrapping turns a unique violation
into django.db.IntegrityError, and with DEBUG (or a test's CaptureQueriesContext) the
statements are logged as Django's own are.

Written for server-side parameters: a parameter whose type PostgreSQL cannot infer from
where it stands (`%(x)s IS NULL`) needs a cast. Behind PgBouncer in transaction mode
(DISABLE_SERVER_SIDE_CURSORS) nothing is prepared, since prepared statements live in a
server session. Other databases (the embedded SQLite mode) get a plain Django cursor.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from django.db import connection

Params = Mapping[str, Any] | Sequence[Any]


def _execute(sql: str, params: Params, fetch_all: bool) -> Any:
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if fetch_all else cursor.fetchone()
    prepare = not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
    with connection.cursor() as django_cursor:
        connection.validate_no_broken_transaction()
        start = time.monotonic()
        with (
            connection.wrap_database_errors,
            psycopg.Cursor(django_cursor.cursor.connection) as cur,
        ):
            cur.execute(sql, params, prepare=prepare)
            result = cur.fetchall() if fetch_all else cur.fetchone()
        if connection.queries_logged:
            connection.queries_log.append(
                {"sql": f"{sql} -- {params!r}", "time": f"{time.monotonic() - start:.3f}"}
            )
    return result


def row(sql: str, params: Params) -> Any:
    """The first row of the statement's result, or None."""
    return _execute(sql, params, fetch_all=False)


def rows(sql: str, params: Params) -> list[Any]:
    """Every row of the statement's result."""
    return list(_execute(sql, params, fetch_all=True))

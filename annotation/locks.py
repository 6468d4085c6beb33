"""Row locks of the annotation app: one helper per lock, all of them here.

Lock order, for every transaction that takes more than one:

    membership (campaign, annotator)  ->  pair

A lease request holds its membership row (serialising one annotator's tabs and double
clicks) and then pair locks: candidates that turned out full stay locked while it scans on
with SKIP LOCKED (which never waits), and before it would wait for a pair it ends its
transaction, releasing them (annotation/services/leases.py, `_lease_scan`). A submit, skip
or renewal takes only one pair lock. So no transaction ever waits for a pair lock while
holding another pair lock, and waits cannot form a cycle.

Every helper locks FOR NO KEY UPDATE (`no_key=True`): no key of these rows changes under
them, and inserts elsewhere that reference the row (a judgment, a lease) then need not wait.

A value read in the statement that waited for a lock is from before the wait (PostgreSQL's
READ COMMITTED evaluates the rest of the statement on its starting snapshot). Callers re-read
what their decision depends on in a fresh statement after the helper returns; the helpers
return nothing for that reason.
"""

from __future__ import annotations

from typing import Any

from django.db import connection

from .errors import Forbidden
from .models import Membership, Pair

# Written as SQL: both run on every lease or judgment, and building them with the ORM cost
# more than running them. SQLite has no row locks (its writers are serialised instead).


def _lock(table: str, where: str, params: dict[str, Any]) -> bool:
    """Lock the rows of `table` matching `where`; whether there were any."""
    suffix = " FOR NO KEY UPDATE" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {table} WHERE {where}{suffix}", params)
        return bool(cursor.fetchall())


def membership_lock(*, campaign_id: int, user_id: Any, slug: str) -> None:
    """Lock the annotator's membership row of the campaign; Forbidden if there is none.
    Call inside a transaction."""
    if not _lock(
        Membership._meta.db_table,
        "campaign_id = %(campaign)s AND user_id = %(user)s",
        {"campaign": campaign_id, "user": user_id},
    ):
        raise Forbidden(f"You are not a member of campaign '{slug}'.")


def pair_lock(*, pair_id: int) -> None:
    """Lock the pair's row, waiting for its holder. Every operation that takes or may take
    a slot of the pair holds this lock while it decides. Call inside a transaction."""
    _lock(Pair._meta.db_table, "id = %(pair)s", {"pair": pair_id})

"""The lease engine: which pair an annotator gets, and every write that takes or frees a slot
(leases, judgments, skips, renewals, releases).

Slot invariant: for every pair, active judgments + live leases held by annotators who have
not judged it <= campaign.judgments_per_pair (k).

The discipline every function here follows:

1. Locks come from `annotation/locks.py`, one helper per row lock, in the order written there
   (membership -> pair). Every operation that takes or may take a slot of a pair — a lease, a
   submit, a skip, a renewal — decides while holding that pair's lock.
2. After taking a lock, what the decision depends on is re-read in a fresh statement
   (`_slot_state`): a value read by the statement that waited is from before the wait, so a
   skip committed by a second tab meanwhile would be missed.
3. One clock: the database's. Every liveness decision compares with the database's time in
   the deciding statement (`_NOW`), and new expiry times are that time plus the lease length.
   Two web hosts whose clocks differ can never disagree on whether a lease is live.
4. Results are typed (`SlotState`, `Assignment`, `Judgment`); no sentinels.
5. "Nothing left" only when nothing is left: a lease request rescans until it holds a pair or
   a scan that skips no locked row finds none for this annotator.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils.dateparse import parse_datetime

from ..errors import (
    AlreadyJudged,
    CampaignNotActive,
    ClipsPending,
    Forbidden,
    LeaseLost,
    NotFound,
    ServiceError,
    shown,
    text_check,
)
from ..events import judgments_committed_send
from ..locks import membership_lock, pair_lock
from ..models import Assignment, Campaign, Choice, Judgment, Membership, Pair, Skip
from ..pair_order import pair_order_for
from ..permissions import campaign_by_id
from ..selectors import assignment_detail, criteria_slugs, pair_with_items, pair_with_items_sql

SIDE_CHOICES = ("left", "right")
# What an annotator answers: a side as shown, or a verdict on both. Never the stored "a"/"b":
# they are not told which side that is (it would reveal import order), so it would be blind.
VALID_CHOICES = (*SIDE_CHOICES, Choice.TIE.value, Choice.BOTH_BAD.value)
MAX_DURATION_MS = 2**31 - 1  # the column is a 32-bit integer

_TABLES = {
    "pair": Pair._meta.db_table,
    "assignment": Assignment._meta.db_table,
    "judgment": Judgment._meta.db_table,
    "skip": Skip._meta.db_table,
    "membership": Membership._meta.db_table,
    "campaign": Campaign._meta.db_table,
}


def _now_sql() -> str:
    """The database's time in a statement: the time the statement started (PostgreSQL's
    now() would be the transaction's start, before any lock wait). SQLite stores datetimes as
    UTC text that compares in order. Escaped for use with query parameters."""
    if connection.vendor == "postgresql":
        return "STATEMENT_TIMESTAMP()"
    return "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'NOW')"


def _datetime(value: Any) -> datetime | None:
    """A datetime read by a raw query: aware already (PostgreSQL), or UTC as naive datetime
    or text (SQLite, by whether the column's declared type was seen)."""
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else parse_datetime(value)
    assert parsed is not None, value
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _require_active(campaign: Campaign) -> None:
    if not campaign.is_open:
        raise CampaignNotActive(
            f"Campaign '{campaign.slug}' is {campaign.status}; it takes no judgments now."
        )


def _mark_stored(instance: Any) -> None:
    """An instance built from a row this module wrote or read with its own SQL: the ORM
    treats it as loaded from the database (a later save() updates, never inserts)."""
    instance._state.adding = False
    instance._state.db = connection.alias


# ---- what a decision depends on, read in a fresh statement after the lock ----------------


@dataclass(frozen=True)
class SlotState:
    """A pair as one annotator's operation sees it, read after taking the pair's lock."""

    now: datetime  # the database's time
    judgment_count: int
    item_a_id: int
    item_b_id: int
    group_key: int
    others_live: int  # live leases of other annotators
    judged_id: int | None  # this annotator's judgment of the pair
    skipped: bool  # this annotator skipped the pair
    own_open_lease_id: int | None  # the newest open lease of this annotator, live or not
    lease_status: str | None  # the lease the operation came through, if any
    lease_live: bool
    lease_leased_at: datetime | None

    def has_free_slot(self, k: int) -> bool:
        """A slot this annotator could take: their own live lease is not counted."""
        return self.judgment_count + self.others_live < k


_SLOT_STATE_SQL = """
SELECT p.judgment_count, p.item_a_id, p.item_b_id, p.group_key,
  (SELECT COUNT(*) FROM {assignment} a
   WHERE a.pair_id = p.id AND a.status = 'open' AND a.expires_at > {now}
     AND a.annotator_id <> %(me)s),
  (SELECT j.id FROM {judgment} j WHERE j.pair_id = p.id AND j.annotator_id = %(me)s),
  EXISTS (SELECT 1 FROM {skip} s WHERE s.pair_id = p.id AND s.annotator_id = %(me)s),
  (SELECT a.id FROM {assignment} a
   WHERE a.pair_id = p.id AND a.annotator_id = %(me)s AND a.status = 'open'
   ORDER BY a.id DESC LIMIT 1),
  l.status, l.expires_at > {now}, l.leased_at,
  {now}
FROM {pair} p LEFT JOIN {assignment} l ON l.id = %(lease)s AND l.pair_id = p.id
WHERE p.id = %(pair)s
"""


def _slot_state(*, pair_id: int, annotator_id: Any, lease_id: int | None = None) -> SlotState:
    """Call holding the pair's lock (locks.pair_lock), in a statement of its own."""
    with connection.cursor() as cursor:
        cursor.execute(
            _SLOT_STATE_SQL.format(now=_now_sql(), **_TABLES),
            {"me": annotator_id, "lease": lease_id, "pair": pair_id},
        )
        row = cursor.fetchone()
    now = _datetime(row[11])
    assert now is not None
    return SlotState(
        now=now,
        judgment_count=row[0],
        item_a_id=row[1],
        item_b_id=row[2],
        group_key=row[3],
        others_live=row[4],
        judged_id=row[5],
        skipped=bool(row[6]),
        own_open_lease_id=row[7],
        lease_status=row[8],
        lease_live=bool(row[9]),
        lease_leased_at=_datetime(row[10]),
    )


# ---- leasing the next pair ---------------------------------------------------------------


_HELD_SQL = """
SELECT
  (SELECT a.id FROM {assignment} a
   WHERE a.annotator_id = %(me)s AND a.campaign_id = %(campaign)s AND a.status = 'open'
     AND a.expires_at > {now}
   ORDER BY a.id DESC LIMIT 1),
  (SELECT m.last_group_key FROM {membership} m
   WHERE m.campaign_id = %(campaign)s AND m.user_id = %(me)s),
  (SELECT c.status FROM {campaign} c WHERE c.id = %(campaign)s)
"""

# The first free-looking pair in the campaign's order, locked (SKIP LOCKED) when asked,
# returned with both items and the prompt (selectors.pair_with_items_sql): the lease needs
# them, and this saves a statement on every lease.
_CANDIDATE_SQL = """
SELECT p.id FROM {pair} p
WHERE p.campaign_id = %(campaign)s AND p.ready AND p.judgment_count < %(k)s {tier} {exclude}
  AND NOT EXISTS (SELECT 1 FROM {judgment} j WHERE j.pair_id = p.id AND j.annotator_id = %(me)s)
  AND NOT EXISTS (SELECT 1 FROM {skip} s WHERE s.pair_id = p.id AND s.annotator_id = %(me)s)
  AND p.judgment_count + (
        SELECT COUNT(*) FROM {assignment} a
        WHERE a.pair_id = p.id AND a.status = 'open' AND a.expires_at > {now}
          AND a.annotator_id <> %(me)s
      ) < %(k)s
ORDER BY {order}
LIMIT 1
{lock}
"""


def assignment_lease_next(*, annotator: AbstractBaseUser, campaign: Campaign) -> Assignment | None:
    """Lease the next pair for `annotator`, or return the live lease they already hold, with
    its pair, both items and the prompt loaded.

    Returns None only when nothing is left for them: every pair of the campaign is full,
    judged or skipped by them, as seen by a scan that skipped no locked row.
    """
    tried: list[int] = []
    while True:
        with transaction.atomic():
            # Serialises this annotator's simultaneous requests (two tabs, a double click):
            # the second sees the lease the first took instead of taking another.
            membership_lock(campaign_id=campaign.pk, user_id=annotator.pk, slug=campaign.slug)
            with connection.cursor() as cursor:
                cursor.execute(
                    _HELD_SQL.format(now=_now_sql(), **_TABLES),
                    {"me": annotator.pk, "campaign": campaign.pk},
                )
                held, last_group, status = cursor.fetchone()
            if status != Campaign.Status.ACTIVE:
                raise CampaignNotActive(
                    f"Campaign '{campaign.slug}' is {status}; it takes no judgments now."
                )
            if held is not None:
                return assignment_detail(assignment_id=held)
            leased = _lease_scan(campaign, annotator, last_group, tried)
        # _RESTART: this transaction held the locks of pairs found full, and the next step
        # waits for a pair: the commit above (nothing was written) released them first.
        if leased is not _RESTART:
            if leased is not None:
                leased.campaign = campaign
            return leased


_RESTART = object()


def _lease_scan(
    campaign: Campaign, annotator: AbstractBaseUser, last_group: Any, tried: list[int]
) -> Any:
    """Lease the first free pair: an Assignment (with its pair, items and prompt), None
    when nothing is left, or _RESTART.

    A candidate found full once locked stays locked until the transaction ends (there is no
    savepoint per candidate: two statements saved on every lease). That is harmless to
    scans, which pass over locked rows, but this transaction must not then wait for another
    pair: when only a wait is left, it ends first (_RESTART) and the caller starts afresh,
    holding no pair."""
    holding = False
    while True:
        pair = _candidate(campaign, annotator, last_group, tried, skip_locked=True)
        if pair is None:
            if holding:
                return _RESTART
            # Every free pair may be locked for an instant by other requests: that is not
            # "nothing left". Pick one without locking, then wait for it.
            pair = _candidate(campaign, annotator, last_group, tried, skip_locked=False)
            if pair is None:
                _refuse_if_clips_pending(campaign, annotator)
                return None
            pair_lock(pair_id=pair.pk)
        leased = _lease_take(campaign=campaign, annotator=annotator, pair_id=pair.pk)
        if leased is not None:
            leased.pair = pair  # with its items and prompt, read by the candidate statement
            return leased
        tried.append(pair.pk)
        holding = True


_WAITING_SQL = """
SELECT EXISTS (
  SELECT 1 FROM {pair} p
  WHERE p.campaign_id = %(campaign)s AND NOT p.ready AND p.judgment_count < %(k)s
    AND NOT EXISTS (SELECT 1 FROM {judgment} j WHERE j.pair_id = p.id AND j.annotator_id = %(me)s)
    AND NOT EXISTS (SELECT 1 FROM {skip} s WHERE s.pair_id = p.id AND s.annotator_id = %(me)s)
)
"""


def _refuse_if_clips_pending(campaign: Campaign, annotator: AbstractBaseUser) -> None:
    """No ready pair is free for the annotator: if a pair they could judge once its clips
    are rendered remains, say so (ClipsPending) instead of "nothing left". Only reached
    when a lease finds nothing, so it costs the hot path nothing."""
    with connection.cursor() as cursor:
        cursor.execute(
            _WAITING_SQL.format(**_TABLES),
            {"campaign": campaign.pk, "k": campaign.judgments_per_pair, "me": annotator.pk},
        )
        (waiting,) = cursor.fetchone()
    if waiting:
        raise ClipsPending(
            "The remaining pairs' clips are still being rendered; try again in a minute."
        )


def _candidate(
    campaign: Campaign,
    annotator: AbstractBaseUser,
    last_group: Any,
    tried: list[int],
    *,
    skip_locked: bool,
) -> Pair | None:
    """The first pair in the campaign's order that looks free for the annotator, with both
    items and the prompt, trying the order's preference tiers in turn. With `skip_locked`
    (PostgreSQL) the row is locked and rows locked by others are passed over; without,
    nothing is locked.

    Written as SQL: this runs on every lease and the ORM spent longer building the statement
    than PostgreSQL spends running it (the pair_lease_order index serves the ORDER BY)."""
    order = pair_order_for(campaign.pair_order)
    params: dict[str, Any] = {
        "campaign": campaign.pk,
        "k": campaign.judgments_per_pair,
        "me": annotator.pk,
        "last_group": last_group,
    }
    exclude = ""
    if tried:
        params.update({f"x{n}": pair_id for n, pair_id in enumerate(tried)})
        exclude = f"AND p.id NOT IN ({', '.join(f'%(x{n})s' for n in range(len(tried)))})"
    lock = ""
    if skip_locked and connection.features.has_select_for_update_skip_locked:
        lock = "FOR NO KEY UPDATE OF p SKIP LOCKED"
    # SQLite has no row locks and serialises writers instead (feedback_app/embedded.py).
    with connection.cursor() as cursor:
        for tier in order.tiers:
            sql = _CANDIDATE_SQL.format(
                now=_now_sql(),
                tier=tier,
                exclude=exclude,
                order=order.order_by,
                lock=lock,
                **_TABLES,
            )
            cursor.execute(pair_with_items_sql(pair_ids=sql), params)
            row = cursor.fetchone()
            if row is not None:
                return pair_with_items(row)
    return None


_LEASE_WRITE_SQL = """
WITH seen AS (
  UPDATE {membership} SET last_group_key = %(group)s
  WHERE campaign_id = %(campaign)s AND user_id = %(me)s
    AND last_group_key IS DISTINCT FROM %(group)s
)
INSERT INTO {assignment}
  (pair_id, annotator_id, campaign_id, status, a_on_left, leased_at, expires_at)
VALUES (%(pair)s, %(me)s, %(campaign)s, 'open', %(a_on_left)s, %(now)s, %(expires)s)
RETURNING id
"""


def _lease_take(
    *, campaign: Campaign, annotator: AbstractBaseUser, pair_id: int
) -> Assignment | None:
    """Call holding the pair's lock. None when the pair has no slot for the annotator after
    all (the candidate query's snapshot may predate a lease committed just before the lock
    was granted); nothing is written then."""
    state = _slot_state(pair_id=pair_id, annotator_id=annotator.pk)
    if (
        state.judged_id is not None
        or state.skipped
        or not state.has_free_slot(campaign.judgments_per_pair)
    ):
        return None
    expires_at = state.now + timedelta(seconds=campaign.lease_seconds)
    lease = Assignment(
        pair_id=pair_id,
        annotator_id=annotator.pk,
        campaign_id=campaign.pk,
        status=Assignment.Status.OPEN,
        a_on_left=random.random() < 0.5,
        leased_at=state.now,
        expires_at=expires_at,
    )
    if state.own_open_lease_id is not None:
        # Revive the annotator's own expired lease of this pair rather than open a second
        # one: one open lease per (pair, annotator).
        _membership_seen(campaign=campaign, annotator=annotator, group_key=state.group_key)
        Assignment.objects.filter(pk=state.own_open_lease_id).update(
            leased_at=state.now, expires_at=expires_at
        )
        return Assignment.objects.get(pk=state.own_open_lease_id)
    if connection.vendor == "postgresql":
        # The annotator's last prompt and the new lease in one statement: this is the write
        # of every lease.
        with connection.cursor() as cursor:
            cursor.execute(
                _LEASE_WRITE_SQL.format(**_TABLES),
                {
                    "group": state.group_key,
                    "campaign": campaign.pk,
                    "me": annotator.pk,
                    "pair": pair_id,
                    "a_on_left": lease.a_on_left,
                    "now": state.now,
                    "expires": expires_at,
                },
            )
            lease.pk = cursor.fetchone()[0]
        _mark_stored(lease)
        return lease
    _membership_seen(campaign=campaign, annotator=annotator, group_key=state.group_key)
    lease.save(force_insert=True)
    return lease


def _membership_seen(*, campaign: Campaign, annotator: AbstractBaseUser, group_key: int) -> None:
    """Record the prompt the annotator was last given (the pair order's first tier avoids it)."""
    Membership.objects.filter(campaign_id=campaign.pk, user_id=annotator.pk).exclude(
        last_group_key=group_key
    ).update(last_group_key=group_key)


# ---- acting on a lease ---------------------------------------------------------------------


_LEASE_SQL = """
SELECT a.pair_id, a.annotator_id, a.campaign_id, a.status, a.a_on_left, a.leased_at,
  a.expires_at,
  EXISTS (SELECT 1 FROM {membership} m
          WHERE m.campaign_id = a.campaign_id AND m.user_id = a.annotator_id)
FROM {assignment} a WHERE a.id = %(id)s
"""


def _assignment_for(
    *, annotator: AbstractBaseUser, assignment_id: Any, campaign: Campaign | None = None
) -> Assignment:
    """The annotator's own lease, with its campaign; refused once they are no longer a
    member of the campaign (checked in the same statement), and, given `campaign` (the one a
    page's URL names), unless the lease is of that campaign. The campaign comes from the
    process cache (annotation/permissions.py)."""
    try:
        lease_id = int(assignment_id)
        if not 0 < lease_id < 2**63:
            raise ValueError(lease_id)
    except (ValueError, TypeError):
        raise NotFound(f"No lease with id {assignment_id!r}.", field="assignment") from None
    with connection.cursor() as cursor:
        cursor.execute(_LEASE_SQL.format(**_TABLES), {"id": lease_id})
        row = cursor.fetchone()
    if row is None:
        raise NotFound(f"No lease with id {assignment_id!r}.", field="assignment")
    pair_id, annotator_id, campaign_id, status, a_on_left, leased_at, expires_at, member = row
    if annotator_id != annotator.pk:
        raise Forbidden("This lease belongs to another annotator.", field="assignment")
    if campaign is not None and campaign_id != campaign.pk:
        raise NotFound(
            f"No lease with id {assignment_id!r} in campaign '{campaign.slug}'.",
            field="assignment",
        )
    own = campaign_by_id(campaign_id=campaign_id)
    if own is None:  # deleted since the statement above
        raise NotFound(f"No lease with id {assignment_id!r}.", field="assignment")
    if not member:
        raise Forbidden(f"You are no longer a member of campaign '{own.slug}'.", field="assignment")
    leased, expires = _datetime(leased_at), _datetime(expires_at)
    assert leased is not None and expires is not None  # NOT NULL columns
    assignment = Assignment(
        id=lease_id,
        pair_id=pair_id,
        annotator_id=annotator_id,
        campaign=own,
        status=status,
        a_on_left=bool(a_on_left),
        leased_at=leased,
        expires_at=expires,
    )
    _mark_stored(assignment)
    return assignment


def choices_canonical(*, criteria: list[str], raw: Any, a_on_left: bool) -> dict[str, str]:
    """Validate an annotator's answer and turn "left"/"right" into "a"/"b"."""
    if isinstance(raw, str) and len(criteria) == 1:
        raw = {criteria[0]: raw}
    if not isinstance(raw, Mapping):
        raise ServiceError(
            f"choices must be an object mapping each criterion ({', '.join(criteria)}) to a choice.",
            field="choices",
        )
    unknown = sorted(shown(key) for key in set(raw) - set(criteria))
    if unknown:
        # Echoed through shown(): a lone surrogate would make the error itself unsendable.
        raise ServiceError(
            f"Unknown criterion '{unknown[0]}'; this campaign asks: {', '.join(criteria)}.",
            field=f"choices.{unknown[0]}",
        )
    out: dict[str, str] = {}
    for slug in criteria:
        value = raw.get(slug)
        if value is None or value == "":
            raise ServiceError(f"No choice given for criterion '{slug}'.", field=f"choices.{slug}")
        if value not in VALID_CHOICES:
            raise ServiceError(
                f"'{shown(value)}' is not a valid choice for '{slug}'; use one of: "
                f"{', '.join(VALID_CHOICES)}.",
                field=f"choices.{slug}",
            )
        if value == "left":
            value = Choice.A if a_on_left else Choice.B
        elif value == "right":
            value = Choice.B if a_on_left else Choice.A
        out[slug] = str(value)
    return out


def judgment_submit(
    *,
    annotator: AbstractBaseUser,
    assignment_id: Any,
    choices: Any,
    duration_ms: int | None = None,
    campaign: Campaign | None = None,
) -> Judgment:
    """Record the annotator's judgment of the pair leased by `assignment_id`.

    A submit after the lease expired is accepted while the pair still has a free slot, since
    the work was done; otherwise it raises LeaseLost. A second submit raises AlreadyJudged
    with the first judgment's id; a skipped pair is refused. Nothing is written when any
    check fails. The judgment stands once committed: scheduling its aggregation afterwards
    can fail without turning the answer into an error.
    """
    assignment = _assignment_for(
        annotator=annotator, assignment_id=assignment_id, campaign=campaign
    )
    campaign = assignment.campaign
    _require_active(campaign)
    criteria = criteria_slugs(campaign_id=campaign.pk)
    canonical = choices_canonical(criteria=criteria, raw=choices, a_on_left=assignment.a_on_left)
    if duration_ms is not None and (
        not isinstance(duration_ms, int) or not 0 <= duration_ms <= MAX_DURATION_MS
    ):
        raise ServiceError(
            f"duration_ms must be an integer from 0 to {MAX_DURATION_MS}.", field="duration_ms"
        )
    try:
        with transaction.atomic():
            pair_lock(pair_id=assignment.pair_id)
            state = _slot_state(
                pair_id=assignment.pair_id, annotator_id=annotator.pk, lease_id=assignment.pk
            )
            _submit_check(state=state, campaign=campaign)
            if duration_ms is None:
                assert state.lease_leased_at is not None
                duration_ms = max(
                    0, int((state.now - state.lease_leased_at).total_seconds() * 1000)
                )
            judgment = Judgment(
                pair_id=assignment.pair_id,
                annotator_id=annotator.pk,
                campaign_id=campaign.pk,
                assignment=assignment,
                choices=canonical,
                shown_left_id=state.item_a_id if assignment.a_on_left else state.item_b_id,
                duration_ms=duration_ms,
            )
            _judgment_write(judgment)
            # robust: an exception here is logged, never raised into a committed submit.
            transaction.on_commit(
                partial(judgments_committed_send, campaign_id=campaign.pk), robust=True
            )
    except IntegrityError:
        # The unique (pair, annotator) constraint is the backstop for a judgment made through
        # a second lease of the same pair.
        existing = (
            Judgment.objects.filter(pair_id=assignment.pair_id, annotator_id=annotator.pk)
            .values_list("id", flat=True)
            .first()
        )
        if existing is None:
            raise
        raise AlreadyJudged(
            "You have already judged this pair.", field="assignment", judgment_id=existing
        ) from None
    return judgment


_JUDGMENT_WRITE_SQL = """
WITH counted AS (
  UPDATE {pair} SET judgment_count = judgment_count + 1 WHERE id = %(pair)s
), done AS (
  UPDATE {assignment} SET status = 'done'
  WHERE pair_id = %(pair)s AND annotator_id = %(me)s AND status = 'open'
)
INSERT INTO {judgment}
  (pair_id, annotator_id, campaign_id, assignment_id, choices, shown_left_id, duration_ms,
   status, created_at)
VALUES (%(pair)s, %(me)s, %(campaign)s, %(assignment)s, %(choices)s::jsonb, %(shown_left)s,
        %(duration)s, 'active', STATEMENT_TIMESTAMP())
RETURNING id, created_at
"""


def _judgment_write(judgment: Judgment) -> None:
    """Store the judgment, count it on its pair and finish every open lease of this
    annotator on the pair (not only the one used). Call holding the pair's lock.

    On PostgreSQL one statement (the write of every judgment); all of it or none, so a
    duplicate refused by the unique (pair, annotator) constraint changes nothing."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                _JUDGMENT_WRITE_SQL.format(**_TABLES),
                {
                    "pair": judgment.pair_id,
                    "me": judgment.annotator_id,
                    "campaign": judgment.campaign_id,
                    "assignment": judgment.assignment_id,
                    "choices": json.dumps(judgment.choices),
                    "shown_left": judgment.shown_left_id,
                    "duration": judgment.duration_ms,
                },
            )
            judgment.pk, judgment.created_at = cursor.fetchone()
        _mark_stored(judgment)
        return
    judgment.save(force_insert=True)  # created_at comes back with the insert
    Pair.objects.filter(pk=judgment.pair_id).update(judgment_count=F("judgment_count") + 1)
    Assignment.objects.filter(
        pair_id=judgment.pair_id, annotator_id=judgment.annotator_id, status=Assignment.Status.OPEN
    ).update(status=Assignment.Status.DONE)


@dataclass(frozen=True)
class Submitted:
    """A stored judgment and, when asked for, the annotator's next lease: None when nothing is
    left for them, or when `next_refused` says why none could be taken (the campaign was
    paused, they were removed) -- the judgment stands either way."""

    judgment: Judgment
    next: Assignment | None = None
    next_refused: ServiceError | None = None


def judgment_submit_and_lease_next(
    *,
    annotator: AbstractBaseUser,
    assignment_id: Any,
    choices: Any,
    duration_ms: int | None = None,
) -> Submitted:
    """judgment_submit, then assignment_lease_next in the same campaign: one round trip per
    judgment for a scripted annotator, as the compare page has. Two transactions, so the
    lease takes its locks in the order locks.py gives (membership, then pair)."""
    judgment = judgment_submit(
        annotator=annotator, assignment_id=assignment_id, choices=choices, duration_ms=duration_ms
    )
    assert judgment.assignment is not None  # judgment_submit made it from this lease
    campaign = judgment.assignment.campaign
    try:
        lease = assignment_lease_next(annotator=annotator, campaign=campaign)
    except (CampaignNotActive, ClipsPending, Forbidden) as refused:
        return Submitted(judgment=judgment, next_refused=refused)
    return Submitted(judgment=judgment, next=lease)


def _submit_check(*, state: SlotState, campaign: Campaign) -> None:
    """Refuse a duplicate, a skipped pair, a released lease, or a lease that is no longer
    live while the pair has no free slot. Call with `state` read under the pair's lock."""
    if state.judged_id is not None:
        raise AlreadyJudged(
            "You have already judged this pair.", field="assignment", judgment_id=state.judged_id
        )
    if state.skipped or state.lease_status == Assignment.Status.SKIPPED:
        raise ServiceError("You skipped this pair; it cannot be judged now.", field="assignment")
    if state.lease_status == Assignment.Status.RELEASED:
        raise LeaseLost(
            "This lease was released; your answer was not recorded.", field="assignment"
        )
    live = state.lease_status == Assignment.Status.OPEN and state.lease_live
    if not live and not state.has_free_slot(campaign.judgments_per_pair):
        raise LeaseLost(
            "Your lease on this pair expired and the pair has since received all the "
            "judgments it needs; your answer was not recorded.",
            field="assignment",
        )


def skip_create(
    *,
    annotator: AbstractBaseUser,
    assignment_id: Any,
    reason: str = "",
    campaign: Campaign | None = None,
) -> Skip:
    """Skip the leased pair: it frees the slot and is never offered to this annotator again."""
    assignment = _assignment_for(
        annotator=annotator, assignment_id=assignment_id, campaign=campaign
    )
    _require_active(assignment.campaign)
    if len(reason) > 500:
        raise ServiceError("reason is longer than 500 characters.", field="reason")
    text_check(reason, field="reason")
    with transaction.atomic():
        # The pair's lock orders a skip against a submit of the same pair (two tabs).
        pair_lock(pair_id=assignment.pair_id)
        state = _slot_state(pair_id=assignment.pair_id, annotator_id=annotator.pk)
        if state.judged_id is not None:
            raise ServiceError("You have already judged this pair.", field="assignment")
        skip, _ = Skip.objects.get_or_create(
            pair_id=assignment.pair_id,
            annotator_id=annotator.pk,
            defaults={"campaign_id": assignment.campaign_id, "reason": reason},
        )
        Assignment.objects.filter(
            pair_id=assignment.pair_id, annotator_id=annotator.pk, status=Assignment.Status.OPEN
        ).update(status=Assignment.Status.SKIPPED)
    return skip


def assignment_renew(
    *, annotator: AbstractBaseUser, assignment_id: Any, campaign: Campaign | None = None
) -> Assignment:
    """Extend a lease while its page is open and in use. An expired lease is revived only
    while the pair still has a free slot, and no renewal takes a lease past its maximum life
    (`Campaign.lease_max_seconds` after it was taken), so an idle tab frees its slot."""
    assignment = _assignment_for(
        annotator=annotator, assignment_id=assignment_id, campaign=campaign
    )
    campaign = assignment.campaign
    _require_active(campaign)
    with transaction.atomic():
        # The membership lock first (the lock order in locks.py), as a lease request takes
        # it: reviving an expired lease must not race a second tab leasing another pair.
        membership_lock(campaign_id=campaign.pk, user_id=annotator.pk, slug=campaign.slug)
        # Under the pair's lock like every slot-taking operation: at the edge of expiry, the
        # slot may be being handed to someone else.
        pair_lock(pair_id=assignment.pair_id)
        state = _slot_state(
            pair_id=assignment.pair_id, annotator_id=annotator.pk, lease_id=assignment.pk
        )
        if state.lease_status != Assignment.Status.OPEN:
            raise ServiceError(
                f"This lease is {state.lease_status}; nothing to renew.", field="assignment"
            )
        if not state.lease_live:
            if not state.has_free_slot(campaign.judgments_per_pair):
                raise LeaseLost(
                    "Your lease expired and the pair has been handed to others.",
                    field="assignment",
                )
            if (
                Assignment.objects.filter(
                    annotator_id=annotator.pk,
                    campaign_id=campaign.pk,
                    status=Assignment.Status.OPEN,
                    expires_at__gt=Now(),
                )
                .exclude(pk=assignment.pk)
                .exists()
            ):
                # One annotator, one live lease: they have moved on to another pair.
                raise LeaseLost(
                    "Your lease expired and you hold a lease on another pair now.",
                    field="assignment",
                )
        assert state.lease_leased_at is not None
        life = max(campaign.lease_max_seconds, campaign.lease_seconds)
        cap = state.lease_leased_at + timedelta(seconds=life)
        if cap <= state.now:
            raise LeaseLost(
                f"This lease reached its maximum life of {life // 60} minutes and is no longer "
                "renewed; you can still submit while the pair has a free slot.",
                field="assignment",
            )
        expires_at = min(state.now + timedelta(seconds=campaign.lease_seconds), cap)
        Assignment.objects.filter(pk=assignment.pk).update(expires_at=expires_at)
    assignment.expires_at = expires_at
    assignment.status = Assignment.Status.OPEN
    return assignment


def assignments_release(*, annotator_id: Any, campaign_id: int | None = None) -> int:
    """Release the annotator's open leases (in one campaign, or everywhere) at once: they
    were removed from the campaign or deactivated. Freeing a slot never needs the pair's
    lock — only taking one does. Returns how many leases were released."""
    leases = Assignment.objects.filter(annotator_id=annotator_id, status=Assignment.Status.OPEN)
    if campaign_id is not None:
        leases = leases.filter(campaign_id=campaign_id)
    return leases.update(status=Assignment.Status.RELEASED)

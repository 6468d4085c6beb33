"""Every write of the annotation app: leases, judgments, skips, campaigns and bulk imports.

Slot invariant: for every pair, active judgments + live leases held by annotators who have
not judged it <= campaign.judgments_per_pair (k). Every operation that takes a slot (a lease,
a renewal of an expired lease, a submit on an expired lease) holds the pair's row lock while
it recounts, so two of them can never both see the last free slot.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import timedelta
from functools import partial
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Subquery
from django.utils import timezone

from labeling.services import aggregation_request

from ..errors import (
    AlreadyJudged,
    CampaignNotActive,
    Forbidden,
    LeaseLost,
    NotFound,
    ServiceError,
)
from ..models import Assignment, Campaign, Choice, Judgment, Membership, Pair, Skip

SIDE_CHOICES = ("left", "right")
VALID_CHOICES = (*SIDE_CHOICES, *Choice.values)
# How many locked candidates a lease request may find full before it gives up on this round;
# only a race with a just-committed lease makes a candidate full, so a few tries suffice.
LEASE_CANDIDATE_TRIES = 5
MAX_DURATION_MS = 2**31 - 1  # the column is a 32-bit integer


def _require_active(campaign: Campaign) -> None:
    if not campaign.is_open:
        raise CampaignNotActive(
            f"Campaign '{campaign.slug}' is {campaign.status}; it takes no judgments now."
        )


def _require_member_of_active(*, user: AbstractBaseUser, campaign: Campaign) -> None:
    """Call inside a transaction. Locks the membership row, which serialises one
    annotator's lease requests in a campaign (a double click, two tabs) without touching
    anyone else's: the second sees the lease the first took instead of taking another."""
    if (
        not Membership.objects.select_for_update()
        .filter(campaign=campaign, user_id=user.pk)
        .exists()
    ):
        raise Forbidden(f"You are not a member of campaign '{campaign.slug}'.")
    _require_active(campaign)


def _live_leases(*, pair_id: Any, now: Any, exclude_annotator_id: Any = None) -> int:
    qs = Assignment.objects.filter(
        pair_id=pair_id, status=Assignment.Status.OPEN, expires_at__gt=now
    )
    if exclude_annotator_id is not None:
        qs = qs.exclude(annotator_id=exclude_annotator_id)
    return qs.count()


def _has_free_slot(*, pair: Pair, k: int, now: Any, annotator_id: Any) -> bool:
    """Call while holding the pair's row lock, with `pair` read under that lock."""
    others = _live_leases(pair_id=pair.pk, now=now, exclude_annotator_id=annotator_id)
    return pair.judgment_count + others < k


def assignment_lease_next(*, annotator: AbstractBaseUser, campaign: Campaign) -> Assignment | None:
    """Lease the next pair for `annotator`, or return the live lease they already hold.

    Returns None when nothing is left for them: every pair is full, judged or skipped by them.
    """
    now = timezone.now()
    k = campaign.judgments_per_pair
    with transaction.atomic():
        _require_member_of_active(user=annotator, campaign=campaign)
        held = (
            Assignment.objects.filter(
                annotator_id=annotator.pk,
                campaign=campaign,
                status=Assignment.Status.OPEN,
                expires_at__gt=now,
            )
            .order_by("-id")
            .first()
        )
        if held is not None:
            return held

        tried: list[int] = []
        candidate = partial(
            _lock_candidate_pair, campaign_id=campaign.pk, annotator_id=annotator.pk, k=k, now=now
        )
        for _ in range(LEASE_CANDIDATE_TRIES):
            found = candidate(exclude=tried, wait=False)
            if found is None:
                if tried or not connection.features.has_select_for_update_skip_locked:
                    return None
                # Every free pair may be locked for an instant by other annotators' leases:
                # that is not "nothing left". Wait for one of them, once, while holding no
                # pair lock of our own.
                found = candidate(exclude=tried, wait=True)
                if found is None or found is _RETRY:
                    return None
            pair, mine = found
            # The candidate query's snapshot may predate a lease committed just before we got
            # the lock; recount in a fresh statement now that the lock is ours.
            if not _has_free_slot(pair=pair, k=k, now=now, annotator_id=annotator.pk):
                tried.append(pair.pk)
                continue
            expires_at = now + timedelta(seconds=campaign.lease_seconds)
            if mine is not None:
                # Revive the annotator's own expired lease of this pair rather than open a
                # second one: one open lease per (pair, annotator).
                Assignment.objects.filter(pk=mine).update(leased_at=now, expires_at=expires_at)
                return Assignment.objects.get(pk=mine)
            return Assignment.objects.create(
                pair_id=pair.pk,
                annotator_id=annotator.pk,
                campaign=campaign,
                a_on_left=random.random() < 0.5,
                expires_at=expires_at,
            )
    return None


_CANDIDATE_SQL = """
SELECT p.id, p.judgment_count,
  (SELECT a.id FROM {assignment} a
   WHERE a.pair_id = p.id AND a.annotator_id = %s AND a.status = 'open'
   ORDER BY a.id DESC LIMIT 1) AS mine
FROM {pair} p
WHERE p.campaign_id = %s AND p.judgment_count < %s
  AND NOT EXISTS (SELECT 1 FROM {judgment} j WHERE j.pair_id = p.id AND j.annotator_id = %s)
  AND NOT EXISTS (SELECT 1 FROM {skip} s WHERE s.pair_id = p.id AND s.annotator_id = %s)
  AND p.judgment_count + (
        SELECT COUNT(*) FROM {assignment} a
        WHERE a.pair_id = p.id AND a.status = 'open' AND a.expires_at > %s
      ) < %s
  {exclude}
ORDER BY p.judgment_count DESC, p.id
LIMIT 1
{lock}
"""


def _candidate_row(
    *,
    campaign_id: int,
    annotator_id: Any,
    k: int,
    now: Any,
    exclude: list[int],
    lock: str,
    only: int | None = None,
) -> tuple[Any, ...] | None:
    ids = [*exclude] + ([] if only is None else [only])
    where = f"AND p.id NOT IN ({', '.join(['%s'] * len(exclude))})" if exclude else ""
    if only is not None:
        where += " AND p.id = %s"
    sql = _CANDIDATE_SQL.format(
        pair=Pair._meta.db_table,
        judgment=Judgment._meta.db_table,
        skip=Skip._meta.db_table,
        assignment=Assignment._meta.db_table,
        exclude=where,
        lock=lock,
    )
    params = [annotator_id, campaign_id, k, annotator_id, annotator_id, now, k, *ids]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


_RETRY = object()  # the pair waited for was taken meanwhile


def _lock_candidate_pair(
    *, campaign_id: int, annotator_id: Any, k: int, now: Any, exclude: list[int], wait: bool
) -> Any:
    """Lock and return (pair, id of the annotator's own open lease of it or None) for the
    first pair that looks free for the annotator: the most-judged first, so pairs complete,
    then the oldest. None when there is none. Call inside a transaction.

    Without `wait`, SKIP LOCKED: concurrent annotators each lock a different pair instead of
    queueing. With `wait`, the candidate is chosen without locks, then that one row is
    locked (waiting for its holder) and checked again; a locking scan that waits could keep
    locks on rows it passed over and deadlock with another. Returns _RETRY when the pair
    was taken while we waited. SQLite has no row locks and serialises writers instead (see
    feedback_app/embedded.py).

    Written as SQL: this runs on every lease and the ORM spent longer building the statement
    than PostgreSQL spends running it (the pair_lease_order index serves the ORDER BY).
    """
    args = {
        "campaign_id": campaign_id,
        "annotator_id": annotator_id,
        "k": k,
        "now": now,
        "exclude": exclude,
    }
    if not connection.features.has_select_for_update_skip_locked:
        row = _candidate_row(**args, lock="")
    elif not wait:
        row = _candidate_row(**args, lock="FOR UPDATE OF p SKIP LOCKED")
    else:
        row = _candidate_row(**args, lock="")
        if row is None:
            return None
        Pair.objects.select_for_update().filter(pk=row[0]).exists()
        # A fresh statement, now that the lock is ours, sees what its holder committed.
        row = _candidate_row(**args, lock="", only=row[0])
        if row is None:
            return _RETRY
    if row is None:
        return None
    return Pair(id=row[0], judgment_count=row[1], campaign_id=campaign_id), row[2]


def _assignment_for(*, annotator: AbstractBaseUser, assignment_id: Any) -> Assignment:
    """The annotator's own lease, with its campaign; refused once they are no longer a
    member of the campaign (checked in the same query)."""
    member = Membership.objects.filter(
        campaign_id=OuterRef("campaign_id"), user_id=OuterRef("annotator_id")
    )
    try:
        assignment = (
            Assignment.objects.select_related("campaign")
            .annotate(is_member=Exists(member))
            .get(pk=assignment_id)
        )
    except (Assignment.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"No lease with id {assignment_id!r}.", field="assignment") from None
    if assignment.annotator_id != annotator.pk:
        raise Forbidden("This lease belongs to another annotator.", field="assignment")
    if not assignment.is_member:
        raise Forbidden(
            f"You are no longer a member of campaign '{assignment.campaign.slug}'.",
            field="assignment",
        )
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
    unknown = sorted(set(raw) - set(criteria))
    if unknown:
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
                f"'{value}' is not a valid choice for '{slug}'; use one of: "
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
) -> Judgment:
    """Record the annotator's judgment of the pair leased by `assignment_id`.

    A submit after the lease expired is accepted while the pair still has a free slot, since
    the work was done; otherwise it raises LeaseLost. A second submit raises AlreadyJudged
    with the first judgment's id. Nothing is written when any check fails.
    """
    assignment = _assignment_for(annotator=annotator, assignment_id=assignment_id)
    campaign = assignment.campaign
    _require_active(campaign)
    criteria = list(campaign.criteria.values_list("slug", flat=True))
    canonical = choices_canonical(criteria=criteria, raw=choices, a_on_left=assignment.a_on_left)
    if duration_ms is not None and (
        not isinstance(duration_ms, int) or not 0 <= duration_ms <= MAX_DURATION_MS
    ):
        raise ServiceError(
            f"duration_ms must be an integer from 0 to {MAX_DURATION_MS}.", field="duration_ms"
        )

    try:
        with transaction.atomic():
            judgment = _judgment_write(
                annotator=annotator,
                assignment=assignment,
                campaign=campaign,
                canonical=canonical,
                duration_ms=duration_ms,
            )
    except IntegrityError:
        # The unique (pair, annotator) constraint is the backstop for a judgment made
        # through a second lease of the same pair.
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


def _late_submit_check(*, pair: Pair, assignment: Assignment, campaign: Campaign, now: Any) -> None:
    """A submit through a lease that is no longer live: refuse a duplicate or a skipped
    pair, and accept only while the pair has a free slot. Call holding the pair's row lock."""
    existing = (
        Judgment.objects.filter(pair_id=pair.pk, annotator_id=assignment.annotator_id)
        .values_list("id", flat=True)
        .first()
    )
    if existing is not None:
        raise AlreadyJudged(
            "You have already judged this pair.", field="assignment", judgment_id=existing
        )
    if assignment.status == Assignment.Status.SKIPPED:
        raise ServiceError("You skipped this pair; it cannot be judged now.", field="assignment")
    if not _has_free_slot(
        pair=pair, k=campaign.judgments_per_pair, now=now, annotator_id=assignment.annotator_id
    ):
        raise LeaseLost(
            "Your lease on this pair expired and the pair has since received all the "
            "judgments it needs; your answer was not recorded.",
            field="assignment",
        )


def _judgment_write(
    *,
    annotator: AbstractBaseUser,
    assignment: Assignment,
    campaign: Campaign,
    canonical: dict[str, str],
    duration_ms: int | None,
) -> Judgment:
    """Call inside a transaction. Takes the pair's row lock, which serialises every
    slot-taking operation on the pair (see the module docstring). May raise IntegrityError
    for a duplicate, which judgment_submit turns into AlreadyJudged."""
    lease = Assignment.objects.filter(pk=assignment.pk)
    pair = (
        Pair.objects.select_for_update()
        .only("id", "item_a_id", "item_b_id", "judgment_count")
        .annotate(
            lease_status=Subquery(lease.values("status")),
            lease_expires_at=Subquery(lease.values("expires_at")),
        )
        .get(pk=assignment.pair_id)
    )
    # Decided under the lock, with the lease as it is now and the clock read now: a lease
    # that expired while this request waited for the lock may have lost its slot already.
    assignment.status, assignment.expires_at = pair.lease_status, pair.lease_expires_at
    now = timezone.now()
    # A live lease holds its slot, and a second submit through it (a double click) trips the
    # unique (pair, annotator) constraint, so the common case needs no further read.
    if not (assignment.status == Assignment.Status.OPEN and assignment.expires_at > now):
        _late_submit_check(pair=pair, assignment=assignment, campaign=campaign, now=now)
    if duration_ms is None:
        duration_ms = max(0, int((now - assignment.leased_at).total_seconds() * 1000))
    judgment = Judgment.objects.create(
        pair_id=pair.pk,
        annotator_id=annotator.pk,
        campaign_id=campaign.pk,
        assignment=assignment,
        choices=canonical,
        shown_left_id=pair.item_a_id if assignment.a_on_left else pair.item_b_id,
        duration_ms=duration_ms,
    )
    Pair.objects.filter(pk=pair.pk).update(judgment_count=F("judgment_count") + 1)
    # Every open lease of this annotator on the pair is finished, not only the one used.
    Assignment.objects.filter(
        pair_id=pair.pk, annotator_id=annotator.pk, status=Assignment.Status.OPEN
    ).update(status=Assignment.Status.DONE)
    transaction.on_commit(partial(aggregation_request, campaign_id=campaign.pk))
    return judgment


def skip_create(*, annotator: AbstractBaseUser, assignment_id: Any, reason: str = "") -> Skip:
    """Skip the leased pair: it frees the slot and is never offered to this annotator again."""
    assignment = _assignment_for(annotator=annotator, assignment_id=assignment_id)
    _require_active(assignment.campaign)
    if len(reason) > 500:
        raise ServiceError("reason is longer than 500 characters.", field="reason")
    with transaction.atomic():
        # The pair's lock orders a skip against a submit of the same pair (two tabs).
        Pair.objects.select_for_update().only("id").get(pk=assignment.pair_id)
        if Judgment.objects.filter(pair_id=assignment.pair_id, annotator_id=annotator.pk).exists():
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


def assignment_renew(*, annotator: AbstractBaseUser, assignment_id: Any) -> Assignment:
    """Extend a lease while its page is open. An expired lease is revived only while the
    pair still has a free slot."""
    assignment = _assignment_for(annotator=annotator, assignment_id=assignment_id)
    campaign = assignment.campaign
    _require_active(campaign)
    with transaction.atomic():
        # Under the pair's lock like every slot-taking operation: at the edge of expiry, the
        # slot may be being handed to someone else.
        pair = (
            Pair.objects.select_for_update().only("id", "judgment_count").get(pk=assignment.pair_id)
        )
        assignment.refresh_from_db(fields=["status", "expires_at"])
        if assignment.status != Assignment.Status.OPEN:
            raise ServiceError(
                f"This lease is {assignment.status}; nothing to renew.", field="assignment"
            )
        now = timezone.now()
        if assignment.expires_at <= now and not _has_free_slot(
            pair=pair, k=campaign.judgments_per_pair, now=now, annotator_id=annotator.pk
        ):
            raise LeaseLost(
                "Your lease expired and the pair has been handed to others.", field="assignment"
            )
        assignment.expires_at = now + timedelta(seconds=campaign.lease_seconds)
        Assignment.objects.filter(pk=assignment.pk).update(expires_at=assignment.expires_at)
    return assignment

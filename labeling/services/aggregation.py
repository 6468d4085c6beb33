"""Aggregation: scheduling runs after judgments commit, running them one at a time per
campaign, and applying their results.

The database row (`AggregationState`) is the only record of what is owed; a Celery message is
a hint to act on it soon, which a killed worker or an empty restarted broker may lose. The
beat sweep (`aggregation_requeue_stale`) turns what is owed back into a message. Every time
that decides staleness is the database's (`Now()` in the statement). docs/design.md,
"Aggregation", walks through each fault and what recovers it.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.db.models import BooleanField, Exists, ExpressionWrapper, F, Max, OuterRef, Q
from django.db.models.functions import Now

from annotation.models import Campaign, Judgment
from feedback_app.celery import app as celery_app

from .. import bradley_terry, task_names
from ..models import AggregationState
from . import aggregation_io
from .aggregation_io import Judgments, Results

log = logging.getLogger(__name__)

# How long past its debounce (AGGREGATION_DELAY_SECONDS) a pending flag may stay set before its
# task counts as lost: a worker killed while holding the countdown message (Redis hands it to
# another only after the visibility timeout), a broker restarted empty, a failed publish. The
# sweep runs every 5 s (CELERY_BEAT_SCHEDULE), so scores catch up within about
# delay + grace + 5 s + one run of the last judgment, whatever single part failed.
PENDING_GRACE = timedelta(seconds=5)


def _stale_before() -> Any:
    """A pending flag set before this (database time) has outlived its task."""
    return Now() - (timedelta(seconds=settings.AGGREGATION_DELAY_SECONDS) + PENDING_GRACE)


def _enqueue(campaign_id: int, countdown: float = 0.0) -> None:
    celery_app.send_task(
        task_names.AGGREGATE_CAMPAIGN, args=(campaign_id,), countdown=countdown or None
    )


# --- the run lock ------------------------------------------------------------------------------
#
# One run per campaign at a time. Lock order: the run lock first, for the whole run; the
# AggregationState row lock (select_for_update) only briefly inside it, at the start and at
# the apply. Requests and the sweep never take the run lock, so a submit never waits on a run.
#
# PostgreSQL: a session-level advisory lock, keyed (_LOCK_CLASS, campaign id). Session-level,
# so it spans the run's own transactions, and dies with the database session of a worker
# that is killed midway -- nothing to expire or clean up. It needs the run's statements on one
# server session: behind PgBouncer, point the workers at PostgreSQL directly or use session
# pooling. Campaign ids are taken modulo 2**31 (the key is an int4); two campaigns sharing a
# key would only take turns.
#
# SQLite (embedded mode) has no advisory locks. There, an flock on a file beside the database
# file does the same job: embedded mode is one machine by construction, the kernel drops the
# lock when the holding process dies, and every process that opens the database agrees on the
# path. An in-memory database is one process, so a lock of this process is enough.
_LOCK_CLASS = 0x61677267  # "agrg"
_memory_locks: dict[int, threading.Lock] = {}
_memory_locks_guard = threading.Lock()


def _lock_key(campaign_id: int) -> int:
    return campaign_id % 2**31


def _lock_file(campaign_id: int) -> Path | None:
    name = str(connection.settings_dict["NAME"])
    if name in ("", ":memory:") or "mode=memory" in name:
        return None
    folder = Path(name).with_name(Path(name).name + ".locks")
    folder.mkdir(exist_ok=True)
    return folder / f"aggregation-{campaign_id}"


@contextlib.contextmanager
def aggregation_run_lock(*, campaign_id: int) -> Iterator[bool]:
    """Hold the campaign's run lock for the block. Yields False, at once and holding nothing,
    when another run holds it. The lock belongs to the database session (PostgreSQL) or the
    process (SQLite), not to a transaction: it spans the run's own transactions."""
    if connection.vendor == "postgresql":
        key = _lock_key(campaign_id)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_LOCK_CLASS, key])
            held = cursor.fetchone()[0]
        if not held:
            yield False
            return
        try:
            yield True
        finally:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_LOCK_CLASS, key])
            except DatabaseError:
                # The session is broken; ending it is what lets go of the lock now.
                connection.close()
        return
    path = _lock_file(campaign_id)
    if path is None:
        with _memory_locks_guard:
            lock = _memory_locks.setdefault(campaign_id, threading.Lock())
        if not lock.acquire(blocking=False):
            yield False
            return
        try:
            yield True
        finally:
            lock.release()
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)  # closing the file lets go of the lock


def _held_run_locks(campaign_ids: Iterable[int]) -> set[int]:
    """Those of the campaigns whose run lock some run holds now (a snapshot: a run may start
    or end right after; the callers only use it to avoid pointless messages)."""
    campaign_ids = list(campaign_ids)
    if not campaign_ids:
        return set()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND classid = %s AND objsubid = 2",
                [_LOCK_CLASS],
            )
            keys = {row[0] for row in cursor.fetchall()}
        return {c for c in campaign_ids if _lock_key(c) in keys}
    # SQLite: the only way to look at a file lock is to take it, and a run arriving in that
    # instant would find it taken (and send itself again later, a needless delay). Report
    # none held: a message sent for a campaign whose run is going finds the lock taken and
    # is sent again after the debounce.
    return set()


# --- requests ----------------------------------------------------------------------------------


_STATE_SQL = f"""
SELECT pending, requested_at >= STATEMENT_TIMESTAMP() - %(stale)s
FROM {AggregationState._meta.db_table} WHERE campaign_id = %(campaign)s
"""


def _state_read(campaign_id: int, stale_before: Any) -> tuple[bool, bool] | None:
    """(pending, fresh) of the campaign's row, or None. On PostgreSQL written as SQL: it is
    the one read every judgment pays after its commit."""
    if connection.vendor == "postgresql":
        stale = timedelta(seconds=settings.AGGREGATION_DELAY_SECONDS) + PENDING_GRACE
        with connection.cursor() as cursor:
            # psycopg sends a timedelta as an interval; the stubs' parameter types omit it.
            cursor.execute(_STATE_SQL, {"stale": stale, "campaign": campaign_id})  # type: ignore[dict-item]
            row = cursor.fetchone()
        return None if row is None else (bool(row[0]), bool(row[1]))
    return (
        AggregationState.objects.filter(campaign_id=campaign_id)
        .annotate(
            fresh=ExpressionWrapper(Q(requested_at__gte=stale_before), output_field=BooleanField())
        )
        .values_list("pending", "fresh")
        .first()
    )


def _request(campaign_id: int) -> bool:
    stale_before = _stale_before()
    row = _state_read(campaign_id, stale_before)
    if row is None:
        try:
            with transaction.atomic():
                AggregationState.objects.create(
                    campaign_id=campaign_id, pending=True, requested_at=Now()
                )
        except IntegrityError:
            return False  # a concurrent request created it and enqueues
    else:
        pending, fresh = row
        if pending and fresh:
            return False
        # Conditional update: of the requests racing here, exactly one flips the flag (or,
        # for a flag whose task was lost, renews it) and enqueues.
        flipped = (
            AggregationState.objects.filter(campaign_id=campaign_id)
            .filter(
                Q(pending=False) | Q(requested_at__lt=stale_before) | Q(requested_at__isnull=True)
            )
            .update(pending=True, requested_at=Now())
        )
        if not flipped:
            return False
    try:
        # The countdown batches a burst of judgments into one run (a run reads every judgment
        # of the campaign). The worker holds the message unacknowledged meanwhile; if it dies
        # or the broker forgets the message, the flag outlives its task and the sweep acts.
        _enqueue(campaign_id, settings.AGGREGATION_DELAY_SECONDS)
    except Exception:
        # The flag stays set: with it, the sweep enqueues once the flag is stale. Clearing
        # it would leave the last judgments unaggregated until someone judges again.
        log.exception("could not enqueue aggregation of campaign %s; the sweep will", campaign_id)
        return False
    return True


def aggregation_request(*, campaign_id: int) -> bool:
    """Schedule an aggregation of the campaign unless one is already pending. Returns True if
    this call enqueued the task.

    Called after a judgment commits (transaction.on_commit). Costs one read in the common case
    (a run is pending and was requested within the debounce plus PENDING_GRACE), so submits
    never queue up behind a shared row.

    Never raises: the judgment is stored, and an error here must not turn the submit into a
    failure. A connection the database or a proxy dropped is retried once on a new one; what
    still fails is logged, and leaves state the sweep acts on -- a set flag whose publish
    failed, or a judgment newer than the last run with no flag at all.
    """
    try:
        return _request(campaign_id)
    except (OperationalError, InterfaceError) as exc:
        dropped = exc
    except Exception:
        log.exception("aggregation request for campaign %s failed; the sweep will", campaign_id)
        return False
    if connection.in_atomic_block:  # not after a commit: the caller's transaction is broken
        log.error("aggregation request for campaign %s failed: %s", campaign_id, dropped)
        return False
    log.warning(
        "aggregation request for campaign %s: %s; once more on a new connection",
        campaign_id,
        dropped,
    )
    try:
        connection.close()
        return _request(campaign_id)
    except Exception:
        log.exception("aggregation request for campaign %s failed; the sweep will", campaign_id)
        return False


def aggregation_requeue_stale() -> list[int]:
    """Enqueue a run of every campaign that is owed one but has no live task; run by beat
    every few seconds. Returns the campaigns enqueued.

    Owed: a flag set longer than the debounce plus PENDING_GRACE ago (its message was lost);
    a run that started and never finished (its worker was killed; the run had cleared the
    flag); judgments newer than the last run with no flag set (their after-commit request
    never reached the database). Campaigns whose run lock is held are left alone: what they
    owe is still owed when the run ends, and a later sweep sends it. The sweep enqueues
    without a countdown -- the
    debounce is long over -- and renews the flag, so it enqueues a campaign once per
    staleness period, not every sweep.
    """
    stale_before = _stale_before()
    newer_judgments = Exists(
        Judgment.objects.filter(
            campaign_id=OuterRef("campaign_id"), pk__gt=OuterRef("judgment_high_water")
        )
    )
    owed = set(
        AggregationState.objects.filter(
            Q(pending=True, requested_at__lt=stale_before)
            | Q(pending=True, requested_at__isnull=True)
            | Q(
                Q(started_seq__gt=F("finished_seq"), last_started_at__lt=Now() - PENDING_GRACE)
                | Q(newer_judgments),
                pending=False,
            )
        ).values_list("campaign_id", flat=True)
    )
    no_row = set(
        Campaign.objects.filter(aggregation__isnull=True)
        .filter(Exists(Judgment.objects.filter(campaign_id=OuterRef("pk"))))
        .values_list("pk", flat=True)
    )
    owed |= no_row
    requeued = []
    for campaign_id in sorted(owed - _held_run_locks(owed)):
        if campaign_id in no_row:
            with contextlib.suppress(IntegrityError), transaction.atomic():
                AggregationState.objects.create(campaign_id=campaign_id)
        # Conditional, like a request's: of two sweeps, or a sweep and a request, one enqueues.
        flipped = (
            AggregationState.objects.filter(campaign_id=campaign_id)
            .filter(
                Q(pending=False) | Q(requested_at__lt=stale_before) | Q(requested_at__isnull=True)
            )
            .update(pending=True, requested_at=Now())
        )
        if not flipped:
            continue
        try:
            _enqueue(campaign_id)
        except Exception:
            log.exception("could not enqueue aggregation of campaign %s", campaign_id)
            continue
        log.info("aggregation of campaign %s was owed and had no task; enqueued", campaign_id)
        requeued.append(campaign_id)
    return requeued


# --- runs --------------------------------------------------------------------------------------


class RunOutcome(enum.StrEnum):
    APPLIED = "applied"
    SUPERSEDED = "superseded"  # a later run had already applied newer results
    BUSY = "busy"  # another run holds the campaign; this one is sent again after the debounce
    NOT_OWED = "not owed"  # nothing pending, nothing unfinished: a duplicate or late message
    GAVE_UP = "gave up"  # MAX_UNFINISHED_RUNS runs in a row never finished; error recorded


# Runs in a row that may start and never finish before the campaign's aggregation is recorded
# as failed (and left until the next judgment) instead of being redone by the sweep.
MAX_UNFINISHED_RUNS = 3


def aggregation_run(*, campaign_id: int, only_if_owed: bool = False) -> RunOutcome:
    """Fit Bradley-Terry scores and pair soft labels from the campaign's active judgments,
    holding the campaign's run lock, and apply them.

    Returns BUSY at once when another run holds the lock. With `only_if_owed` (the task's
    way), returns NOT_OWED when no flag is set and no run was left unfinished, so a message
    delivered twice, or an hour late, costs one read. Idempotent: a rerun recomputes the same
    results from the same judgments. An unconverged fit is applied and recorded as such
    (`fit_converged`); an error other than a database one is recorded in `last_error`.
    """
    with aggregation_run_lock(campaign_id=campaign_id) as held:
        if held:
            return _run_holding_lock(campaign_id=campaign_id, only_if_owed=only_if_owed)
    # Another run holds the campaign. It may have read the judgments before the one that sent
    # this message committed, so try again after the debounce rather than drop the work;
    # if that publish fails, the flag is still set and the sweep sends it. (Letting the
    # holder look at the flag when it is done would do the same, but then every cycle sends
    # two messages and runs follow each other without a pause.)
    try:
        _enqueue(campaign_id, settings.AGGREGATION_DELAY_SECONDS)
    except Exception:
        log.exception(
            "could not reschedule the aggregation of campaign %s; the sweep will", campaign_id
        )
    return RunOutcome.BUSY


def _run_holding_lock(*, campaign_id: int, only_if_owed: bool) -> RunOutcome:
    with transaction.atomic():
        state, _ = AggregationState.objects.select_for_update().get_or_create(
            campaign_id=campaign_id
        )
        unfinished = state.started_seq > state.finished_seq
        if only_if_owed and not state.pending and not unfinished:
            return RunOutcome.NOT_OWED
        seq = state.started_seq + 1
        # The run before this one started and never finished: its worker was killed (out of
        # memory, the hard time limit) or it died applying. A run that can never finish
        # would otherwise be redone by the sweep forever, on the worker the other campaigns
        # share; after a few, it is recorded as failed and waits for the next judgment.
        unfinished_runs = state.unfinished_runs + 1 if unfinished else 0
        if unfinished_runs >= MAX_UNFINISHED_RUNS:
            AggregationState.objects.filter(campaign_id=campaign_id).update(
                pending=False,
                finished_seq=state.started_seq,
                unfinished_runs=0,
                last_error=f"{unfinished_runs} runs in a row started and never finished (a "
                "worker killed, or past the time limit); not retried until the next judgment.",
            )
            log.error(
                "aggregation of campaign %s: %s runs in a row never finished; giving up until "
                "the next judgment",
                campaign_id,
                unfinished_runs,
            )
            return RunOutcome.GAVE_UP
        high_water = Judgment.objects.filter(campaign_id=campaign_id).aggregate(m=Max("id"))["m"]
        # Cleared and committed before reading judgments: anything committed after this
        # point sets the flag again and schedules the next run.
        AggregationState.objects.filter(campaign_id=campaign_id).update(
            pending=False,
            started_seq=seq,
            last_started_at=Now(),
            judgment_high_water=high_water or 0,
            unfinished_runs=unfinished_runs,
        )

    try:
        started = time.perf_counter()
        campaign = Campaign.objects.get(pk=campaign_id)
        criteria = list(campaign.criteria.values_list("id", "slug"))  # frozen once judged
        judgments = aggregation_io.judgments_read(campaign_id=campaign_id, criteria=criteria)
        read = time.perf_counter()
        scores, labels, fits = _compute(campaign=campaign, criteria=criteria, judgments=judgments)
        fitted = time.perf_counter()
    except (OperationalError, InterfaceError):
        raise  # transient: the task retries, and the run stays unfinished for the sweep
    except Exception as exc:
        aggregation_failed(campaign_id=campaign_id, error=exc, seq=seq)
        raise

    converged = all(fit.converged for _, fit in fits) if fits else None
    iterations = max((fit.iterations for _, fit in fits), default=0)
    for slug, fit in fits:
        if not fit.converged:
            log.warning(
                "aggregation of campaign %s, run %s: the Bradley-Terry fit of %r did not "
                "converge in %s iterations; its scores are applied and marked unconverged",
                campaign_id,
                seq,
                slug,
                fit.iterations,
            )

    with transaction.atomic():
        state = AggregationState.objects.select_for_update().get(campaign_id=campaign_id)
        # With the run lock no two runs overlap; this guards the results of a run against a
        # later one all the same (a lock lost with a dropped session mid-run).
        if state.applied_seq > seq:
            AggregationState.objects.filter(campaign_id=campaign_id).update(finished_seq=seq)
            return RunOutcome.SUPERSEDED
        written = {
            "scores": aggregation_io.results_apply(
                table=aggregation_io.SCORES, campaign_id=campaign_id, new=scores
            ),
            "labels": aggregation_io.results_apply(
                table=aggregation_io.LABELS, campaign_id=campaign_id, new=labels
            ),
        }
        AggregationState.objects.filter(campaign_id=campaign_id).update(
            applied_seq=seq,
            finished_seq=seq,
            runs_completed=F("runs_completed") + 1,
            last_finished_at=Now(),
            judgments_used=len(judgments),
            last_error="",
            fit_converged=converged,
            fit_iterations=iterations,
            fit_l2={slug: fit.l2 for slug, fit in fits},
        )
    timing = {
        "judgments": len(judgments),
        "read_s": read - started,
        "fit_s": fitted - read,
        "write_s": time.perf_counter() - fitted,
        "written": written,
    }
    log.info(
        "aggregation of campaign %s, run %s: %s judgments, read %.2f s, fit %.2f s, write "
        "%.2f s; rows written %s",
        campaign_id,
        seq,
        timing["judgments"],
        timing["read_s"],
        timing["fit_s"],
        timing["write_s"],
        written,
        extra={"aggregation": timing},
    )
    if campaign.kind == Campaign.Kind.TRAJECTORY and campaign.source:
        # Reward labels follow the scores (labeling/services/reward_labels.py); a lost
        # message is found by its sweep.
        try:
            celery_app.send_task(task_names.REWARD_LABELS, args=(campaign_id,))
        except Exception:
            log.exception("could not ask for the reward labels of campaign %s", campaign_id)
    return RunOutcome.APPLIED


# Share of item_a in a judgment, by choice code (aggregation_io.CHOICE_CODES); NaN: not
# counted. "both_bad" follows the campaign's policy.
_OUTCOME_OF_CODE = np.array([1.0, 0.0, 0.5, np.nan, np.nan])
_BOTH_BAD = aggregation_io.CHOICE_CODES["both_bad"]


def _compute(
    *, campaign: Any, criteria: list[tuple[int, str]], judgments: Judgments
) -> tuple[Results, Results, list[tuple[str, bradley_terry.Fit]]]:
    """Scores (one row per compared item) and pair labels of every criterion, as arrays."""
    outcome_of = _OUTCOME_OF_CODE.copy()
    if campaign.both_bad_counts_as == Campaign.BothBad.TIE:
        outcome_of[_BOTH_BAD] = 0.5
    # Judgments summed per pair: a pair is one unordered pair of items (pair_unique_items)
    # stored with item_a < item_b, so item indices in id order give i < j.
    pairs, of_pair = np.unique(judgments.pair, return_inverse=True)
    item_a = np.zeros(pairs.size, dtype=np.int64)
    item_b = np.zeros(pairs.size, dtype=np.int64)
    item_a[of_pair] = judgments.item_a
    item_b[of_pair] = judgments.item_b
    items = np.unique(np.concatenate([item_a, item_b]))
    first, second = np.searchsorted(items, item_a), np.searchsorted(items, item_b)

    scores, labels, fits = [], [], []
    for criterion_id, slug in criteria:
        outcome = outcome_of[judgments.choices[criterion_id]]
        counted = ~np.isnan(outcome)
        total = np.bincount(of_pair[counted], minlength=pairs.size).astype(np.float64)
        wins = np.asarray(  # float64 already (weighted); numpy's stubs say intp
            np.bincount(of_pair[counted], weights=outcome[counted], minlength=pairs.size),
            dtype=np.float64,
        )
        judged = total > 0
        comparisons = bradley_terry.Comparisons(
            n_items=items.size,
            i=first[judged],
            j=second[judged],
            wins_i=wins[judged],
            total=total[judged],
        )
        # None: the prior's strength is chosen from the judgments (bradley_terry docstring).
        fit = bradley_terry.fit(comparisons=comparisons, l2=campaign.l2_prior)
        fits.append((slug, fit))
        per_item = np.bincount(comparisons.i, weights=comparisons.total, minlength=items.size)
        per_item += np.bincount(comparisons.j, weights=comparisons.total, minlength=items.size)
        # Items never compared sit at the prior's mean (0) and get no row: a campaign has
        # many more items than compared ones early on.
        compared = np.flatnonzero(per_item)
        scores.append(
            Results.of(
                key=items[compared],
                criterion=criterion_id,
                value=fit.scores[compared],
                count=per_item[compared],
            )
        )
        labels.append(
            Results.of(
                key=pairs[judged],
                criterion=criterion_id,
                value=wins[judged] / total[judged],
                count=total[judged],
            )
        )
    return Results.concatenate(scores), Results.concatenate(labels), fits


def aggregation_failed(*, campaign_id: int, error: Any, seq: int | None = None) -> None:
    """Record a run's error. With `seq`, the run also counts as finished, so the sweep does
    not rerun what would only fail again; the next judgment schedules the next try."""
    fields: dict[str, Any] = {"last_error": str(error)[:2000]}
    if seq is not None:
        fields["finished_seq"] = seq
    AggregationState.objects.filter(campaign_id=campaign_id).update(**fields)

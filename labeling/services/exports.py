"""Export snapshots: a campaign's judgments written to a file by a worker.

A snapshot row moves pending -> running -> done | failed. Its task can be lost: the send
fails (broker down), the broker loses the message, or the worker dies mid-build. Each case
leaves the row pending without a recent enqueued_at, or running without a recent
heartbeat_at, and export_snapshot_requeue_lost (beat, every minute) sends the task again.
Extra messages are harmless: a build first claims the row with a conditional UPDATE, and
while the build holding it is alive no other claim succeeds.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import uuid
from datetime import timedelta
from functools import partial
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.core.files import File
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Now

from annotation.selectors import judgment_export
from feedback_app.celery import app as celery_app

from .. import task_names
from ..models import ExportSnapshot

log = logging.getLogger(__name__)

Status = ExportSnapshot.Status

# The build task's limits. Redis hands an unacknowledged message to another worker once the
# broker's visibility timeout (3600 s) has passed, so a build still running then would run
# twice: both limits stay below it (tests/labeling/test_task_limits.py checks every task).
BUILD_SOFT_TIME_LIMIT = 3300
BUILD_TIME_LIMIT = 3400
# A running build refreshes heartbeat_at this often, from a thread of its own ...
HEARTBEAT_EVERY = timedelta(seconds=30)
# ... and one whose heartbeat is older than this is taken for dead: its worker died, or was
# killed at the hard time limit.
RUNNING_STALE_AFTER = timedelta(minutes=3)
# A pending snapshot whose task was sent longer ago than this is sent again. It may only be
# waiting behind other exports on the queue; the extra message then finds it claimed or done
# and does nothing.
PENDING_STALE_AFTER = timedelta(minutes=10)
# Builds started (claims) before a snapshot is given up: one that died this often would
# most likely die again.
MAX_ATTEMPTS = 3

GAVE_UP = (
    f"gave up after {MAX_ATTEMPTS} attempts: each build stopped without finishing (its "
    f"worker died, or was killed at the task's time limit of {BUILD_TIME_LIMIT} s). Use the "
    "streamed export, or raise the time limits together with the broker's visibility "
    "timeout (docs/deploy.md)."
)
OUT_OF_TIME = (
    f"stopped at the task's soft time limit ({BUILD_SOFT_TIME_LIMIT} s). Use the streamed "
    "export, or raise the time limits together with the broker's visibility timeout "
    "(docs/deploy.md)."
)


class _Lost(Exception):
    """The snapshot is no longer this build's: a sweep took the build for dead."""


def _stale_running() -> Q:
    return Q(status=Status.RUNNING) & (
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=Now() - RUNNING_STALE_AFTER)
    )


def _lost() -> Q:
    """Snapshots whose task is lost: pending and never sent (enqueued_at empty) or sent long
    ago, or running without a recent heartbeat. Compared with the database's clock."""
    unsent = Q(status=Status.PENDING) & (
        Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=Now() - PENDING_STALE_AFTER)
    )
    return unsent | _stale_running()


def _owned(snapshot_id: int, attempt: int) -> QuerySet[ExportSnapshot]:
    """The snapshot while build number `attempt` holds it. Every write of a build goes
    through this, so a build taken for dead that wakes up changes nothing."""
    return ExportSnapshot.objects.filter(pk=snapshot_id, status=Status.RUNNING, attempts=attempt)


def _enqueue(snapshot_id: int) -> None:
    """Send the build task. A failed send leaves enqueued_at empty, which the next sweep
    reads as "never sent"."""
    pending = ExportSnapshot.objects.filter(pk=snapshot_id, status=Status.PENDING)
    try:
        celery_app.send_task(task_names.BUILD_EXPORT_SNAPSHOT, args=(snapshot_id,))
    except Exception:
        log.exception("could not enqueue export snapshot %s; the sweep will", snapshot_id)
        pending.update(enqueued_at=None)
    else:
        pending.update(enqueued_at=Now())


def export_snapshot_request(*, campaign: Any, user: Any) -> ExportSnapshot:
    """Ask a worker (the exports queue) to write the campaign's judgments to a file. The
    task is sent once the row is committed; if that fails, the row stays pending and the
    next sweep sends it."""
    snapshot = ExportSnapshot.objects.create(
        campaign=campaign, token=uuid.uuid4().hex, requested_by_id=user.pk
    )
    # robust: the row is committed either way, and the sweep finds it.
    transaction.on_commit(partial(_enqueue, snapshot.pk), robust=True)
    return snapshot


def export_snapshot_requeue_lost() -> list[int]:
    """Send again the task of every snapshot whose task was lost, and fail those that
    already had MAX_ATTEMPTS builds. Run by beat every minute; returns the ids sent."""
    ExportSnapshot.objects.filter(_lost(), attempts__gte=MAX_ATTEMPTS).update(
        status=Status.FAILED, error=GAVE_UP, finished_at=Now()
    )
    requeued = []
    for snapshot_id in list(
        ExportSnapshot.objects.filter(_lost()).order_by("pk").values_list("pk", flat=True)
    ):
        # Conditional: a build that claimed it or beat meanwhile needs no help. A running
        # one goes back to pending, which also takes it from the build taken for dead.
        if ExportSnapshot.objects.filter(_lost(), pk=snapshot_id).update(
            status=Status.PENDING, enqueued_at=Now()
        ):
            _enqueue(snapshot_id)
            requeued.append(snapshot_id)
    return requeued


def _claim(snapshot_id: int) -> int | None:
    """Take the snapshot for one build and return the build's attempt number; None when it
    is done, failed, or held by a build that is alive. A conditional UPDATE: of two
    deliveries of the task, exactly one claims it."""
    claimable = ExportSnapshot.objects.filter(
        Q(status=Status.PENDING) | _stale_running(), pk=snapshot_id
    )
    claimable.filter(attempts__gte=MAX_ATTEMPTS).update(
        status=Status.FAILED, error=GAVE_UP, finished_at=Now()
    )
    claimed = claimable.filter(attempts__lt=MAX_ATTEMPTS).update(
        status=Status.RUNNING,
        attempts=F("attempts") + 1,
        started_at=Now(),
        heartbeat_at=Now(),
        error="",
    )
    if not claimed:
        return None
    # Nobody else can claim it before the heartbeat goes stale, so this reads our claim.
    return int(
        ExportSnapshot.objects.filter(pk=snapshot_id).values_list("attempts", flat=True).get()
    )


class _Heartbeat:
    """Refreshes heartbeat_at every HEARTBEAT_EVERY while a build runs. From a thread of its
    own, hence on a connection of its own: the build reads in one long read-only
    transaction, whose writes nobody would see before it ends. `lost` turns true when the
    snapshot is no longer this build's."""

    def __init__(self, *, snapshot_id: int, attempt: int) -> None:
        self.lost = False
        self._owned = _owned(snapshot_id, attempt)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"export-{snapshot_id}-heartbeat", daemon=True
        )

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while not self._stop.wait(HEARTBEAT_EVERY.total_seconds()):
                try:
                    if not self._owned.update(heartbeat_at=Now()):
                        self.lost = True
                        return
                except (OperationalError, InterfaceError):
                    # A database blip: the next beat tries again, and the build meets the
                    # same blip and is retried.
                    log.warning("export heartbeat failed", exc_info=True)
        finally:
            connection.close()  # this thread's connection


def _write(snapshot_id: int, attempt: int) -> None:
    """Build the file of a claimed snapshot and record it, if the snapshot is still ours."""
    snapshot = ExportSnapshot.objects.select_related("campaign").get(pk=snapshot_id)
    with (
        _Heartbeat(snapshot_id=snapshot_id, attempt=attempt) as heartbeat,
        tempfile.TemporaryFile() as tmp,
    ):
        export = judgment_export(campaign=snapshot.campaign)
        rows = 0
        try:
            for chunk in export.chunks:  # whole lines
                tmp.write(chunk)
                rows += chunk.count(b"\n")
                if heartbeat.lost:
                    raise _Lost
        finally:
            export.chunks.close()
        if rows != export.rows:  # the count and the rows come from one snapshot
            raise RuntimeError(f"wrote {rows} rows, expected {export.rows}")
        if heartbeat.lost:
            raise _Lost
        tmp.seek(0)
        # A build that died after saving left its file at this name: start from nothing.
        base = snapshot.file.field.generate_filename(snapshot, "export.jsonl")
        snapshot.file.storage.delete(base)
        snapshot.file.save("export.jsonl", File(tmp), save=False)
        recorded = _owned(snapshot_id, attempt).update(
            status=Status.DONE,
            file=snapshot.file.name,
            rows=rows,
            size=snapshot.file.size,
            error="",
            finished_at=Now(),
        )
    if not recorded:
        # Taken for dead meanwhile. The base name may be the new build's file by now, so
        # only a name of our own goes.
        if snapshot.file.name != base:
            snapshot.file.storage.delete(snapshot.file.name)
        raise _Lost


def export_snapshot_build(*, snapshot_id: int) -> ExportSnapshot:
    """Write the snapshot's file, unless it is done, failed, or another build holds it.

    Idempotent: a second delivery of the task does nothing, and a rerun after a crash writes
    the file again from nothing. A database blip (OperationalError, InterfaceError) hands
    the snapshot back as pending and is raised again, for the task to retry.
    """
    attempt = _claim(snapshot_id)
    if attempt is not None:
        try:
            _write(snapshot_id, attempt)
        except (OperationalError, InterfaceError):
            try:
                _owned(snapshot_id, attempt).update(
                    status=Status.PENDING, heartbeat_at=None, enqueued_at=Now()
                )
            except Exception:
                log.warning("could not hand export snapshot %s back", snapshot_id)
            raise
        except SoftTimeLimitExceeded:
            log.error("export snapshot %s ran out of time", snapshot_id)
            _owned(snapshot_id, attempt).update(
                status=Status.FAILED, error=OUT_OF_TIME, finished_at=Now()
            )
        except _Lost:
            log.warning("export snapshot %s was taken over by another build", snapshot_id)
        except Exception as exc:
            log.exception("export snapshot %s failed", snapshot_id)
            _owned(snapshot_id, attempt).update(
                status=Status.FAILED, error=str(exc)[:2000], finished_at=Now()
            )
    return ExportSnapshot.objects.select_related("campaign").get(pk=snapshot_id)

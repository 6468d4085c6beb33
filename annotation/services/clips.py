"""Rendering trajectory items' clips, and the pair readiness that follows from them.

An item's clip moves "" -> pending -> ready | failed (`Item.clip_status`); a pair is leased
only once both its items are ready (`Pair.ready`, the partial lease index). Rendering runs
on the media queue (annotation/tasks.py) and replays the segment's stored states
(annotation/rendering.py).

How each failure is survived:

- a task lost before it ran (failed send, broker restarted empty, worker killed): the item
  stays pending with its `clip_requested_at`; `clips_sweep` sends it again once that is older
  than CLIP_STALE_AFTER;
- a task delivered twice or late: only pending items are rendered, and an item is marked
  ready only while still pending, so the second delivery finds nothing to do;
- a transient error (database, storage) mid-batch: the exception reaches the task, which
  retries the batch; items finished before it are ready and skipped, the rest stay pending;
- a segment that cannot be replayed: the item is failed with the reason, its pairs stay
  unready (never leased) until staff re-render it (`clips_rerender`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import DatabaseError, connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.db.models.functions import Now

from feedback_app.celery import app as celery_app

from .. import dataset_io, rendering, task_names
from ..errors import shown
from ..models import Assignment, Campaign, ClipStatus, Item, Pair, clip_upload_to

log = logging.getLogger(__name__)

# Segments per render task: a batch of 50-step Pendulum clips takes a few seconds, of
# 1000-step MuJoCo clips about a minute (docs/benchmarks.md, "Clip rendering"), well inside
# the task's time limit.
RENDER_BATCH = 16
# A pending clip whose request is older than this has lost its task. Long enough that a
# backlog on the media queue is not sent twice (that would only waste work: a second
# delivery finds the clip ready), short enough that a lost task shows within the hour.
CLIP_STALE_AFTER = timedelta(minutes=15)
ERROR_MAX = 2000  # characters of a failure kept on the item

_PAIR = Pair._meta.db_table
_ITEM = Item._meta.db_table


def _send(item_ids: Sequence[int]) -> None:
    """Send render tasks for `item_ids`, RENDER_BATCH per task. A failed send leaves the
    items pending with their request time: the sweep sends them again."""
    for at in range(0, len(item_ids), RENDER_BATCH):
        batch = list(item_ids[at : at + RENDER_BATCH])
        try:
            celery_app.send_task(task_names.RENDER_CLIPS, args=(batch,))
        except Exception:
            log.exception("could not send the render of items %s; the sweep will", batch)


def clips_request(*, item_ids: Iterable[int]) -> list[int]:
    """Mark the trajectory items among `item_ids` whose clip is not ready pending and send
    their renders once this transaction commits. Items without a source dataset (an
    uploaded clip, text) and ready clips are left alone. Returns the ids marked."""
    wanted = Item.objects.filter(pk__in=list(item_ids), source_dataset__isnull=False).exclude(
        clip_status=ClipStatus.READY
    )
    with transaction.atomic():
        ids = sorted(wanted.select_for_update().values_list("pk", flat=True))
        Item.objects.filter(pk__in=ids).update(
            clip_status=ClipStatus.PENDING, clip_error="", clip_requested_at=Now()
        )
        # robust: the rows are committed either way, and the sweep finds them.
        transaction.on_commit(partial(_send, ids), robust=True)
    return ids


def campaign_clips_request(*, campaign: Campaign) -> list[int]:
    """Request every clip of the campaign that has none yet (status "")."""
    ids = Item.objects.filter(
        campaign=campaign, source_dataset__isnull=False, clip_status=ClipStatus.NONE
    ).values_list("pk", flat=True)
    return clips_request(item_ids=list(ids))


# --- rendering -------------------------------------------------------------------------------


@dataclass
class RenderReport:
    ready: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # not pending: done already, or gone
    pairs_ready: int = 0


def _segment(item: Item) -> rendering.Segment:
    """The item's rows from its dataset's field files (memory-mapped: only these rows are
    read). RenderError when the item or its files do not describe a segment."""
    dataset = item.source_dataset
    if dataset is None or item.start is None or not item.length:
        raise rendering.RenderError(
            "the item names no dataset rows (source_dataset, start, length)"
        )
    stop = item.start + item.length
    if stop > dataset.transition_count:
        raise rendering.RenderError(
            f"rows {item.start}-{stop - 1} are past the dataset's {dataset.transition_count} rows"
        )
    stored = set(dataset.fields)

    def rows(name: str) -> Any:
        if name not in stored:
            return None
        try:
            return dataset_io.field_open(directory=dataset.path, name=name)[item.start : stop]
        except (OSError, ValueError) as exc:
            raise rendering.RenderError(f"field {name!r} cannot be read: {exc}") from exc

    return rendering.Segment(
        observations=rows("observations"),
        actions=rows("actions"),
        state=rows("infos/state"),
        qpos=rows("infos/qpos"),
        qvel=rows("infos/qvel"),
        frames=rows("infos/frames"),
    )


def _item_failed(item_id: int, error: str) -> None:
    # Only while pending: a late duplicate must not fail a clip another delivery finished.
    Item.objects.filter(pk=item_id, clip_status=ClipStatus.PENDING).update(
        clip_status=ClipStatus.FAILED, clip_error=error[:ERROR_MAX]
    )


def _item_ready(item_id: int, *, clip: str, poster: str, rendered: rendering.Rendered) -> bool:
    """Store the rendered clip on the item if it is still pending; False (nothing written)
    when another delivery finished it first. Commits before returning."""
    with transaction.atomic():
        old = (
            Item.objects.select_for_update()
            .filter(pk=item_id, clip_status=ClipStatus.PENDING)
            .values_list("clip", "poster")
            .first()
        )
        if old is None:
            return False
        Item.objects.filter(pk=item_id).update(
            clip=clip,
            poster=poster,
            clip_status=ClipStatus.READY,
            clip_error="",
            clip_frames=rendered.frames,
            clip_fps=rendered.fps,
        )
        # A re-render replaces an earlier clip (never one whose pairs were judged:
        # clips_rerender): its files go once the new names are committed.
        stale = [name for name in old if name and name not in (clip, poster)]
        if stale:
            transaction.on_commit(partial(_delete_files, stale), robust=True)
    return True


def _delete_files(names: Sequence[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            log.warning("could not delete %s", name, exc_info=True)


def _render_one(item: Item) -> tuple[str, str, rendering.Rendered] | str:
    """Render and store the item's files: their names and what was rendered, or the error
    text when the segment cannot be rendered. Storage errors propagate (transient: the task
    retries)."""
    env_id = item.source_dataset.env_id if item.source_dataset else ""
    with tempfile.TemporaryDirectory(prefix="clip-") as tmp:
        clip_path, poster_path = Path(tmp) / "clip.mp4", Path(tmp) / "poster.jpg"
        try:
            segment = _segment(item)
            if not env_id and segment.frames is None:
                raise rendering.RenderError(
                    "the dataset names no environment (env_id) and stores no infos/frames"
                )
            rendered = rendering.segment_render(
                env_id=env_id,
                segment=segment,
                clip_path=clip_path,
                poster_path=poster_path,
            )
        except rendering.RenderError as exc:
            return shown(exc)
        except (DatabaseError, MemoryError, SoftTimeLimitExceeded):
            raise
        except Exception as exc:
            # A bug in an environment's drawing, say: rendering it again fails again, so
            # the item is failed (staff see why and may re-render) rather than retried.
            log.exception("rendering item %s failed", item.pk)
            return shown(f"{type(exc).__name__}: {exc}")
        if rendered.frames != item.length:
            return f"rendered {rendered.frames} frames for {item.length} rows"
        # Names from a uuid (clip_upload_to), never from anything a person typed.
        with clip_path.open("rb") as fh:
            clip = default_storage.save(clip_upload_to(item, "clip.mp4"), File(fh))
        # The poster beside its clip (same name, .jpg): the media view finds it through
        # the clip's index (selectors.clip_item_for).
        with poster_path.open("rb") as fh:
            poster = default_storage.save(str(PurePosixPath(clip).with_suffix(".jpg")), File(fh))
    return clip, poster, rendered


def clips_render(*, item_ids: Iterable[int]) -> RenderReport:
    """Render every pending item among `item_ids`, then mark the pairs whose two clips are
    now ready. Safe to run twice, late, or concurrently with another delivery of the same
    ids: only pending items are rendered, and only a pending item is marked ready.

    Call outside a transaction: each item's outcome commits on its own, before the pairs
    are marked (see clips_mark_ready)."""
    ids = sorted(set(item_ids))
    report = RenderReport()
    items = Item.objects.select_related("source_dataset").in_bulk(ids)
    for item_id in ids:
        item = items.get(item_id)
        if item is None or item.clip_status != ClipStatus.PENDING:
            report.skipped.append(item_id)
            continue
        try:
            outcome = _render_one(item)
        except SoftTimeLimitExceeded:
            # One segment took the task's whole time: rendering it again would too. The
            # batch's other pending items wait for the sweep.
            _item_failed(item_id, "stopped at the render task's time limit (segment too long)")
            clips_mark_ready(item_ids=ids)
            raise
        if isinstance(outcome, str):
            _item_failed(item_id, outcome)
            report.failed.append(item_id)
            continue
        clip, poster, rendered = outcome
        if _item_ready(item_id, clip=clip, poster=poster, rendered=rendered):
            report.ready.append(item_id)
        else:  # another delivery stored its clip first; ours is not referenced
            _delete_files([clip, poster])
            report.skipped.append(item_id)
    # Every id, not only those rendered now: a retry after a failure between an item's
    # commit and this statement marks that item's pairs too.
    report.pairs_ready = clips_mark_ready(item_ids=ids)
    return report


_MARK_READY_SQL = f"""
UPDATE {_PAIR} p SET ready = true
FROM {_ITEM} a, {_ITEM} b
WHERE a.id = p.item_a_id AND b.id = p.item_b_id
  AND NOT p.ready
  AND a.clip_status = %(ready)s AND b.clip_status = %(ready)s
  AND (p.item_a_id = ANY(%(ids)s) OR p.item_b_id = ANY(%(ids)s))
"""


def clips_mark_ready(*, item_ids: Sequence[int]) -> int:
    """Mark ready every unready pair of `item_ids` whose two clips are ready; returns how many.

    Must run in its own statement after the items' updates committed, never inside the
    transaction that made an item ready. Two workers finishing the two sides of one pair at
    once: if each marked the pair in the transaction that readied its side, each statement
    would see the other side still pending (its update is not committed yet: READ COMMITTED
    shows committed rows only), neither would mark the pair, and it would never be leased.
    Run after the commit, whichever of the two statements starts second starts after both
    items committed (each worker's statement follows its own commit), so it sees both
    ready and marks the pair. The sweep re-runs this for all items as a backstop."""
    ids = [int(i) for i in item_ids]
    if not ids:
        return 0
    if connection.vendor != "postgresql":  # SQLite (embedded mode): the same, via the ORM
        ready = Item.objects.filter(clip_status=ClipStatus.READY)
        return (
            Pair.objects.filter(ready=False)
            .filter(Q(item_a_id__in=ids) | Q(item_b_id__in=ids))
            .filter(item_a__in=ready, item_b__in=ready)
            .update(ready=True)
        )
    with connection.cursor() as cursor:
        cursor.execute(_MARK_READY_SQL, {"ready": ClipStatus.READY.value, "ids": ids})
        return int(cursor.rowcount)


def clip_uploaded(*, item_id: int) -> None:
    """A person stored a clip file on the item (the admin): it is ready as it is. Call in
    the transaction that saved it; its pairs are marked once that commits."""
    Item.objects.filter(pk=item_id).exclude(clip="").update(
        clip_status=ClipStatus.READY, clip_error=""
    )
    transaction.on_commit(partial(clips_mark_ready, item_ids=[item_id]), robust=True)


# --- the sweep and staff -----------------------------------------------------------------------


def clips_sweep() -> dict[str, int]:
    """Send again the renders of pending items whose task is lost (requested more than
    CLIP_STALE_AFTER ago, or never stamped), stamping them anew so each is sent at most once
    per CLIP_STALE_AFTER; and mark ready every pair whose two clips are ready but which was
    missed (a worker killed between an item's commit and its pair statement). Beat runs it."""
    with transaction.atomic():
        lost = Item.objects.filter(clip_status=ClipStatus.PENDING).filter(
            Q(clip_requested_at__isnull=True) | Q(clip_requested_at__lt=Now() - CLIP_STALE_AFTER)
        )
        ids = sorted(lost.select_for_update(skip_locked=True).values_list("pk", flat=True))
        if ids:
            Item.objects.filter(pk__in=ids).update(clip_requested_at=Now())
            transaction.on_commit(partial(_send, ids), robust=True)
    ready = Item.objects.filter(clip_status=ClipStatus.READY)
    missed = Pair.objects.filter(ready=False, item_a__in=ready, item_b__in=ready).update(ready=True)
    return {"requeued": len(ids), "pairs_ready": missed}


@dataclass
class Rerender:
    requested: list[int] = field(default_factory=list)
    judged: list[int] = field(default_factory=list)  # ready clips kept: their pairs are judged


def clips_rerender(*, campaign: Campaign, item_ids: Iterable[int] | None = None) -> Rerender:
    """Render again the campaign's items `item_ids` (default: every failed one). A failed or
    pending clip is requested again; a ready one only if none of its pairs has a judgment
    or an open lease: people judged what they saw, and that clip stays. Its pairs are
    unready until the new clip is ready."""
    items = Item.objects.filter(campaign=campaign, source_dataset__isnull=False)
    if item_ids is None:
        items = items.filter(clip_status=ClipStatus.FAILED)
    else:
        items = items.filter(pk__in=list(item_ids))
    result = Rerender()
    with transaction.atomic():
        rows = dict(items.select_for_update().values_list("pk", "clip_status"))
        ready = [pk for pk, status in rows.items() if status == ClipStatus.READY]
        if ready:
            pairs = Pair.objects.filter(Q(item_a_id__in=ready) | Q(item_b_id__in=ready))
            # The pair locks: a submit or lease decides under them (annotation/locks.py),
            # so none can slip in between this check and the update below.
            list(pairs.select_for_update().order_by("pk").values_list("pk", flat=True))
            busy = pairs.filter(
                Q(judgment_count__gt=0)
                | Exists(
                    Assignment.objects.filter(
                        pair=OuterRef("pk"),
                        status=Assignment.Status.OPEN,
                        expires_at__gt=Now(),
                    )
                )
            ).values_list("item_a_id", "item_b_id")
            held = {i for pair in busy for i in pair}
            result.judged = sorted(set(ready) & held)
            free = [pk for pk in ready if pk not in held]
            Pair.objects.filter(Q(item_a_id__in=free) | Q(item_b_id__in=free)).update(ready=False)
            # clips_request skips ready items: make them pending first.
            Item.objects.filter(pk__in=free).update(clip_status=ClipStatus.PENDING)
        wanted = [pk for pk in rows if pk not in result.judged]
        result.requested = clips_request(item_ids=wanted)
    return result

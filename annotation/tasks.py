"""Celery entry points of the annotation app: take ids, call one service.

Clip renders run on the media queue (feedback_app/celery.py), apart from aggregations and
exports' latency. Both tasks are safe to run twice or late (annotation/services/clips.py).
Hard time limits sit far below the broker's visibility timeout
(settings.CELERY_BROKER_TRANSPORT_OPTIONS), so Redis never hands a running render to a
second worker.
"""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from . import task_names
from .services import clips, datasets

# A database or storage blip, not a bug: the batch is retried, items already ready skipped.
# Past the retries the items stay pending and the sweep sends them again.
TRANSIENT = (OperationalError, InterfaceError, ConnectionError, TimeoutError)


@shared_task(
    name=task_names.RENDER_CLIPS,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=5,
    soft_time_limit=600,
    time_limit=660,
)
def render_clips(item_ids: list[int]) -> dict[str, int]:
    """Render the batch's pending clips and mark the pairs they complete."""
    report = clips.clips_render(item_ids=item_ids)
    return {
        "ready": len(report.ready),
        "failed": len(report.failed),
        "skipped": len(report.skipped),
        "pairs_ready": report.pairs_ready,
    }


@shared_task(name=task_names.CLIPS_SWEEP, acks_late=True, soft_time_limit=50, time_limit=60)
def clips_sweep() -> dict[str, int]:
    """Send again renders whose task was lost; mark pairs missed. Beat runs it."""
    return clips.clips_sweep()


@shared_task(name=task_names.DATASETS_SWEEP, acks_late=True, soft_time_limit=300, time_limit=330)
def datasets_sweep() -> int:
    """Remove what killed imports and uploads left under DATASETS_ROOT. Beat runs it."""
    return datasets.dataset_staging_sweep()

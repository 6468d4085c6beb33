"""Celery entry points for export snapshots: take ids, call one service."""

from celery import shared_task
from django.db import InterfaceError, OperationalError

from .. import task_names
from ..services.exports import (
    BUILD_SOFT_TIME_LIMIT,
    BUILD_TIME_LIMIT,
    export_snapshot_build,
    export_snapshot_requeue_lost,
)


@shared_task(
    name=task_names.BUILD_EXPORT_SNAPSHOT,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),  # a database blip, not a bug
    retry_backoff=True,
    max_retries=3,
    # Both below the broker's visibility timeout: see BUILD_TIME_LIMIT.
    soft_time_limit=BUILD_SOFT_TIME_LIMIT,
    time_limit=BUILD_TIME_LIMIT,
)
def build_export_snapshot(snapshot_id: int) -> None:
    export_snapshot_build(snapshot_id=snapshot_id)


@shared_task(
    name=task_names.EXPORT_SNAPSHOT_SWEEP, acks_late=True, soft_time_limit=100, time_limit=120
)
def export_snapshot_sweep() -> None:
    export_snapshot_requeue_lost()

"""Celery entry points for export snapshots: take ids, call one service."""

from celery import shared_task
from django.db import InterfaceError, OperationalError

from ..services import export_snapshot_build


@shared_task(
    name="labeling.tasks.build_export_snapshot",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=3,
    soft_time_limit=3600,
    time_limit=3660,
)
def build_export_snapshot(snapshot_id: int) -> None:
    export_snapshot_build(snapshot_id=snapshot_id)

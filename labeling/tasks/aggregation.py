"""Celery entry points for aggregation: take ids, call one service."""

from celery import shared_task
from django.db import InterfaceError, OperationalError

from ..services import aggregation_failed, aggregation_requeue_stale, aggregation_run


@shared_task(
    name="labeling.tasks.aggregate_campaign",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),  # a database blip, not a bug
    retry_backoff=True,
    max_retries=5,
    soft_time_limit=900,
    time_limit=960,
)
def aggregate_campaign(campaign_id: int) -> None:
    try:
        aggregation_run(campaign_id=campaign_id)
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:
        aggregation_failed(campaign_id=campaign_id, error=exc)
        raise


@shared_task(name="labeling.tasks.aggregation_sweep", acks_late=True, time_limit=120)
def aggregation_sweep() -> None:
    aggregation_requeue_stale()

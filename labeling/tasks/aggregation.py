"""Celery entry points for aggregation: take ids, call one service.

Both tasks are safe to run twice or late: the database row says what is owed, and a run
holds the campaign's run lock (labeling/services/aggregation.py). Hard time limits sit far
below the broker's visibility timeout (settings.CELERY_BROKER_TRANSPORT_OPTIONS), so Redis
never hands a running task to a second worker.
"""

from celery import shared_task
from django.db import InterfaceError, OperationalError

from .. import task_names
from ..blas import blas_threads_limited
from ..services import aggregation_requeue_stale, aggregation_run

# BLAS threads of a run's fit. One: its BLAS calls are dot products over score vectors,
# which gain little from threads, and the workers on the labels queue share the cores
# (labeling/blas.py, docs/benchmarks.md, "Bradley–Terry fit").
AGGREGATION_BLAS_THREADS = 1


@shared_task(
    name=task_names.AGGREGATE_CAMPAIGN,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),  # a database blip, not a bug
    retry_backoff=True,
    max_retries=5,
    soft_time_limit=900,
    time_limit=960,
)
def aggregate_campaign(campaign_id: int) -> str:
    """Run the campaign's aggregation if one is owed. A message delivered twice, or an hour
    late (a killed worker held it), finds nothing owed, or another run holding the campaign,
    and returns at once. Other errors are recorded on the campaign's state by the service."""
    with blas_threads_limited(threads=AGGREGATION_BLAS_THREADS):
        return aggregation_run(campaign_id=campaign_id, only_if_owed=True).value


@shared_task(name=task_names.AGGREGATION_SWEEP, acks_late=True, soft_time_limit=50, time_limit=60)
def aggregation_sweep() -> None:
    """Enqueue every aggregation owed and without a task. Beat runs it every few seconds."""
    aggregation_requeue_stale()

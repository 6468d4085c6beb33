"""Celery entry points for reward labels (labeling/services/reward_labels.py): take ids,
call one service. Safe to run twice or late: a labeling whose inputs are those of the latest
done one does nothing."""

from celery import shared_task
from django.db import InterfaceError, OperationalError

from .. import task_names
from ..blas import blas_threads_limited
from ..services import reward_labels as labels_service


@shared_task(
    name=task_names.REWARD_LABELS,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=5,
    soft_time_limit=900,
    time_limit=960,
)
def reward_labels(campaign_id: int) -> list[str]:
    """Every labeling method owed for the campaign (closed form first: it is instant)."""
    done = []
    with blas_threads_limited(threads=1):
        for method in labels_service.METHODS:
            labeling = labels_service.reward_labeling_run(campaign_id=campaign_id, method=method)
            if labeling is not None:
                done.append(f"{method} {labeling.pk}")
    return done


@shared_task(name=task_names.REWARD_LABELS_SWEEP, acks_late=True, soft_time_limit=50, time_limit=60)
def reward_labels_sweep() -> list[int]:
    """Ask again for the labels of campaigns whose labels are behind their scores."""
    return labels_service.reward_labels_requeue_owed()

"""Reward labels per transition for trajectory campaigns (optimal reward labeling,
labeling/orl.py), computed from the pairs' soft labels after each aggregation run and kept as
versioned rows (`RewardLabeling`) with their label file.

A run reads, in one snapshot, the campaign's pair labels for its first criterion together with
both segments' rows in the imported dataset, solves, writes the labels (one float32 per
dataset row, in the source's order) to storage and marks its row done. Nothing is replaced:
a newer row is a newer version. A run whose inputs (the aggregation run it would read) are
those of the latest done row for the method does nothing, so a task delivered twice is free.
A failure leaves the row `failed` with the error.
"""

from __future__ import annotations

import io
import time
from datetime import timedelta
from typing import Any

import numpy as np
from django.core.files.base import ContentFile
from django.db import connection, transaction
from django.db.models import Max
from django.db.models.functions import Now

from annotation.models import Campaign, Dataset, Item
from annotation.selectors import one_snapshot
from feedback_app.celery import app as celery_app

from .. import orl, task_names
from ..models import AggregationState, PairLabel, RewardLabeling

ERROR_MAX = 2000
# A labeling row still running after this is taken for dead (its worker was killed) by the
# sweep, which asks again. Far above any run's time limit (labeling/tasks/reward_labels.py).
STALE_AFTER = timedelta(minutes=30)
# Methods computed after each aggregation run, in this order.
METHODS = ("orl", "orl-exact")


def _inputs(campaign: Campaign) -> tuple[Dataset, Any, dict[str, np.ndarray], int, int]:
    """The dataset, criterion, pair arrays, aggregation seq and judgments used, in one
    snapshot."""
    with one_snapshot():
        criterion = campaign.criteria.order_by("position", "id").first()
        state = AggregationState.objects.filter(campaign=campaign).first()
        dataset_ids = set(
            Item.objects.filter(campaign=campaign, source_dataset__isnull=False)
            .values_list("source_dataset_id", flat=True)
            .distinct()[:2]
        )
        if len(dataset_ids) != 1:
            raise ValueError(
                "reward labels need a campaign cut from one stored dataset; this one has "
                f"{len(dataset_ids)}"
            )
        dataset = Dataset.objects.get(pk=dataset_ids.pop())
        rows = list(
            PairLabel.objects.filter(campaign=campaign, criterion=criterion, count__gt=0)
            .order_by("pair_id")
            .values_list(
                "pair__item_a__start",
                "pair__item_a__length",
                "pair__item_b__start",
                "pair__item_b__length",
                "prefer_a",
                "count",
            )
        )
    table = np.array(rows, dtype=np.float64).reshape(-1, 6)
    arrays = {
        "start_1": table[:, 0].astype(np.int64),
        "length_1": table[:, 1].astype(np.int64),
        "start_2": table[:, 2].astype(np.int64),
        "length_2": table[:, 3].astype(np.int64),
        "y": table[:, 4],
        "weight": table[:, 5],
    }
    seq = state.applied_seq if state else 0
    used = state.judgments_used if state else 0
    return dataset, criterion, arrays, seq, used


def reward_labeling_run(*, campaign_id: int, method: str) -> RewardLabeling | None:
    """Label the campaign's dataset by `method` (RewardLabeling.Method) from its current pair
    labels. None when there is nothing to do: not a campaign cut from a dataset, no judged
    pair, or the latest done labeling by this method read the same aggregation run."""
    campaign = Campaign.objects.filter(pk=campaign_id, kind=Campaign.Kind.TRAJECTORY).first()
    if campaign is None or not campaign.source:
        return None
    if method not in RewardLabeling.Method.values:
        raise ValueError(f"unknown labeling method {method!r}")
    started = time.perf_counter()
    dataset, criterion, arrays, seq, used = _inputs(campaign)
    if not len(arrays["y"]):
        return None
    labeling = _claim(
        campaign=campaign,
        criterion=criterion,
        method=method,
        seq=seq,
        judgments_used=used,
        pairs_used=len(arrays["y"]),
        transitions=dataset.transition_count,
    )
    if labeling is None:
        return None
    try:
        pairs = orl.pairs_from_arrays(n_transitions=dataset.transition_count, **arrays)
        if method == RewardLabeling.Method.EXACT:
            labels = orl.exact(pairs=pairs)
        else:
            labels = orl.closed_form(pairs=pairs)
        buffer = io.BytesIO()
        np.save(buffer, labels.rewards)
        labeling.file.save("labels.npy", ContentFile(buffer.getvalue()), save=False)
        RewardLabeling.objects.filter(pk=labeling.pk).update(
            status=RewardLabeling.Status.DONE,
            file=labeling.file.name,
            covered=int(labels.covered.sum()),
            objective=labels.objective,
            iterations=labels.iterations,
            converged=labels.converged,
            seconds=time.perf_counter() - started,
            finished_at=Now(),
        )
    except Exception as exc:
        # The row says why; the next aggregation run tries again.
        if connection.in_atomic_block and transaction.get_rollback():
            raise
        RewardLabeling.objects.filter(pk=labeling.pk).update(
            status=RewardLabeling.Status.FAILED,
            error=f"{type(exc).__name__}: {exc}"[:ERROR_MAX],
            finished_at=Now(),
        )
        raise
    labeling.refresh_from_db()
    return labeling


def _claim(*, campaign: Campaign, method: str, seq: int, **fields: Any) -> RewardLabeling | None:
    """The new labeling's row, or None when this run is not owed: the latest done labeling
    by `method` read aggregation run `seq` already, or a live run (started within
    STALE_AFTER) is computing it. Decided under the campaign's AggregationState row lock,
    with what it reads re-read after the lock: two deliveries of one task never both run."""
    with transaction.atomic():
        AggregationState.objects.select_for_update().filter(campaign=campaign).first()
        mine = RewardLabeling.objects.filter(campaign=campaign, method=method, aggregation_seq=seq)
        if seq and mine.filter(status=RewardLabeling.Status.DONE).exists():
            return None
        live = mine.filter(status=RewardLabeling.Status.RUNNING, created_at__gt=Now() - STALE_AFTER)
        if live.exists():
            return None
        return RewardLabeling.objects.create(
            campaign=campaign, method=method, aggregation_seq=seq, **fields
        )


def reward_labels_latest(*, campaign: Campaign, method: str) -> RewardLabeling | None:
    return (
        RewardLabeling.objects.filter(
            campaign=campaign, method=method, status=RewardLabeling.Status.DONE
        )
        .order_by("-id")
        .first()
    )


def reward_labels_request(*, campaign_id: int) -> None:
    """Ask a worker for the campaign's labels (after an aggregation run applied). A lost
    message is found by the sweep: the labels' inputs are behind the applied run."""
    celery_app.send_task(task_names.REWARD_LABELS, args=(campaign_id,))


def reward_labels_owed() -> list[int]:
    """Trajectory campaigns cut from a dataset whose newest done labeling (by any method)
    read an older aggregation run than the one applied, and with no labeling started in the
    last STALE_AFTER: a lost task, or a run that died."""
    applied = {
        campaign_id: seq
        for campaign_id, seq in AggregationState.objects.filter(
            applied_seq__gt=0, campaign__kind=Campaign.Kind.TRAJECTORY
        )
        .exclude(campaign__source={})
        .values_list("campaign_id", "applied_seq")
    }
    if not applied:
        return []
    done = dict(
        RewardLabeling.objects.filter(campaign_id__in=applied, status=RewardLabeling.Status.DONE)
        .values_list("campaign_id")
        .annotate(seq=Max("aggregation_seq"))
    )
    busy = set(
        RewardLabeling.objects.filter(
            campaign_id__in=applied,
            status=RewardLabeling.Status.RUNNING,
            created_at__gt=Now() - STALE_AFTER,
        ).values_list("campaign_id", flat=True)
    )
    return sorted(
        campaign_id
        for campaign_id, seq in applied.items()
        if done.get(campaign_id, 0) < seq and campaign_id not in busy
    )


def reward_labels_requeue_owed() -> list[int]:
    owed = reward_labels_owed()
    for campaign_id in owed:
        reward_labels_request(campaign_id=campaign_id)
    return owed

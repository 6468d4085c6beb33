"""Aggregation: scheduling runs after judgments commit, and applying their results."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import numpy as np
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from .. import bradley_terry
from ..models import AggregationState, ItemScore, PairLabel

log = logging.getLogger(__name__)

# A pending flag older than this is taken to be an enqueue that was lost (a broker outage
# between setting the flag and publishing), and the next judgment enqueues again.
PENDING_STALE_AFTER = timedelta(minutes=10)


def _enqueue(campaign_id: int) -> None:
    from django.conf import settings

    from ..tasks.aggregation import aggregate_campaign

    # The delay batches a burst of judgments into one run; the pending flag stays set
    # meanwhile, so none of them enqueues another.
    aggregate_campaign.apply_async((campaign_id,), countdown=settings.AGGREGATION_DELAY_SECONDS)


def aggregation_request(*, campaign_id: int) -> bool:
    """Schedule an aggregation of the campaign unless one is already pending.

    Called after a judgment commits. Costs one read in the common case (a run is already
    pending), so submits never queue up behind a shared row. Returns True if it enqueued.
    """
    now = timezone.now()
    row = (
        AggregationState.objects.filter(campaign_id=campaign_id)
        .values_list("pending", "requested_at")
        .first()
    )
    if row is None:
        try:
            with transaction.atomic():
                AggregationState.objects.create(
                    campaign_id=campaign_id, pending=True, requested_at=now
                )
        except IntegrityError:
            return False  # a concurrent submit created it and enqueued
    else:
        pending, requested_at = row
        if pending and requested_at and requested_at > now - PENDING_STALE_AFTER:
            return False
        # Conditional update: of the submits racing here, exactly one flips the flag.
        flipped = (
            AggregationState.objects.filter(campaign_id=campaign_id)
            .filter(Q(pending=False) | Q(requested_at__lt=now - PENDING_STALE_AFTER))
            .update(pending=True, requested_at=now)
        )
        if not flipped:
            return False
    try:
        _enqueue(campaign_id)
    except Exception:
        # Leave no flag behind that would block every later request.
        AggregationState.objects.filter(campaign_id=campaign_id).update(pending=False)
        log.exception("could not enqueue aggregation of campaign %s", campaign_id)
        return False
    return True


def aggregation_requeue_stale() -> list[int]:
    """Enqueue again every aggregation left pending longer than PENDING_STALE_AFTER: its
    message was lost (a broker outage, or a worker that died holding it). Run by beat."""
    now = timezone.now()
    stale = list(
        AggregationState.objects.filter(
            pending=True, requested_at__lt=now - PENDING_STALE_AFTER
        ).values_list("campaign_id", flat=True)
    )
    requeued = []
    for campaign_id in stale:
        # Conditional: a run that started meanwhile cleared the flag and needs no help.
        if AggregationState.objects.filter(
            campaign_id=campaign_id, pending=True, requested_at__lt=now - PENDING_STALE_AFTER
        ).update(requested_at=now):
            _enqueue(campaign_id)
            requeued.append(campaign_id)
    return requeued


OUTCOME = {"a": 1.0, "b": 0.0, "tie": 0.5}


def aggregation_run(*, campaign_id: int) -> bool:
    """Fit Bradley-Terry scores and pair soft labels from the campaign's active judgments.

    Idempotent: a rerun recomputes the same results from the same judgments. Returns False
    when a later run had already applied its results (ours are then older and dropped).
    """
    from annotation.models import Campaign

    from ..selectors import aggregation_inputs

    now = timezone.now()
    with transaction.atomic():
        state, _ = AggregationState.objects.select_for_update().get_or_create(
            campaign_id=campaign_id
        )
        # Cleared and committed before reading judgments: anything committed after this
        # point sets the flag again and schedules the next run.
        state.pending = False
        state.started_seq += 1
        state.last_started_at = now
        state.save(update_fields=["pending", "started_seq", "last_started_at"])
        seq = state.started_seq

    campaign = Campaign.objects.get(pk=campaign_id)
    inputs = aggregation_inputs(campaign=campaign)
    both_bad = 0.5 if campaign.both_bad_counts_as == Campaign.BothBad.TIE else None
    outcome_of = {**OUTCOME, "both_bad": both_bad}

    item_ids = inputs.item_ids
    index_of = {item_id: i for i, item_id in enumerate(item_ids)}
    scores: list[ItemScore] = []
    labels: list[PairLabel] = []
    for criterion_id, slug in inputs.criteria:
        rows = [
            (pair_id, a, b, outcome_of.get(choices.get(slug)))
            for pair_id, a, b, choices in inputs.judgments
        ]
        rows = [r for r in rows if r[3] is not None]
        if rows:
            pair_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            first = np.fromiter((index_of[r[1]] for r in rows), dtype=np.int64, count=len(rows))
            second = np.fromiter((index_of[r[2]] for r in rows), dtype=np.int64, count=len(rows))
            outcome = np.fromiter((r[3] for r in rows), dtype=np.float64, count=len(rows))
        else:
            pair_ids = first = second = np.zeros(0, dtype=np.int64)
            outcome = np.zeros(0)
        comparisons = bradley_terry.comparisons_from_outcomes(
            n_items=len(item_ids), first=first, second=second, outcome=outcome
        )
        fit = bradley_terry.fit(comparisons=comparisons, l2=campaign.l2_prior)
        per_item = np.bincount(first, minlength=len(item_ids)) + np.bincount(
            second, minlength=len(item_ids)
        )
        # Items never compared sit at the prior's mean (0) and get no row: a campaign has
        # many more items than compared ones early on, and every run rewrites its rows.
        scores.extend(
            ItemScore(
                item_id=item_ids[i],
                criterion_id=criterion_id,
                campaign_id=campaign_id,
                score=float(fit.scores[i]),
                comparisons=int(per_item[i]),
            )
            for i in np.flatnonzero(per_item)
        )
        unique_pairs, inverse = np.unique(pair_ids, return_inverse=True)
        counts = np.bincount(inverse, minlength=len(unique_pairs))
        prefer_a = np.bincount(inverse, weights=outcome, minlength=len(unique_pairs)) / np.maximum(
            counts, 1
        )
        labels.extend(
            PairLabel(
                pair_id=int(pair_id),
                criterion_id=criterion_id,
                campaign_id=campaign_id,
                prefer_a=float(prefer_a[n]),
                count=int(counts[n]),
            )
            for n, pair_id in enumerate(unique_pairs)
        )

    with transaction.atomic():
        state = AggregationState.objects.select_for_update().get(campaign_id=campaign_id)
        if state.applied_seq > seq:
            return False
        ItemScore.objects.filter(campaign_id=campaign_id).delete()
        ItemScore.objects.bulk_create(scores, batch_size=2000)
        PairLabel.objects.filter(campaign_id=campaign_id).delete()
        PairLabel.objects.bulk_create(labels, batch_size=2000)
        state.applied_seq = seq
        state.runs_completed += 1
        state.last_finished_at = timezone.now()
        state.judgments_used = len(inputs.judgments)
        state.last_error = ""
        state.save()
    return True


def aggregation_failed(*, campaign_id: int, error: Any) -> None:
    AggregationState.objects.filter(campaign_id=campaign_id).update(last_error=str(error)[:2000])

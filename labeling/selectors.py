"""Reads of the labeling app."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import Model, QuerySet

from annotation.models import Campaign, Criterion, Item, Pair

from .models import AggregationState, ExportSnapshot, ItemScore, PairLabel, RewardLabeling


@dataclass(frozen=True)
class KeysetPage:
    """Rows in key order, and the key of the last one when more rows follow (else None)."""

    rows: list[dict[str, Any]]
    next_after: tuple[int, int] | None


def _keyset_page(
    qs: QuerySet[Any],
    *,
    campaign: Campaign,
    key: tuple[str, str],
    after: tuple[int, int],
    limit: int,
    fields: Sequence[str],
    related: tuple[type[Model], Sequence[str]],
) -> KeysetPage:
    """The rows of `qs` whose (first, second) `key` comes after `after`, in key order, at
    most `limit`, each with `fields`, the criterion's slug and `related` fields of the row
    `first` points at.

    `qs` is one campaign's rows; the condition `first >= a AND NOT (first = a AND second <=
    b)` is then a range of the index (campaign, first, second) that starts at `a`, read in
    order: a page costs its own rows, however deep into the campaign it is. The related rows
    and the criteria come in a query each, by primary key: in one join, the planner merges
    with the related table read from its first row, which costs a deep page every row
    before it."""
    first, second = key
    rows = list(
        qs.filter(**{f"{first}__gte": after[0]})
        .exclude(**{first: after[0], f"{second}__lte": after[1]})
        .order_by(first, second)
        .values(first, second, *fields)[: limit + 1]
    )
    more = len(rows) > limit
    rows = rows[:limit]
    model, columns = related
    prefix = first.removesuffix("_id")
    found = {
        values[0]: values[1:]
        for values in model._default_manager.filter(pk__in={r[first] for r in rows}).values_list(
            "pk", *columns
        )
    }
    slugs = dict(Criterion.objects.filter(campaign=campaign).values_list("id", "slug"))
    for row in rows:
        row.update(zip((f"{prefix}__{c}" for c in columns), found[row[first]], strict=True))
        row["criterion__slug"] = slugs[row[second]]
    return KeysetPage(rows=rows, next_after=(rows[-1][first], rows[-1][second]) if more else None)


def item_scores_page(
    *, campaign: Campaign, after: tuple[int, int] = (0, 0), limit: int
) -> KeysetPage:
    """The campaign's scores after the (item id, criterion id) key `after`, in that order.

    Paged by the scores' natural key, not their row ids or their rank: a refit may change
    any value and so the order by score (and a row of an item no longer compared goes and
    comes back with a new id), but the keys stay, so a client paging through while a refit
    lands still gets every (item, criterion) exactly once, each page's values as of its own
    read; `updated_at` tells it a refit landed."""
    return _keyset_page(
        ItemScore.objects.filter(campaign=campaign),
        campaign=campaign,
        key=("item_id", "criterion_id"),
        after=after,
        limit=limit,
        fields=("score", "comparisons"),
        related=(Item, ("external_id",)),
    )


def pair_labels_page(
    *, campaign: Campaign, after: tuple[int, int] = (0, 0), limit: int
) -> KeysetPage:
    """The campaign's soft labels after the (pair id, criterion id) key `after`, in that
    order; paged by the natural key for the reasons item_scores_page gives."""
    return _keyset_page(
        PairLabel.objects.filter(campaign=campaign),
        campaign=campaign,
        key=("pair_id", "criterion_id"),
        after=after,
        limit=limit,
        fields=("prefer_a", "count"),
        related=(Pair, ("item_a_id", "item_b_id")),
    )


def aggregation_state(*, campaign: Campaign) -> AggregationState | None:
    return AggregationState.objects.filter(campaign=campaign).first()


def export_snapshot_for(*, snapshot_id: int) -> ExportSnapshot | None:
    return ExportSnapshot.objects.select_related("campaign").filter(pk=snapshot_id).first()


def reward_labelings(*, campaign: Campaign) -> list[dict[str, Any]]:
    """The campaign's reward-label versions, newest first (labeling/services/reward_labels.py)."""
    rows: list[dict[str, Any]] = [
        dict(row)
        for row in RewardLabeling.objects.filter(campaign=campaign)
        .order_by("-id")
        .values(
            "id",
            "method",
            "status",
            "error",
            "aggregation_seq",
            "judgments_used",
            "pairs_used",
            "transitions",
            "covered",
            "objective",
            "iterations",
            "converged",
            "seconds",
            "created_at",
            "finished_at",
            "criterion__slug",
        )
    ]
    for row in rows:
        row["criterion"] = row.pop("criterion__slug")
        row["coverage"] = row["covered"] / row["transitions"] if row["transitions"] else 0.0
    return rows


def reward_labeling(*, campaign: Campaign, labeling_id: int) -> RewardLabeling | None:
    return RewardLabeling.objects.filter(campaign=campaign, pk=labeling_id).first()

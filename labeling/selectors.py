"""Reads of the labeling app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from annotation.models import Campaign, Item, Judgment

from .models import AggregationState, ExportSnapshot, ItemScore, PairLabel


@dataclass(frozen=True)
class AggregationInputs:
    item_ids: list[int]
    criteria: list[tuple[int, str]]
    judgments: list[tuple[int, int, int, dict[str, str]]]  # pair, item_a, item_b, choices


def aggregation_inputs(*, campaign: Campaign) -> AggregationInputs:
    """Everything one aggregation run reads, in three queries. They are three snapshots, so
    the item ids are those of the items query together with every item the judgments name:
    a judgment of an item created between the two statements then has its item all the
    same. (Criteria are frozen once a campaign has a judgment.)"""
    items = list(Item.objects.filter(campaign=campaign).order_by("id").values_list("id", flat=True))
    criteria = list(campaign.criteria.values_list("id", "slug"))
    judgments = list(
        Judgment.objects.filter(campaign=campaign, status=Judgment.Status.ACTIVE)
        .order_by("id")
        .values_list("pair_id", "pair__item_a_id", "pair__item_b_id", "choices")
    )
    named = {item for _, a, b, _ in judgments for item in (a, b)}
    return AggregationInputs(
        item_ids=sorted(set(items) | named), criteria=criteria, judgments=judgments
    )


def item_scores(*, campaign: Campaign) -> Any:
    return (
        ItemScore.objects.filter(campaign=campaign)
        .select_related("criterion")
        .order_by("criterion__position", "-score", "item_id")
        .values("item_id", "item__external_id", "criterion__slug", "score", "comparisons")
    )


def pair_labels(*, campaign: Campaign) -> Any:
    return (
        PairLabel.objects.filter(campaign=campaign)
        .order_by("pair_id", "criterion__position")
        .values(
            "pair_id", "pair__item_a_id", "pair__item_b_id", "criterion__slug", "prefer_a", "count"
        )
    )


def aggregation_state(*, campaign: Campaign) -> AggregationState | None:
    return AggregationState.objects.filter(campaign=campaign).first()


def export_snapshot_for(*, snapshot_id: int) -> ExportSnapshot | None:
    return ExportSnapshot.objects.select_related("campaign").filter(pk=snapshot_id).first()

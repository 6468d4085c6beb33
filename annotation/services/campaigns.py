"""Campaigns and their members (staff writes)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from ..models import Campaign, Criterion, Membership


def campaign_create(
    *, name: str, slug: str, criteria: list[dict[str, str]] | None = None, **fields: Any
) -> Campaign:
    with transaction.atomic():
        campaign = Campaign(name=name, slug=slug, **fields)
        campaign.full_clean()
        campaign.save()
        for position, spec in enumerate(criteria or [{"slug": "overall", "label": "Overall"}]):
            Criterion.objects.create(
                campaign=campaign,
                slug=spec["slug"],
                label=spec.get("label") or spec["slug"].replace("-", " ").capitalize(),
                description=spec.get("description", ""),
                position=position,
            )
    return campaign


def membership_add(*, campaign: Campaign, user: AbstractBaseUser) -> Membership:
    membership, _ = Membership.objects.get_or_create(campaign=campaign, user_id=user.pk)
    return membership

"""Campaigns and their members (staff writes)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import IntegrityError, transaction

from ..errors import Conflict, ServiceError, shown
from ..models import Campaign, CampaignRole, Criterion, Membership


def campaign_create(
    *,
    name: str,
    slug: str,
    criteria: list[dict[str, str]] | None = None,
    owner: AbstractBaseUser | None = None,
    **fields: Any,
) -> Campaign:
    """A taken slug is a Conflict (409), whether the campaign was stored before or by a
    concurrent create that won the race to the unique constraint. `owner` (the creator)
    gets the owner role in the same transaction."""
    if Campaign.objects.filter(slug=slug).exists():
        raise _slug_taken(slug)
    campaign = Campaign(name=name, slug=slug, **fields)
    try:
        campaign.full_clean(validate_unique=False)
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        where = None if field == NON_FIELD_ERRORS else field
        raise ServiceError(
            f"{where}: {messages[0]}" if where else messages[0], field=where
        ) from None
    try:
        with transaction.atomic():
            campaign.save()
            for position, spec in enumerate(criteria or [{"slug": "overall", "label": "Overall"}]):
                Criterion.objects.create(
                    campaign=campaign,
                    slug=spec["slug"],
                    label=spec.get("label") or spec["slug"].replace("-", " ").capitalize(),
                    description=spec.get("description", ""),
                    position=position,
                )
            if owner is not None:
                campaign_role_set(campaign=campaign, user=owner, role=CampaignRole.Role.OWNER)
    except IntegrityError:
        if Campaign.objects.filter(slug=slug).exists():
            raise _slug_taken(slug) from None
        raise
    return campaign


def _slug_taken(slug: str) -> Conflict:
    return Conflict(f"A campaign with slug '{shown(slug)}' already exists.", field="slug")


def membership_add(*, campaign: Campaign, user: AbstractBaseUser) -> Membership:
    membership, _ = Membership.objects.get_or_create(campaign=campaign, user_id=user.pk)
    return membership


def campaign_role_set(*, campaign: Campaign, user: AbstractBaseUser, role: str) -> CampaignRole:
    """Make `user` a manager or owner of `campaign` (replacing a role they held)."""
    campaign_role, _ = CampaignRole.objects.update_or_create(
        campaign=campaign, user_id=user.pk, defaults={"role": role}
    )
    return campaign_role

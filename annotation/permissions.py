"""Who may do what, in one place: the API, the pages and the admin all ask here.

Three levels per campaign, each including the one before:

- "view": annotators (a Membership) lease, judge and see their own work;
- "manage": managers edit the campaign, import into it, see its results, export them and
  manage its annotators;
- "own": owners also hand out roles and may delete the campaign.

Superusers are owners of every campaign. `is_staff` alone grants nothing here: it only opens
the admin site, where Django's model permissions and these levels both apply. Creating a
campaign takes the global permission `annotation.add_campaign`; the creator becomes its owner.

A campaign the user may not even view answers 404, as if it did not exist; one they may view
but not act on at the level asked answers 403.
"""

from __future__ import annotations

import copy
from enum import IntEnum
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection
from django.db.models import Q, QuerySet
from rest_framework import permissions

from feedback_app.process_cache import ProcessCache

from .errors import Forbidden, NotFound, shown
from .models import Campaign, CampaignRole, Membership

User = AbstractBaseUser | AnonymousUser


class Need(IntEnum):
    VIEW = 1
    MANAGE = 2
    OWN = 3


NEEDS = {"view": Need.VIEW, "manage": Need.MANAGE, "own": Need.OWN}

_ROLES = {
    Need.MANAGE: (CampaignRole.Role.MANAGER, CampaignRole.Role.OWNER),
    Need.OWN: (CampaignRole.Role.OWNER,),
}


def _need(need: Need | str) -> Need:
    return NEEDS[need] if isinstance(need, str) else need


def is_superuser(user: Any) -> bool:
    return bool(getattr(user, "is_active", False) and getattr(user, "is_superuser", False))


def campaign_filter(*, user: Any, need: Need | str, prefix: str = "") -> Q:
    """A Q on `<prefix>` (a Campaign, or a relation to one: "campaign__") that keeps the
    campaigns `user` may act on at level `need`."""
    need = _need(need)
    if is_superuser(user):
        return Q()
    if not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", False):
        return Q(pk__in=[])
    pk = f"{prefix}pk" if prefix else "pk"
    roles = CampaignRole.objects.filter(user_id=user.pk)
    if need == Need.VIEW:
        return Q(**{f"{pk}__in": roles.values("campaign_id")}) | Q(
            **{f"{pk}__in": Membership.objects.filter(user_id=user.pk).values("campaign_id")}
        )
    return Q(**{f"{pk}__in": roles.filter(role__in=_ROLES[need]).values("campaign_id")})


def campaigns_for(*, user: Any, need: Need | str = Need.VIEW) -> QuerySet[Campaign]:
    return Campaign.objects.filter(campaign_filter(user=user, need=need))


_LEVEL_SQL = f"""
SELECT
  (SELECT r.role FROM {CampaignRole._meta.db_table} r WHERE r.campaign_id = %(campaign)s AND r.user_id = %(user)s
   ORDER BY r.id LIMIT 1),
  EXISTS (SELECT 1 FROM {Membership._meta.db_table} m
          WHERE m.campaign_id = %(campaign)s AND m.user_id = %(user)s)
"""


def campaign_level(*, user: Any, campaign: Campaign) -> Need | None:
    """The highest level `user` holds in `campaign`, or None. One statement: it runs on
    every annotator request."""
    if is_superuser(user):
        return Need.OWN
    if not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", False):
        return None
    with connection.cursor() as cursor:
        cursor.execute(_LEVEL_SQL, {"campaign": campaign.pk, "user": user.pk})
        role, member = cursor.fetchone()
    if role == CampaignRole.Role.OWNER:
        return Need.OWN
    if role == CampaignRole.Role.MANAGER:
        return Need.MANAGE
    return Need.VIEW if member else None


def can(*, user: Any, campaign: Campaign, need: Need | str) -> bool:
    level = campaign_level(user=user, campaign=campaign)
    return level is not None and level >= _need(need)


def campaign_checked(*, user: Any, campaign: Campaign | None, need: Need | str, name: str) -> Any:
    """`campaign` if `user` may act on it at level `need`; NotFound if they may not even
    view it (or it is None), Forbidden if they may view it only."""
    level = None if campaign is None else campaign_level(user=user, campaign=campaign)
    if campaign is None or level is None:
        raise NotFound(f"No campaign '{shown(name)}' that you can see.", field="slug")
    if level < _need(need):
        raise Forbidden(
            f"You may not do this in campaign '{campaign.slug}': it needs a "
            f"{'manager' if _need(need) == Need.MANAGE else 'owner'} of the campaign.",
            field="slug",
        )
    return campaign


_campaigns: ProcessCache[Campaign | None] = ProcessCache("campaigns", max_age=300.0)


def campaign_by_slug(*, slug: str) -> Campaign | None:
    """The campaign named `slug`, from the process cache (feedback_app/process_cache.py):
    a campaign's row changes rarely and every write to it invalidates the cache. Each caller
    gets its own copy."""
    campaign = _campaigns.get_or_load(slug, lambda: Campaign.objects.filter(slug=slug).first())
    return copy.copy(campaign)


def campaign_by_id(*, campaign_id: int) -> Campaign | None:
    """The campaign with this id, from the same process cache; a copy per caller."""
    campaign = _campaigns.get_or_load(
        ("id", campaign_id), lambda: Campaign.objects.filter(pk=campaign_id).first()
    )
    return copy.copy(campaign)


def campaign_for(*, user: Any, slug: str, need: Need | str = Need.VIEW) -> Campaign:
    """The campaign `slug` for an action at level `need`, or NotFound / Forbidden."""
    return campaign_checked(user=user, campaign=campaign_by_slug(slug=slug), need=need, name=slug)


def has_role_anywhere(*, user: Any) -> bool:
    return is_superuser(user) or (
        getattr(user, "is_authenticated", False)
        and CampaignRole.objects.filter(user_id=user.pk).exists()
    )


def can_create_campaign(*, user: Any) -> bool:
    return bool(getattr(user, "is_authenticated", False)) and user.has_perm(
        "annotation.add_campaign"
    )


def can_view_datasets(*, user: Any) -> bool:
    """Datasets belong to no campaign: an active staff user with Django's
    `annotation.view_dataset` permission sees them (superusers hold every permission), as in
    the admin."""
    return bool(
        getattr(user, "is_active", False)
        and getattr(user, "is_staff", False)
        and user.has_perm("annotation.view_dataset")
    )


def can_import_datasets(*, user: Any) -> bool:
    """Importing a dataset takes an active staff user with `annotation.add_dataset`."""
    return bool(
        getattr(user, "is_active", False)
        and getattr(user, "is_staff", False)
        and user.has_perm("annotation.add_dataset")
    )


class DatasetPermission(permissions.BasePermission):
    """Reads need `can_view_datasets`, an upload (POST) `can_import_datasets`. Anonymous
    callers get 401, signed-in ones without the permission 403."""

    message = "Datasets are for staff with the dataset permissions."

    def has_permission(self, request: Any, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method == "POST":
            return can_import_datasets(user=user)
        return can_view_datasets(user=user)


class CampaignPermission(permissions.BasePermission):
    """For an API view with a `need` ("view", "manage" or "own"): the caller must be signed
    in, and the campaign the URL names (by `slug`) must be theirs at that level. The campaign
    is left on the view as `view.campaign`. Views that name their campaign another way
    (an export snapshot's id) check with `campaign_checked` themselves."""

    def has_permission(self, request: Any, view: Any) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        slug = view.kwargs.get("slug")
        if slug is not None:
            view.campaign = campaign_for(
                user=request.user, slug=slug, need=getattr(view, "need", Need.MANAGE)
            )
        return True


class CanCreateCampaign(permissions.BasePermission):
    def has_permission(self, request: Any, view: Any) -> bool:
        return can_create_campaign(user=request.user)

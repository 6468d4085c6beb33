"""Receivers that keep leases honest when people leave: a removed member or a deactivated
account releases its open leases at once, so their slots go to others now rather than when
the leases would have expired. (A queryset update() of `is_active` sends no signal; the admin
and services save the user.)"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save

from .models import Membership
from .services import assignments_release


def _membership_removed(sender: Any, instance: Membership, **kwargs: Any) -> None:
    assignments_release(annotator_id=instance.user_id, campaign_id=instance.campaign_id)


def _user_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if created or instance.is_active:
        return
    assignments_release(annotator_id=instance.pk)


def connect() -> None:
    post_delete.connect(_membership_removed, sender=Membership, dispatch_uid="membership_removed")
    post_save.connect(_user_saved, sender=get_user_model(), dispatch_uid="user_deactivated")

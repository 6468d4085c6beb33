"""Every non-trivial read of the annotation app."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Max, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce, Now

from .models import Assignment, Campaign, Item, Judgment, Pair, Skip

EXPORT_CHUNK = 2000


_jsonl = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _pseudonyms() -> dict[int, str]:
    """A per-export cache: the HMAC once per annotator, not once per row."""

    class Cache(dict[int, str]):
        def __missing__(self, user_id: int) -> str:
            self[user_id] = annotator_pseudonym(user_id)
            return self[user_id]

    return Cache()


def annotator_pseudonym(user_id: int) -> str:
    """A stable id for an annotator that names nobody outside this deployment."""
    digest = hmac.new(
        settings.SECRET_KEY.encode(), f"annotator:{user_id}".encode(), hashlib.sha256
    ).hexdigest()
    return f"ann_{digest[:16]}"


def campaign_list_for(*, user: AbstractBaseUser) -> QuerySet[Campaign]:
    """Campaigns the user may see: all for staff, the ones they are a member of otherwise;
    annotated with the user's own judgment count and the number of pairs."""
    # Counted in correlated subqueries: joining pairs and judgments under one GROUP BY would
    # multiply the two.
    pairs = Pair.objects.filter(campaign=OuterRef("pk")).order_by().values("campaign")
    mine = Judgment.objects.filter(campaign=OuterRef("pk"), annotator_id=user.pk).order_by()
    return campaigns_visible_to(user=user).annotate(
        pair_total=Coalesce(Subquery(pairs.annotate(n=Count("id")).values("n")[:1]), 0),
        my_judgments=Coalesce(
            Subquery(mine.values("campaign").annotate(n=Count("id")).values("n")[:1]), 0
        ),
    )


def campaigns_visible_to(*, user: AbstractBaseUser) -> QuerySet[Campaign]:
    """All campaigns for staff, the ones they are a member of for others."""
    qs = (
        Campaign.objects.all()
        if getattr(user, "is_staff", False)
        else Campaign.objects.filter(membership__user_id=user.pk)
    )
    return qs.order_by("name")


def campaign_for(*, user: AbstractBaseUser, slug: str) -> Campaign | None:
    qs = Campaign.objects.filter(slug=slug)
    if not getattr(user, "is_staff", False):
        qs = qs.filter(membership__user_id=user.pk)
    return qs.first()


def clip_item_for(*, user: AbstractBaseUser, name: str) -> Item | None:
    """The item whose clip is stored under `name`, if `user` may see it: staff, or a member
    of the item's campaign."""
    qs = Item.objects.filter(clip=name)
    if not getattr(user, "is_staff", False):
        qs = qs.filter(campaign__membership__user_id=user.pk)
    return qs.only("id", "clip").first()


def assignment_detail(*, assignment_id: int) -> Assignment:
    """The lease with its pair, both items and the prompt, in one query."""
    return Assignment.objects.select_related(
        "campaign", "pair__item_a__prompt", "pair__item_b"
    ).get(pk=assignment_id)


def judgments_page(
    *, campaign: Campaign, viewer: AbstractBaseUser, after: int = 0, limit: int = 100
) -> list[dict[str, Any]]:
    """Judgments with id > after, oldest first, for incremental pulls.

    Only rows whose transaction began at least JUDGMENT_SETTLE_SECONDS ago are returned, so
    a row with a lower id that is still committing is never jumped over by the cursor.
    Annotators see only their own judgments.
    """
    qs = Judgment.objects.filter(
        campaign=campaign,
        id__gt=after,
        created_at__lte=Now() - timedelta(seconds=settings.JUDGMENT_SETTLE_SECONDS),
    )
    if not getattr(viewer, "is_staff", False):
        qs = qs.filter(annotator_id=viewer.pk)
    rows = list(
        qs.order_by("id").values(
            "id",
            "pair_id",
            "pair__item_a_id",
            "pair__item_b_id",
            "annotator_id",
            "choices",
            "shown_left_id",
            "duration_ms",
            "status",
            "created_at",
        )[:limit]
    )
    return [
        {
            "id": r["id"],
            "pair": r["pair_id"],
            "item_a": r["pair__item_a_id"],
            "item_b": r["pair__item_b_id"],
            "annotator": annotator_pseudonym(r["annotator_id"]),
            "choices": r["choices"],
            "shown_left": r["shown_left_id"],
            "duration_ms": r["duration_ms"],
            "status": r["status"],
            "created_at": r["created_at"],
        }
        for r in rows
    ]


def _item_fields(kind: str) -> tuple[str, ...]:
    if kind == Campaign.Kind.TEXT:
        return ("id", "external_id", "content", "source")
    return ("id", "external_id", "source", "dataset", "episode", "start", "length", "clip")


def export_row_count(
    *, campaign: Campaign, model: type[Judgment] | type[Skip] = Judgment
) -> tuple[int, int]:
    """(count, max id) fixing what an export will contain, taken before streaming starts."""
    agg = model.objects.filter(campaign=campaign).aggregate(n=Count("id"), top=Max("id"))
    return agg["n"], agg["top"] or 0


def judgment_export_lines(*, campaign: Campaign, up_to_id: int) -> Iterator[str]:
    """One JSON line per judgment with id <= up_to_id, read through a server-side cursor so
    memory stays flat however many there are."""
    item_fields = _item_fields(campaign.kind)
    columns = (
        [
            "id",
            "pair_id",
            "annotator_id",
            "choices",
            "shown_left_id",
            "duration_ms",
            "status",
            "created_at",
            "pair__item_a__prompt__messages",
            "pair__item_a__prompt__external_id",
        ]
        + [f"pair__item_a__{f}" for f in item_fields]
        + [f"pair__item_b__{f}" for f in item_fields]
    )
    qs = (
        Judgment.objects.filter(campaign=campaign, id__lte=up_to_id)
        .order_by("id")
        .values_list(*columns)
    )
    n_fixed = 10
    n_item = len(item_fields)
    pseudonyms = _pseudonyms()
    for row in qs.iterator(chunk_size=EXPORT_CHUNK):
        item_a = dict(zip(item_fields, row[n_fixed : n_fixed + n_item], strict=True))
        item_b = dict(zip(item_fields, row[n_fixed + n_item :], strict=True))
        record = {
            "judgment_id": row[0],
            "campaign": campaign.slug,
            "pair_id": row[1],
            "prompt": row[8] or [],
            "prompt_id": row[9] or "",
            "item_a": item_a,
            "item_b": item_b,
            "choices": row[3],
            "shown_left": row[4],
            "annotator": pseudonyms[row[2]],
            "duration_ms": row[5],
            "status": row[6],
            "created_at": row[7].isoformat(),
        }
        yield _jsonl(record) + "\n"


def skip_export_lines(*, campaign: Campaign, up_to_id: int) -> Iterator[str]:
    qs = (
        Skip.objects.filter(campaign=campaign, id__lte=up_to_id)
        .order_by("id")
        .values_list(
            "id",
            "pair_id",
            "pair__item_a_id",
            "pair__item_b_id",
            "annotator_id",
            "reason",
            "created_at",
        )
    )
    pseudonyms = _pseudonyms()
    for sid, pair_id, a, b, annotator_id, reason, created_at in qs.iterator(
        chunk_size=EXPORT_CHUNK
    ):
        record = {
            "skip_id": sid,
            "campaign": campaign.slug,
            "pair_id": pair_id,
            "item_a": a,
            "item_b": b,
            "annotator": pseudonyms[annotator_id],
            "reason": reason,
            "created_at": created_at.isoformat(),
        }
        yield _jsonl(record) + "\n"

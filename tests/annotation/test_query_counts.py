"""Every page and list runs a fixed number of queries, whatever the number of rows: each is
measured on a small world, the world grows, and it is measured again. Also the plans of the
reads that run most often: the clip lookup is an index scan, the campaign lists' totals are
not recounted on every load."""

from __future__ import annotations

from collections.abc import Callable
from itertools import count

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.db import connection
from django.db.models import Count
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from annotation import selectors
from annotation.models import Assignment, CampaignRole, Item, Judgment, Pair, Skip
from labeling.models import AggregationState, ItemScore, PairLabel
from tests.factories import UserFactory, text_campaign

_serial = count()


class World:
    """Campaigns with pairs, leases, judgments, skips, scores and labels, one manager of
    them all, one annotator in them all; `grow` adds more of everything."""

    def __init__(self) -> None:
        self.annotator = UserFactory()
        self.manager = UserFactory(is_staff=True)
        self.manager.user_permissions.add(
            *Permission.objects.filter(
                content_type__app_label__in=["annotation", "labeling"],
                codename__startswith="view_",
            )
        )
        self.campaigns = []

    def grow(self, *, campaigns: int, prompts: int) -> None:
        for _ in range(campaigns):
            n = next(_serial)
            campaign = text_campaign(
                n_prompts=prompts,
                responses=3,
                k=3,
                members=[self.annotator],
                criteria=["overall", "honesty"],
                name=f"Counted {n}",
            )
            CampaignRole.objects.create(campaign=campaign, user=self.manager)
            self.campaigns.append(campaign)
            pairs = list(Pair.objects.filter(campaign=campaign).select_related("item_a"))
            others = UserFactory.create_batch(2)
            for user in others:
                campaign.members.add(user)
            assignments = Assignment.objects.bulk_create(
                Assignment(
                    pair=p,
                    annotator=user,
                    campaign=campaign,
                    status=Assignment.Status.DONE,
                    a_on_left=True,
                    expires_at="2000-01-01T00:00:00Z",
                )
                for p in pairs
                for user in (self.annotator, others[0])
            )
            Judgment.objects.bulk_create(
                Judgment(
                    pair=a.pair,
                    annotator=a.annotator,
                    campaign=campaign,
                    assignment=a,
                    choices={"overall": "a", "honesty": "tie"},
                    shown_left=a.pair.item_a,
                    created_at="2000-01-01T00:00:00Z",  # settled
                )
                for a in assignments
            )
            Skip.objects.bulk_create(
                Skip(pair=p, annotator=others[1], campaign=campaign, reason="unsure") for p in pairs
            )
            criteria = list(campaign.criteria.all())
            items = Item.objects.filter(campaign=campaign)
            ItemScore.objects.bulk_create(
                ItemScore(item=i, criterion=c, campaign=campaign, score=0.5, comparisons=2)
                for i in items
                for c in criteria
            )
            PairLabel.objects.bulk_create(
                PairLabel(pair=p, criterion=c, campaign=campaign, prefer_a=1.0, count=2)
                for p in pairs
                for c in criteria
            )
            AggregationState.objects.create(campaign=campaign, judgments_used=2 * len(pairs))


@pytest.fixture
def world(db, settings) -> World:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return World()


def queries(fetch: Callable[[], object]) -> list[str]:
    with CaptureQueriesContext(connection) as ctx:
        response = fetch()
    assert response.status_code == 200, getattr(response, "content", b"")[:500]
    return [q["sql"] for q in ctx.captured_queries]


def assert_flat(world: World, fetch: Callable[[], object]) -> None:
    """The queries `fetch` runs do not grow with the rows: few campaigns and pairs, then
    several times as many of both."""
    world.grow(campaigns=1, prompts=2)
    few = queries(fetch)
    world.grow(campaigns=4, prompts=8)
    many = queries(fetch)
    assert len(many) <= len(few), "\n\n".join(many)


def logged_in(client, user):
    client.force_login(user)
    return client


def api_as(user) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def test_annotator_home(world, client):
    logged_in(client, world.annotator)
    assert_flat(world, lambda: client.get("/"))


def test_staff_home_lists_every_campaign(world, client):
    superuser = UserFactory(is_staff=True, is_superuser=True)
    logged_in(client, superuser)
    assert_flat(world, lambda: client.get("/"))


def test_compare_page(world, client):
    """A fresh annotator each time, so each load leases a new pair in the newest campaign."""

    def fetch():
        user = UserFactory()
        campaign = world.campaigns[-1]
        campaign.members.add(user)
        return logged_in(client, user).get(reverse("annotation:compare", args=[campaign.slug]))

    assert_flat(world, fetch)


ADMIN_LISTS = [
    "annotation/campaign",
    "annotation/prompt",
    "annotation/item",
    "annotation/pair",
    "annotation/assignment",
    "annotation/judgment",
    "annotation/skip",
    "labeling/aggregationstate",
]


@pytest.mark.parametrize("who", ["manager", "superuser"])
@pytest.mark.parametrize("changelist", ADMIN_LISTS)
def test_admin_changelist(world, client, changelist, who):
    user = world.manager if who == "manager" else UserFactory(is_staff=True, is_superuser=True)
    logged_in(client, user)
    url = f"/admin/{changelist}/"
    assert_flat(world, lambda: client.get(url))
    shown = client.get(url).context["cl"].result_list
    assert len(shown) >= 5  # the lists do show the rows


def test_admin_campaign_filter_names_only_managed_campaigns(world, client):
    world.grow(campaigns=2, prompts=1)
    hidden = text_campaign(n_prompts=1, responses=2, name="Hidden elsewhere")
    body = logged_in(client, world.manager).get("/admin/annotation/pair/").content.decode()
    assert world.campaigns[0].name in body and hidden.name not in body


def test_api_campaign_list(world):
    api = api_as(world.annotator)
    assert_flat(world, lambda: api.get("/api/v1/campaigns/"))
    assert len(api.get("/api/v1/campaigns/").json()) == 5


@pytest.mark.parametrize("what", ["scores", "labels", "judgments"])
def test_api_campaign_pages(world, what):
    """Scores, labels and judgments of the newest campaign, which grows each time."""
    api = api_as(world.manager)

    def fetch():
        return api.get(f"/api/v1/campaigns/{world.campaigns[-1].slug}/{what}/?limit=1000")

    assert_flat(world, fetch)


# --- the campaign lists' totals ---------------------------------------------------------------


def test_list_totals_are_counted_once_per_period_not_per_load(world, client):
    world.grow(campaigns=2, prompts=3)
    logged_in(client, world.annotator)
    first = queries(lambda: client.get("/"))
    assert any('"annotation_pair"' in sql for sql in first)
    again = queries(lambda: client.get("/"))
    assert not any('"annotation_pair"' in sql for sql in again), again
    rows = client.get("/").context["campaigns"]
    assert [(r.totals.pairs, r.totals.judgments, r.mine) for r in rows] == [(9, 18, 9)] * 2

    # A new pair shows once the entry has expired; the annotator's own count at once.
    campaign = world.campaigns[0]
    a = Item.objects.filter(campaign=campaign).order_by("id").first()
    c = Item.objects.create(campaign=campaign, prompt=a.prompt, content="One more.")
    Pair.objects.create(campaign=campaign, item_a=a, item_b=c)
    by_slug = {r.campaign.slug: r for r in client.get("/").context["campaigns"]}
    assert by_slug[campaign.slug].totals.pairs == 9  # cached
    cache.delete(selectors._totals_key(campaign))  # what expiry does
    by_slug = {r.campaign.slug: r for r in client.get("/").context["campaigns"]}
    assert by_slug[campaign.slug].totals.pairs == 10


def test_list_totals_expire_after_the_period(world, monkeypatch):
    """The entry is stored for CAMPAIGN_TOTALS_SECONDS, and not at all with 0."""
    world.grow(campaigns=1, prompts=1)
    key = selectors._totals_key(world.campaigns[0])
    monkeypatch.setattr(selectors, "CAMPAIGN_TOTALS_SECONDS", 0)
    selectors.campaign_list_for(user=world.annotator)
    assert cache.get(key) is None
    monkeypatch.setattr(selectors, "CAMPAIGN_TOTALS_SECONDS", 45)
    selectors.campaign_list_for(user=world.annotator)
    assert cache.get(key) == (3, 6)
    ttl = cache._cache.get_client(key).ttl(cache.make_and_validate_key(key))
    assert 0 < ttl <= 45


def test_own_count_is_exact_and_index_only(world):
    """The annotator's own count per campaign reads judgment_by_annotator alone."""
    world.grow(campaigns=2, prompts=3)
    rows = selectors.campaign_list_for(user=world.annotator)
    assert [r.mine for r in rows] == [9, 9]
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE annotation_judgment")
    plan = (
        Judgment.objects.filter(annotator_id=world.annotator.pk)
        .values("campaign_id")
        .annotate(n=Count("*"))
        .explain()
    )
    assert "judgment_by_annotator" in plan, plan


# --- the clip lookup --------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["member", "superuser"])
def test_clip_lookup_is_an_index_scan(db, who):
    """The query the media view runs for each request of a clip, explained on PostgreSQL
    with 2,000 clips and fresh statistics: an index scan on item_clip, not a scan of
    every item."""
    member = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, members=[member])
    Item.objects.bulk_create(
        Item(campaign=campaign, clip=f"clips/{n:032x}.webm", episode=str(n)) for n in range(2000)
    )
    user = member if who == "member" else UserFactory(is_superuser=True, is_staff=True)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE annotation_item")
    name = f"clips/{1234:032x}.webm"
    with CaptureQueriesContext(connection) as ctx:
        item = selectors.clip_item_for(user=user, name=name)
    assert item is not None and item.clip.name == name
    (lookup,) = [q["sql"] for q in ctx.captured_queries if '"annotation_item"' in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + lookup)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "item_clip" in plan and "Seq Scan on annotation_item" not in plan, plan

"""Roles per campaign: a matrix of role x page or endpoint, one expected status per cell.

Roles: anonymous; an annotator (member) of the campaign; an annotator of another campaign;
a staff user with Django's model permissions but no role in the campaign; the campaign's
manager; its owner; a superuser. A campaign the user may not see answers 404, as if it did
not exist; one they annotate in but may not run answers 403.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from annotation import services
from annotation.models import Campaign, CampaignRole, Item, Prompt
from labeling.models import ExportSnapshot
from tests.factories import UserFactory, text_campaign

ROLES = ["anonymous", "annotator", "other_annotator", "staff_no_role", "manager", "owner", "super"]


@dataclass
class World:
    campaign: Campaign
    other: Campaign
    users: dict[str, Any]
    lease_id: int
    snapshot_id: int
    prompt_id: int
    new_items: tuple[int, int]


def _staff(username: str, *perms: str):
    user = UserFactory(username=username, is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="annotation", codename__in=perms)
    )
    return user


ADMIN_PERMS = ("view_campaign", "change_campaign", "delete_campaign", "view_judgment")


@pytest.fixture
def world(db, settings) -> World:
    # Seven users per cell: the default hasher would take most of the run.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    users = {
        "anonymous": None,
        "annotator": UserFactory(username="annotator"),
        "other_annotator": UserFactory(username="other-annotator"),
        # Every model permission, even to create campaigns, but no role in this one.
        "staff_no_role": _staff("staff-no-role", "add_campaign", *ADMIN_PERMS),
        # A manager without the global permission to create campaigns.
        "manager": _staff("manager", *ADMIN_PERMS),
        "owner": _staff("owner", "add_campaign", *ADMIN_PERMS),
        "super": UserFactory(username="root", is_staff=True, is_superuser=True),
    }
    campaign = text_campaign(n_prompts=2, responses=2, k=2, members=[users["annotator"]])
    other = text_campaign(n_prompts=1, responses=2, members=[users["other_annotator"]])
    services.campaign_role_set(
        campaign=campaign, user=users["manager"], role=CampaignRole.Role.MANAGER
    )
    services.campaign_role_set(campaign=campaign, user=users["owner"], role=CampaignRole.Role.OWNER)
    # The staff user runs the other campaign: a role there opens nothing here.
    services.campaign_role_set(
        campaign=other, user=users["staff_no_role"], role=CampaignRole.Role.OWNER
    )
    lease = services.assignment_lease_next(annotator=users["annotator"], campaign=campaign)
    snapshot = ExportSnapshot.objects.create(campaign=campaign, token=uuid.uuid4().hex)
    prompt = Prompt.objects.filter(campaign=campaign).first()
    a = Item.objects.create(campaign=campaign, prompt=prompt, content="New answer one.")
    b = Item.objects.create(campaign=campaign, prompt=prompt, content="New answer two.")
    return World(campaign, other, users, lease.pk, snapshot.pk, prompt.pk, (a.pk, b.pk))


# Expected status per role, in ROLES order.
ANON = 401
ANNOTATOR_ONLY = [ANON, 200, 404, 404, 403, 403, 403]  # managers are not in the lease pool
MANAGERS = [ANON, 403, 404, 404, 200, 200, 200]
LEASE_HOLDER = [ANON, 201, 403, 403, 403, 403, 403]


def _s(row: list[int], ok: int) -> list[int]:
    return [ok if code == 200 else code for code in row]


ENDPOINTS: dict[str, tuple[str, Any, Any, list[int]]] = {
    # name: (method, path(world), body(world), statuses)
    "campaign list": ("get", lambda w: "/api/v1/campaigns/", None, [ANON] + [200] * 6),
    "campaign create": (
        "post",
        lambda w: "/api/v1/campaigns/",
        lambda w: {"name": "New", "slug": "new-one"},
        [ANON, 403, 403, 201, 403, 201, 201],
    ),
    "members get": (
        "get",
        lambda w: f"/api/v1/campaigns/{w.campaign.slug}/members/",
        None,
        MANAGERS,
    ),
    "members add": (
        "post",
        lambda w: f"/api/v1/campaigns/{w.campaign.slug}/members/",
        lambda w: {"usernames": ["other-annotator"]},
        MANAGERS,
    ),
    "next": ("post", lambda w: f"/api/v1/campaigns/{w.campaign.slug}/next/", None, ANNOTATOR_ONLY),
    "prompts import": (
        "post",
        lambda w: f"/api/v1/campaigns/{w.campaign.slug}/prompts/",
        lambda w: [{"messages": [{"role": "user", "content": "Why?"}]}],
        _s(MANAGERS, 201),
    ),
    "items import": (
        "post",
        lambda w: f"/api/v1/campaigns/{w.campaign.slug}/items/",
        lambda w: [{"prompt": w.prompt_id, "content": "Because."}],
        _s(MANAGERS, 201),
    ),
    "pairs import": (
        "post",
        lambda w: f"/api/v1/campaigns/{w.campaign.slug}/pairs/",
        lambda w: [{"item_a": w.new_items[0], "item_b": w.new_items[1]}],
        _s(MANAGERS, 201),
    ),
    "scores": ("get", lambda w: f"/api/v1/campaigns/{w.campaign.slug}/scores/", None, MANAGERS),
    "labels": ("get", lambda w: f"/api/v1/campaigns/{w.campaign.slug}/labels/", None, MANAGERS),
    "judgments list": (
        "get",
        lambda w: f"/api/v1/campaigns/{w.campaign.slug}/judgments/",
        None,
        [ANON, 200, 404, 404, 200, 200, 200],
    ),
    "export judgments": (
        "get",
        lambda w: f"/api/v1/campaigns/{w.campaign.slug}/export/judgments.jsonl",
        None,
        MANAGERS,
    ),
    "export skips": (
        "get",
        lambda w: f"/api/v1/campaigns/{w.campaign.slug}/export/skips.jsonl",
        None,
        MANAGERS,
    ),
    "snapshot create": (
        "post",
        lambda w: f"/api/v1/campaigns/{w.campaign.slug}/exports/",
        None,
        _s(MANAGERS, 202),
    ),
    "snapshot get": ("get", lambda w: f"/api/v1/exports/{w.snapshot_id}/", None, MANAGERS),
    # Pending, so a manager gets 400 "not done": past the role check.
    "snapshot download": (
        "get",
        lambda w: f"/api/v1/exports/{w.snapshot_id}/download",
        None,
        _s(MANAGERS, 400),
    ),
    "judgment submit": (
        "post",
        lambda w: f"/api/v1/assignments/{w.lease_id}/judgment/",
        lambda w: {"choices": "left"},
        LEASE_HOLDER,
    ),
    "skip": (
        "post",
        lambda w: f"/api/v1/assignments/{w.lease_id}/skip/",
        lambda w: {"reason": "unclear"},
        LEASE_HOLDER,
    ),
    "renew": (
        "post",
        lambda w: f"/api/v1/assignments/{w.lease_id}/renew/",
        None,
        [ANON, 200, 403, 403, 403, 403, 403],
    ),
}

CELLS = [
    pytest.param(name, role, statuses[i], id=f"{name}-{role}")
    for name, (_, _, _, statuses) in ENDPOINTS.items()
    for i, role in enumerate(ROLES)
]


@pytest.mark.parametrize(("endpoint", "role", "expected"), CELLS)
def test_api_role_matrix(world, endpoint, role, expected):
    method, path, body, _ = ENDPOINTS[endpoint]
    client = APIClient()
    if world.users[role] is not None:
        client.force_authenticate(world.users[role])
    response = getattr(client, method)(path(world), body(world) if body else None, format="json")
    if response.streaming:
        # Read to the end: that closes the export's read transaction now, not at some
        # garbage collection during a later test.
        b"".join(response.streaming_content)
    assert response.status_code == expected, (endpoint, role, getattr(response, "data", None))


PAGES: dict[str, tuple[Any, list[int]]] = {
    # A manager who is not a member sees the page, with "not a member" and 403.
    "compare page": (lambda w: f"/c/{w.campaign.slug}/", [302, 200, 404, 404, 403, 403, 403]),
    # Anyone without is_staff is sent to the admin's login.
    "admin campaigns": (lambda w: "/admin/annotation/campaign/", [302, 302, 302] + [200] * 4),
    # An object outside the user's campaigns: the admin says it does not exist (a redirect).
    "admin campaign change": (
        lambda w: f"/admin/annotation/campaign/{w.campaign.pk}/change/",
        [302, 302, 302, 302, 200, 200, 200],
    ),
    # Deleting a campaign is for its owner.
    "admin campaign delete": (
        lambda w: f"/admin/annotation/campaign/{w.campaign.pk}/delete/",
        [302, 302, 302, 302, 403, 200, 200],
    ),
    "admin judgments": (lambda w: "/admin/annotation/judgment/", [302, 302, 302] + [200] * 4),
}

PAGE_CELLS = [
    pytest.param(name, role, statuses[i], id=f"{name}-{role}")
    for name, (_, statuses) in PAGES.items()
    for i, role in enumerate(ROLES)
]


@pytest.mark.parametrize(("page", "role", "expected"), PAGE_CELLS)
def test_page_role_matrix(world, client, page, role, expected):
    path, _ = PAGES[page]
    if world.users[role] is not None:
        client.force_login(world.users[role])
    response = client.get(path(world))
    assert response.status_code == expected, (page, role)


@pytest.mark.parametrize(
    ("role", "sees"),
    [
        ("annotator", {"campaign"}),
        ("other_annotator", {"other"}),
        ("staff_no_role", {"other"}),
        ("manager", {"campaign"}),
        ("owner", {"campaign"}),
        ("super", {"campaign", "other"}),
    ],
)
def test_campaign_lists_show_only_the_users_campaigns(world, client, role, sees):
    slugs = {"campaign": world.campaign.slug, "other": world.other.slug}
    expected = {slugs[s] for s in sees}
    api = APIClient()
    api.force_authenticate(world.users[role])
    assert {c["slug"] for c in api.get("/api/v1/campaigns/").data} == expected
    if world.users[role].is_staff:
        client.force_login(world.users[role])
        changelist = client.get("/admin/annotation/campaign/")
        shown = {c.slug for c in changelist.context["cl"].result_list}
        assert shown == expected


def test_the_creator_owns_the_campaign_and_managers_see_every_judgment(world):
    api = APIClient()
    api.force_authenticate(world.users["owner"])
    assert api.post("/api/v1/campaigns/", {"name": "Mine", "slug": "mine"}).status_code == 201
    role = CampaignRole.objects.get(campaign__slug="mine")
    assert (role.user, role.role) == (world.users["owner"], CampaignRole.Role.OWNER)

    annotator = APIClient()
    annotator.force_authenticate(world.users["annotator"])
    r = annotator.post(
        f"/api/v1/assignments/{world.lease_id}/judgment/", {"choices": "left"}, format="json"
    )
    assert r.status_code == 201
    from annotation.models import Judgment

    Judgment.objects.update(created_at="2000-01-01T00:00:00Z")  # settled
    url = f"/api/v1/campaigns/{world.campaign.slug}/judgments/"
    mine = annotator.get(url).data["results"]
    assert len(mine) == 1 and "annotator" not in mine[0]
    manager = APIClient()
    manager.force_authenticate(world.users["manager"])
    rows = manager.get(url).data["results"]
    assert len(rows) == 1 and rows[0]["annotator"].startswith("ann_")


def test_the_labeling_admin_shows_only_managed_campaigns(world, client):
    from django.contrib.auth.models import Permission

    from labeling.models import AggregationState

    AggregationState.objects.create(campaign=world.campaign)
    AggregationState.objects.create(campaign=world.other)
    world.users["manager"].user_permissions.add(
        Permission.objects.get(codename="view_aggregationstate")
    )
    for role, expected in (
        ("manager", {world.campaign.pk}),
        ("super", {world.campaign.pk, world.other.pk}),
    ):
        client.force_login(world.users[role])
        r = client.get("/admin/labeling/aggregationstate/")
        assert r.status_code == 200
        assert {s.campaign_id for s in r.context["cl"].result_list} == expected

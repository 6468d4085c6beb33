"""The per-process caches (feedback_app/process_cache.py): served from memory while the
listener vouches for them, dropped by the database's notification however a row changed, and
never served while the listener is down. Transactional tests: notifications need commits."""

from __future__ import annotations

import time

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import Campaign, Criterion
from feedback_app import process_cache
from tests.factories import UserFactory, text_campaign

pytestmark = pytest.mark.django_db(transaction=True)


def _changed_since(generation: int, timeout: float = 5.0) -> None:
    """Wait until the listener heard something after `generation` (a notification arrives
    within milliseconds of the commit; the tests wait for it rather than race it)."""
    deadline = time.monotonic() + timeout
    while process_cache.generation() == generation:
        assert time.monotonic() < deadline, "no notification arrived"
        time.sleep(0.005)


@pytest.fixture
def member():
    user = UserFactory()
    token = Token.objects.create(user=user)
    campaign = text_campaign(n_prompts=3, responses=2, k=2, members=[user])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert process_cache.wait_for_listener()
    return user, token, campaign, client


def _statements(client: APIClient, path: str, body: dict | None = None) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as ctx:
        r = client.post(path, body or {}, format="json")
    return r.status_code, [q["sql"] for q in ctx.captured_queries]


def test_second_request_reads_no_token_campaign_or_criteria(member):
    user, token, campaign, client = member
    path = f"/api/v1/campaigns/{campaign.slug}/next/"
    code, first = _statements(client, path)
    assert code == 200
    assert any("authtoken_token" in sql for sql in first)
    code, second = _statements(client, path)  # the lease already held
    assert code == 200
    assert not any("authtoken_token" in sql for sql in second), second
    assert not any('FROM "annotation_campaign"' in sql for sql in second), second
    assert not any("annotation_criterion" in sql for sql in second), second


@pytest.mark.parametrize("how", ["save", "queryset update", "raw sql"])
def test_deactivated_user_is_refused_at_once_however_written(member, how):
    user, token, campaign, client = member
    path = f"/api/v1/campaigns/{campaign.slug}/next/"
    assert client.post(path).status_code == 200
    assert client.post(path).status_code == 200  # served from the cache now
    before = process_cache.generation()
    if how == "save":
        user.is_active = False
        user.save()
    elif how == "queryset update":
        type(user).objects.filter(pk=user.pk).update(is_active=False)
    else:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE auth_user SET is_active = false WHERE id = %s", [user.pk])
    _changed_since(before)
    r = client.post(path)
    assert r.status_code == 401, r.content


def test_revoked_token_is_refused(member):
    user, token, campaign, client = member
    path = f"/api/v1/campaigns/{campaign.slug}/next/"
    assert client.post(path).status_code == 200
    before = process_cache.generation()
    Token.objects.filter(pk=token.pk).delete()
    _changed_since(before)
    assert client.post(path).status_code == 401


def test_new_criterion_shows_in_the_next_lease(member):
    user, token, campaign, client = member
    path = f"/api/v1/campaigns/{campaign.slug}/next/"
    first = client.post(path).json()
    assert first["criteria"] == ["overall"]
    client.post(f"/api/v1/assignments/{first['assignment']}/skip/", {}, format="json")
    before = process_cache.generation()
    Criterion.objects.create(campaign=campaign, slug="honest", label="Honest", position=5)
    _changed_since(before)
    assert client.post(path).json()["criteria"] == ["overall", "honest"]


def test_renamed_campaign_is_not_found_by_its_old_slug(member):
    user, token, campaign, client = member
    old = f"/api/v1/campaigns/{campaign.slug}/next/"
    assert client.post(old).status_code == 200
    before = process_cache.generation()
    Campaign.objects.filter(pk=campaign.pk).update(slug="renamed")
    _changed_since(before)
    assert client.post(old).status_code == 404
    assert client.post("/api/v1/campaigns/renamed/next/").status_code == 200


def test_nothing_is_served_while_the_listener_is_down(member):
    """Changes made while nobody listens would be missed: with the listener's connection
    gone, every request reads the database until it is back, and entries read before are
    never served again."""
    user, token, campaign, client = member
    path = f"/api/v1/campaigns/{campaign.slug}/next/"
    assert client.post(path).status_code == 200
    before = process_cache.generation()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'feedback-cache-listener' AND datname = current_database()"
        )
    _changed_since(before)
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    assert client.post(path).status_code == 401
    type(user).objects.filter(pk=user.pk).update(is_active=True)
    assert client.post(path).status_code == 200
    assert process_cache.wait_for_listener()  # back, and serving again


def test_caches_are_bypassed_inside_a_transaction(member):
    """A transaction reads its own snapshot; its uncommitted writes notify nobody."""
    user, token, campaign, client = member
    path = f"/api/v1/campaigns/{campaign.slug}/next/"
    assert client.post(path).status_code == 200
    with transaction.atomic():
        type(user).objects.filter(pk=user.pk).update(is_active=False)
        assert client.post(path).status_code == 401
        transaction.set_rollback(True)
    assert client.post(path).status_code == 200

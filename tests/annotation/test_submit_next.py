"""One request per judgment: a submit with "next": true answers the next lease too."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotation.models import Assignment, Judgment
from tests.annotation.test_api import as_user
from tests.factories import UserFactory, text_campaign

pytestmark = pytest.mark.django_db


def _judge(api, lease_id, **extra):
    return api.post(
        f"/api/v1/assignments/{lease_id}/judgment/", {"choices": "left", **extra}, format="json"
    )


def test_an_annotator_judges_a_whole_campaign_one_request_per_judgment(api):
    user = UserFactory()
    campaign = text_campaign(n_prompts=3, responses=3, k=1, members=[user])  # 9 pairs
    as_user(api, user)
    lease = api.post(f"/api/v1/campaigns/{campaign.slug}/next/").json()
    seen = {lease["assignment"]}
    for _ in range(8):
        r = _judge(api, lease["assignment"], next=True)
        assert r.status_code == 201, r.content
        body = r.json()
        assert body["choices"] == {"overall": "left"}
        lease = body["next"]
        # The same shape as POST next/ answers, for a lease that is live and not judged.
        assert set(lease) == {"assignment", "expires_at", "prompt", "left", "right", "criteria"}
        assert lease["assignment"] not in seen
        seen.add(lease["assignment"])
        held = Assignment.objects.get(pk=lease["assignment"])
        assert held.status == Assignment.Status.OPEN and held.annotator_id == user.pk
    last = _judge(api, lease["assignment"], next=True)
    assert last.status_code == 201
    assert last.json()["next"] is None
    assert last.json()["next_detail"] == "Nothing is left for you in this campaign."
    assert Judgment.objects.filter(annotator=user).count() == 9
    assert len({j.pair_id for j in Judgment.objects.filter(annotator=user)}) == 9


def test_without_the_flag_the_answer_is_as_before(api):
    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=3, k=1, members=[user])
    as_user(api, user)
    lease = api.post(f"/api/v1/campaigns/{campaign.slug}/next/").json()
    r = _judge(api, lease["assignment"])
    assert r.status_code == 201 and set(r.json()) == {"judgment", "choices"}
    assert not Assignment.objects.filter(status=Assignment.Status.OPEN).exists()


def test_a_refused_submit_leases_nothing(api):
    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=3, k=1, members=[user])
    as_user(api, user)
    lease = api.post(f"/api/v1/campaigns/{campaign.slug}/next/").json()
    r = api.post(
        f"/api/v1/assignments/{lease['assignment']}/judgment/",
        {"choices": "sideways", "next": True},
        format="json",
    )
    assert r.status_code == 400 and r.json()["field"] == "choices.overall"
    assert Assignment.objects.filter(status=Assignment.Status.OPEN).count() == 1


def test_a_bad_flag_is_a_clear_400(api):
    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, k=1, members=[user])
    as_user(api, user)
    lease = api.post(f"/api/v1/campaigns/{campaign.slug}/next/").json()
    r = _judge(api, lease["assignment"], next="perhaps")
    assert r.status_code == 400 and r.json()["field"] == "next"
    assert not Judgment.objects.exists()


def test_statements_per_judgment_stay_few(api):
    """The loop's SQL, counted inside a test transaction (so the per-process caches are
    bypassed and the token, campaign and criteria reads are counted too): a regression
    guard on the lean path, not a timing."""
    user = UserFactory()
    campaign = text_campaign(n_prompts=4, responses=3, k=2, members=[user])
    as_user(api, user)
    lease = api.post(f"/api/v1/campaigns/{campaign.slug}/next/").json()
    with CaptureQueriesContext(connection) as ctx:
        r = _judge(api, lease["assignment"], next=True)
    assert r.status_code == 201 and r.json()["next"] is not None
    statements = [q["sql"] for q in ctx.captured_queries]
    # Submit: token 1, lease 1, campaign 1, criteria 1, lock + fresh read + write 3; lease:
    # membership lock, held, candidate with its items, fresh read, write 5, criteria 1; and
    # the test transaction's two savepoints. With warm caches (tests/test_process_cache.py)
    # the token, campaign and criteria reads go.
    assert len(statements) <= 17, "\n".join(statements)

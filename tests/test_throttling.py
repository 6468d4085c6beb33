"""Rate limits: each limit answers 429 once passed, is off when its rate is empty, and spares
the trusted group."""

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from rest_framework.authtoken.models import Token

from feedback_app.throttling import rate_parse
from tests.factories import UserFactory, text_campaign


@pytest.fixture
def limits(settings):
    """A fresh in-process cache, and every scope off until a test sets it."""
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "t"}
    }
    settings.THROTTLE_RATES = {"api": "", "judgments": "", "login": ""}
    return settings.THROTTLE_RATES


def test_rates_parse_and_bad_rates_are_named():
    assert rate_parse("120/min").count == 120 and rate_parse("120/min").seconds == 60
    assert rate_parse("10/15min").seconds == 900 and rate_parse("5000/d").seconds == 86400
    assert rate_parse("") is None
    with pytest.raises(ValueError, match="not a rate"):
        rate_parse("lots")


def _api(client, user):
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.mark.django_db
def test_token_api_use_is_limited_per_user(api, limits):
    limits["api"] = "3/min"
    user, other = UserFactory.create_batch(2)
    _api(api, user)
    codes = [api.get("/api/v1/campaigns/").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = api.get("/api/v1/campaigns/")
    assert r.status_code == 429 and int(r["Retry-After"]) > 0 and r.json()["error"] == "throttled"
    assert _api(api, other).get("/api/v1/campaigns/").status_code == 200  # per user


@pytest.mark.django_db
def test_judgments_are_limited_per_annotator_in_the_api_and_the_page(api, client, limits):
    limits["judgments"] = "2/min"
    user = UserFactory()
    campaign = text_campaign(n_prompts=4, responses=2, k=1, members=[user])
    _api(api, user)
    codes = []
    for _ in range(3):
        lease = api.post(f"/api/v1/campaigns/{campaign.slug}/next/").json()
        r = api.post(
            f"/api/v1/assignments/{lease['assignment']}/judgment/",
            {"choices": "left"},
            format="json",
        )
        codes.append(r.status_code)
    assert codes == [201, 201, 429]
    # The page counts in the same scope: the third judgment is refused there too.
    client.force_login(user)
    client.get(f"/c/{campaign.slug}/")
    from annotation.models import Assignment, Judgment

    lease = Assignment.objects.filter(annotator=user, status="open").latest("id")
    r = client.post(reverse("annotation:judge", args=[campaign.slug, lease.pk]), {"choice": "left"})
    assert r.status_code == 429 and b"Too many judgments" in r.content
    assert Judgment.objects.filter(annotator=user).count() == 2


@pytest.mark.django_db
def test_the_trusted_group_is_not_limited(api, limits, settings):
    limits["api"] = "1/min"
    user = UserFactory()
    user.groups.add(Group.objects.create(name=settings.THROTTLE_EXEMPT_GROUP))
    _api(api, user)
    assert [api.get("/api/v1/campaigns/").status_code for _ in range(3)] == [200, 200, 200]


@pytest.mark.django_db
def test_failed_sign_ins_lock_the_username_and_the_address(client, limits):
    limits["login"] = "3/15min"
    UserFactory(username="ann")  # password "pw"
    for _ in range(3):
        r = client.post("/accounts/login/", {"username": "ann", "password": "guess"})
        assert r.status_code == 200
    r = client.post("/accounts/login/", {"username": "ann", "password": "pw"})
    assert r.status_code == 429 and b"Too many failed sign-in attempts" in r.content
    assert "_auth_user_id" not in client.session  # even the right password is refused now
    # Another username from the same address is refused too: the address is counted.
    UserFactory(username="bob")
    r = client.post("/accounts/login/", {"username": "bob", "password": "pw"})
    assert r.status_code == 429


@pytest.mark.django_db
def test_limits_switched_off_never_refuse(api, limits):
    user = UserFactory()
    _api(api, user)
    assert {api.get("/api/v1/campaigns/").status_code for _ in range(20)} == {200}


@pytest.mark.django_db
def test_the_admin_signs_in_through_the_limited_login(client):
    r = client.get("/admin/")
    assert r.status_code == 302
    r = client.get(r["Location"])
    assert r.status_code == 302 and r["Location"].startswith("/accounts/login/?next=/admin/")

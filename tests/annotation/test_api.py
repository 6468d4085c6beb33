import json

import pytest
from django.test import override_settings
from rest_framework.authtoken.models import Token

from annotation.models import Campaign, Item, Judgment, Pair, Prompt
from tests.factories import UserFactory, text_campaign


def as_user(api, user):
    token, _ = Token.objects.get_or_create(user=user)
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return api


@pytest.mark.django_db
def test_annotator_loop_over_the_api(api):
    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, k=1, members=[user])
    as_user(api, user)
    lease = api.post(f"/api/v1/campaigns/{campaign.slug}/next/").json()
    assert lease["prompt"][0]["role"] == "user"
    # The lease, the prompt and the sides, nothing else: no item or pair ids (import order),
    # no source, external id or metadata.
    assert set(lease) == {"assignment", "expires_at", "prompt", "left", "right", "criteria"}
    assert set(lease["left"]) == set(lease["right"]) == {"content"}
    r = api.post(
        f"/api/v1/assignments/{lease['assignment']}/judgment/",
        {"choices": {"overall": "left"}},
        format="json",
    )
    assert r.status_code == 201
    assert set(r.json()) == {"judgment", "choices"}
    assert r.json()["choices"] == {"overall": "left"}  # as shown, not the stored orientation
    judgment = Judgment.objects.get()
    shown_left = lease["left"]["content"]
    assert judgment.choices == {
        "overall": "a" if judgment.pair.item_a.content == shown_left else "b"
    }
    mine = api.get(f"/api/v1/campaigns/{campaign.slug}/judgments/?after=0")
    for row in mine.json()["results"]:
        assert set(row) == {"id", "choices", "duration_ms", "status", "created_at"}
    dup = api.post(
        f"/api/v1/assignments/{lease['assignment']}/judgment/", {"choices": "right"}, format="json"
    )
    assert dup.status_code == 409 and dup.json()["judgment_id"] == r.json()["judgment"]
    assert api.post(f"/api/v1/campaigns/{campaign.slug}/next/").status_code == 204


@pytest.mark.django_db
def test_foreign_lease_and_bad_choice_get_clear_errors(api):
    a, b = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=1, responses=2, k=2, members=[a, b])
    lease = as_user(api, a).post(f"/api/v1/campaigns/{campaign.slug}/next/").json()
    r = as_user(api, b).post(
        f"/api/v1/assignments/{lease['assignment']}/judgment/", {"choices": "left"}, format="json"
    )
    assert r.status_code == 403 and "another annotator" in r.json()["detail"]
    r = as_user(api, a).post(
        f"/api/v1/assignments/{lease['assignment']}/judgment/",
        {"choices": {"overall": "up"}},
        format="json",
    )
    assert r.status_code == 400 and r.json()["field"] == "choices.overall"
    r = api.post(
        f"/api/v1/assignments/{lease['assignment']}/judgment/",
        data="{not json",
        content_type="application/json",
    )
    assert r.status_code == 400 and r.json()["error"] == "malformed_json"
    r = api.post("/api/v1/assignments/999999/judgment/", {"choices": "left"}, format="json")
    assert r.status_code == 404 and r.json()["field"] == "assignment"
    assert Judgment.objects.count() == 0


@pytest.mark.django_db
def test_staff_builds_a_campaign_from_json(api, staff):
    as_user(api, staff)
    r = api.post(
        "/api/v1/campaigns/",
        {
            "name": "Helpfulness",
            "slug": "helpful",
            "status": "active",
            "criteria": [{"slug": "helpful"}, {"slug": "harmless"}],
        },
        format="json",
    )
    assert r.status_code == 201, r.json()
    assert [c["slug"] for c in r.json()["criteria"]] == ["helpful", "harmless"]
    r = api.post(
        "/api/v1/campaigns/helpful/prompts/",
        [
            {"external_id": "q1", "prompt": "What is 2+2?"},
            {
                "external_id": "q2",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                ],
            },
        ],
        format="json",
    )
    assert r.status_code == 201 and r.json()["created"] == 2
    assert Prompt.objects.get(external_id="q1").messages == [
        {"role": "user", "content": "What is 2+2?"}
    ]
    r = api.post(
        "/api/v1/campaigns/helpful/items/",
        {
            "rows": [
                {"external_id": "q1-a", "prompt": "q1", "content": "4", "source": "m1"},
                {"external_id": "q1-b", "prompt": "q1", "content": "5", "source": "m2"},
                {"external_id": "q2-a", "prompt": "q2", "content": "Hello"},
            ]
        },
        format="json",
    )
    assert r.status_code == 201
    r = api.post(
        "/api/v1/campaigns/helpful/pairs/", [{"item_a": "q1-b", "item_b": "q1-a"}], format="json"
    )
    assert r.status_code == 201
    pair = Pair.objects.get()
    assert pair.item_a.external_id == "q1-a"  # canonical order by id
    annotator = UserFactory(username="ann")
    r = api.post("/api/v1/campaigns/helpful/members/", {"usernames": ["ann"]}, format="json")
    assert r.json()["members"] == [{"id": annotator.pk, "username": "ann"}]
    r = api.post("/api/v1/campaigns/helpful/members/", {"usernames": ["nobody"]}, format="json")
    assert r.status_code == 400 and "nobody" in r.json()["detail"]


@pytest.mark.django_db
def test_bulk_import_is_atomic_and_names_the_bad_row(api, staff):
    campaign = text_campaign(n_prompts=1, responses=2)
    as_user(api, staff)
    prompt = Prompt.objects.get()
    rows = [
        {"prompt": prompt.pk, "content": "fine"},
        {"prompt": prompt.pk, "content": "ok"},
        {"prompt": "missing-prompt", "content": "bad"},
    ]
    before = Item.objects.count()
    r = api.post(f"/api/v1/campaigns/{campaign.slug}/items/", rows, format="json")
    assert r.status_code == 400
    assert r.json()["field"] == "rows[2].prompt" and "missing-prompt" in r.json()["detail"]
    assert Item.objects.count() == before
    items = list(Item.objects.all())
    other_prompt_item = Item.objects.create(
        campaign=campaign,
        prompt=Prompt.objects.create(
            campaign=campaign, messages=[{"role": "user", "content": "x"}]
        ),
        content="y",
    )
    r = api.post(
        f"/api/v1/campaigns/{campaign.slug}/pairs/",
        [{"item_a": items[0].pk, "item_b": other_prompt_item.pk}],
        format="json",
    )
    assert (
        r.status_code == 400
        and r.json()["field"] == "rows[0]"
        and "same prompt" in r.json()["detail"]
    )
    r = api.post(
        f"/api/v1/campaigns/{campaign.slug}/pairs/",
        [{"item_a": items[0].pk, "item_b": items[1].pk}],
        format="json",
    )
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    r = api.post(
        f"/api/v1/campaigns/{campaign.slug}/prompts/",
        [{"messages": [{"role": "wizard", "content": "x"}]}],
        format="json",
    )
    assert r.json()["field"] == "rows[0].messages[0].role"


@pytest.mark.django_db
@override_settings(IMPORT_MAX_ROWS=3, IMPORT_MAX_BYTES=2000)
def test_bulk_import_limits(api, staff):
    campaign = text_campaign(n_prompts=1, responses=2)
    as_user(api, staff)
    r = api.post(
        f"/api/v1/campaigns/{campaign.slug}/prompts/", [{"prompt": "x"}] * 4, format="json"
    )
    assert r.status_code == 400 and "limit is 3" in r.json()["detail"]
    r = api.post(
        f"/api/v1/campaigns/{campaign.slug}/prompts/", [{"prompt": "x" * 3000}], format="json"
    )
    assert r.status_code == 413 and r.json()["field"] == "body"
    assert Prompt.objects.count() == 1


@pytest.mark.django_db
def test_annotators_see_only_their_own_judgments_and_no_staff_endpoints(api, staff):
    a, b = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=2, responses=2, k=2, members=[a, b])
    for user in (a, b):
        as_user(api, user)
        lease = api.post(f"/api/v1/campaigns/{campaign.slug}/next/").json()
        api.post(
            f"/api/v1/assignments/{lease['assignment']}/judgment/",
            {"choices": "left"},
            format="json",
        )
    with override_settings(JUDGMENT_SETTLE_SECONDS=0):
        rows = (
            as_user(api, a).get(f"/api/v1/campaigns/{campaign.slug}/judgments/").json()["results"]
        )
        assert len(rows) == 1 and rows[0]["id"] == Judgment.objects.get(annotator=a).pk
        assert (
            as_user(api, staff)
            .get(f"/api/v1/campaigns/{campaign.slug}/judgments/")
            .json()["results"]
            .__len__()
            == 2
        )
    as_user(api, a)
    for path in ("export/judgments.jsonl", "scores/", "labels/", "members/"):
        assert api.get(f"/api/v1/campaigns/{campaign.slug}/{path}").status_code == 403
    assert (
        api.post(f"/api/v1/campaigns/{campaign.slug}/prompts/", [], format="json").status_code
        == 403
    )
    outsider = UserFactory()
    assert (
        as_user(api, outsider).post(f"/api/v1/campaigns/{campaign.slug}/next/").status_code == 404
    )


@pytest.mark.django_db
def test_judgment_cursor_pages_by_id_and_holds_back_unsettled_rows(api, staff):
    users = UserFactory.create_batch(5)
    campaign = text_campaign(n_prompts=1, responses=2, k=5, members=users)
    for user in users:
        lease = as_user(api, user).post(f"/api/v1/campaigns/{campaign.slug}/next/").json()
        api.post(
            f"/api/v1/assignments/{lease['assignment']}/judgment/",
            {"choices": "tie"},
            format="json",
        )
    as_user(api, staff)
    url = f"/api/v1/campaigns/{campaign.slug}/judgments/"
    assert api.get(url).json()["results"] == []  # just committed: not settled yet
    with override_settings(JUDGMENT_SETTLE_SECONDS=0):
        page1 = api.get(url, {"limit": 2}).json()
        page2 = api.get(url, {"limit": 2, "after": page1["next_after"]}).json()
        page3 = api.get(url, {"limit": 2, "after": page2["next_after"]}).json()
    ids = [r["id"] for r in page1["results"] + page2["results"] + page3["results"]]
    assert ids == sorted(Judgment.objects.values_list("id", flat=True))
    r = api.get(url, {"limit": "many"})
    assert r.status_code == 400 and r.json()["field"] == "limit"


@pytest.mark.django_db
def test_openapi_schema_and_docs_page_load_nothing_from_a_cdn(client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200 and b"/api/v1/campaigns/{slug}/next/" in schema.content
    docs = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in docs
    for marker in ("cdn.", "unpkg.com", "jsdelivr"):
        assert marker not in docs


@pytest.mark.django_db
def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok", "broker": "ok"}


@pytest.mark.django_db
def test_campaign_list_is_scoped(api, staff):
    a = UserFactory()
    mine = text_campaign(n_prompts=1, responses=2, members=[a])
    text_campaign(n_prompts=1, responses=2)
    slugs = [c["slug"] for c in as_user(api, a).get("/api/v1/campaigns/").json()]
    assert slugs == [mine.slug]
    assert len(as_user(api, staff).get("/api/v1/campaigns/").json()) == Campaign.objects.count()
    r = as_user(api, a).post("/api/v1/campaigns/", {"name": "x", "slug": "x"}, format="json")
    assert r.status_code == 403
    r = as_user(api, staff).post(
        "/api/v1/campaigns/", {"name": "x", "slug": "bad slug!"}, format="json"
    )
    assert r.status_code == 400 and r.json()["field"] == "slug"
    assert json.dumps(r.json())


@pytest.mark.django_db
def test_malformed_references_and_values_are_400s_naming_the_field(api, staff):
    campaign = text_campaign(n_prompts=1, responses=2)
    as_user(api, staff)
    r = api.post(
        f"/api/v1/campaigns/{campaign.slug}/items/",
        [{"prompt": ["q1"], "content": "x"}],
        format="json",
    )
    assert r.status_code == 400 and r.json()["field"] == "rows[0].prompt"
    r = api.post(
        f"/api/v1/campaigns/{campaign.slug}/pairs/",
        [{"item_a": {"id": 1}, "item_b": 2}],
        format="json",
    )
    assert r.status_code == 400 and r.json()["field"] == "rows[0].item_a"
    r = api.post(
        "/api/v1/campaigns/", {"name": "x", "slug": "no-prior", "l2_prior": 0}, format="json"
    )
    assert r.status_code == 400 and r.json()["field"] == "l2_prior"
    user = UserFactory()
    campaign.members.add(user)
    lease = as_user(api, user).post(f"/api/v1/campaigns/{campaign.slug}/next/").json()
    r = api.post(
        f"/api/v1/assignments/{lease['assignment']}/judgment/",
        {"choices": "left", "duration_ms": 10**12},
        format="json",
    )
    assert r.status_code == 400 and r.json()["field"] == "duration_ms"
    assert Judgment.objects.count() == 0


@pytest.mark.django_db
def test_a_campaign_chooses_its_pair_order_and_lease_life(api, staff):
    as_user(api, staff)
    r = api.post(
        "/api/v1/campaigns/",
        {"name": "x", "slug": "ordered", "pair_order": "sideways"},
        format="json",
    )
    assert r.status_code == 400 and r.json()["field"] == "pair_order"
    r = api.post(
        "/api/v1/campaigns/",
        {"name": "x", "slug": "ordered", "pair_order": "complete_first", "lease_max_seconds": 900},
        format="json",
    )
    assert r.status_code == 201
    assert (r.json()["pair_order"], r.json()["lease_max_seconds"]) == ("complete_first", 900)
    assert Campaign.objects.get(slug="ordered").pair_order == "complete_first"


@pytest.mark.django_db
def test_annotators_choose_sides_not_the_stored_orientation(api):
    """An annotator cannot know which side is the pair's "a" (that would reveal import
    order), so "a"/"b" from an annotator is a blind vote: refused, naming the field."""
    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, k=1, members=[user])
    as_user(api, user)
    lease = api.post(f"/api/v1/campaigns/{campaign.slug}/next/").json()
    for blind in ("a", "b"):
        r = api.post(
            f"/api/v1/assignments/{lease['assignment']}/judgment/",
            {"choices": {"overall": blind}},
            format="json",
        )
        assert r.status_code == 400 and r.json()["field"] == "choices.overall"
        assert "left, right, tie, both_bad" in r.json()["detail"]
    assert not Judgment.objects.exists()

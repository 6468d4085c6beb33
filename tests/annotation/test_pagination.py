"""Scores and labels come in keyset pages: every row exactly once, also while a refit
replaces every row between two pages; a `next` link until the last page; bad paging
parameters answered with a 400 that names the parameter."""

from __future__ import annotations

import random

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from annotation.models import Judgment, Pair
from labeling.models import ItemScore, PairLabel
from labeling.services.aggregation import aggregation_run
from tests.factories import UserFactory, text_campaign

PAGED = {
    "scores": ("scores", lambda r: (r["item"], r["criterion"])),
    "labels": ("labels", lambda r: (r["pair"], r["criterion"])),
}


def judge(campaign, pairs, users, rng) -> None:
    Judgment.objects.bulk_create(
        Judgment(
            pair=pair,
            annotator=user,
            campaign=campaign,
            choices={"overall": rng.choice("ab"), "honesty": rng.choice(["a", "b", "tie"])},
            shown_left=pair.item_a,
        )
        for pair in pairs
        for user in users
    )


@pytest.fixture
def judged(db, staff):
    """A campaign of 20 prompts x 4 responses (120 pairs), two criteria, judged twice and
    aggregated: 160 scores and 240 labels."""
    rng = random.Random(5)
    campaign = text_campaign(n_prompts=20, responses=4, k=3, criteria=["overall", "honesty"])
    pairs = list(Pair.objects.filter(campaign=campaign).select_related("item_a").order_by("id"))
    judge(campaign, pairs, UserFactory.create_batch(2), rng)
    aggregation_run(campaign_id=campaign.pk)
    api = APIClient()
    api.force_authenticate(staff)
    return campaign, api, pairs


def page_through(api, url, what, limit, between=None):
    """Follow `next` from the first page; returns the rows and the number of pages."""
    rows, pages, link = [], 0, f"{url}?limit={limit}"
    while link:
        response = api.get(link)
        assert response.status_code == 200, response.content
        body = response.json()
        rows += body[what]
        pages += 1
        assert len(body[what]) <= limit
        link = body["next"]
        if between and pages == 1:
            between()
    return rows, pages


@pytest.mark.parametrize("endpoint", PAGED)
def test_every_row_exactly_once_in_key_order(judged, endpoint):
    campaign, api, _ = judged
    what, key = PAGED[endpoint]
    url = f"/api/v1/campaigns/{campaign.slug}/{endpoint}/"
    stored = (
        ItemScore.objects.values_list("item_id", "criterion__slug")
        if endpoint == "scores"
        else PairLabel.objects.values_list("pair_id", "criterion__slug")
    ).filter(campaign=campaign)
    expected = {(a, slug) for a, slug in stored}
    assert len(expected) == (160 if endpoint == "scores" else 240)
    for limit in (1, 7, 50, len(expected), 1000):
        rows, pages = page_through(api, url, what, limit)
        keys = [key(r) for r in rows]
        assert len(keys) == len(set(keys)) == len(expected) and set(keys) == expected
        assert pages == -(-len(expected) // limit)  # no empty page at the end
    # In key order: by item (or pair) id, then by criterion id.
    criterion_ids = dict(campaign.criteria.values_list("slug", "id"))
    assert keys == sorted(keys, key=lambda k: (k[0], criterion_ids[k[1]]))


@pytest.mark.parametrize("endpoint", PAGED)
def test_a_refit_between_pages_loses_and_repeats_nothing(judged, endpoint):
    """A refit rewrites the score and label rows between the first page and the second
    (the values change; the aggregation writes rows in place, so ids need not); the page key
    is (item or pair, criterion), not a row id or a value, so the pass still has every key
    once."""
    campaign, api, pairs = judged
    what, key = PAGED[endpoint]
    url = f"/api/v1/campaigns/{campaign.slug}/{endpoint}/"
    before = dict(ItemScore.objects.filter(campaign=campaign).values_list("id", "score"))

    def refit():
        judge(campaign, pairs, UserFactory.create_batch(1), random.Random(9))
        aggregation_run(campaign_id=campaign.pk)
        after = dict(ItemScore.objects.filter(campaign=campaign).values_list("id", "score"))
        assert sum(after.get(pk) != score for pk, score in before.items()) > len(before) // 2

    rows, pages = page_through(api, url, what, 30, between=refit)
    keys = [key(r) for r in rows]
    assert pages > 2 and len(keys) == len(set(keys)) == (160 if endpoint == "scores" else 240)


def test_scores_page_carries_the_fit_state(judged):
    campaign, api, _ = judged
    body = api.get(f"/api/v1/campaigns/{campaign.slug}/scores/?limit=5").json()
    assert body["judgments_used"] == 240 and body["updated_at"] is not None
    # The prior's strength, chosen from the judgments (the campaign sets none).
    assert set(body["fit_l2"]) == {"overall", "honesty"}
    assert all(value > 0 for value in body["fit_l2"].values())
    assert body["next"].startswith("http://testserver/api/v1/campaigns/")
    assert "after_item=" in body["next"] and "after_criterion=" in body["next"]


@pytest.mark.parametrize(
    "query, field, says",
    [
        ("limit=0", "limit", "between 1 and 10000"),
        ("limit=10001", "limit", "between 1 and 10000"),
        ("limit=ten", "limit", "must be an integer"),
        ("after_item=x", "after_item", "must be an integer"),
        ("after_item=-1", "after_item", "between 0 and"),
        ("after_criterion=1.5", "after_criterion", "must be an integer"),
        ("after_pair=1", None, None),  # not a parameter of scores: ignored
    ],
)
def test_bad_paging_parameters_get_a_clear_400(judged, query, field, says):
    campaign, api, _ = judged
    response = api.get(f"/api/v1/campaigns/{campaign.slug}/scores/?{query}")
    if field is None:
        assert response.status_code == 200
        return
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == field and says in body["detail"], body


def test_labels_name_their_own_parameters(judged):
    campaign, api, _ = judged
    response = api.get(f"/api/v1/campaigns/{campaign.slug}/labels/?after_pair=zero")
    assert response.status_code == 400 and response.json()["field"] == "after_pair"


def test_a_deep_page_reads_from_the_key_on(judged):
    """The page query starts the page index at the key (an index condition), so a page
    deep in the campaign does not read the rows before it."""
    campaign, api, _ = judged
    last = ItemScore.objects.filter(campaign=campaign).order_by("item_id").last()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
    url = f"/api/v1/campaigns/{campaign.slug}/scores/?after_item={last.item_id - 3}&limit=5"
    with CaptureQueriesContext(connection) as ctx:
        assert api.get(url).status_code == 200
    (page,) = [q["sql"] for q in ctx.captured_queries if '"labeling_itemscore"' in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + page)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "item_score_page" in plan and "Index Cond: (" in plan, plan
    assert f"item_id >= {last.item_id - 3}" in plan, plan


def test_schema_describes_the_paging(client):
    schema = client.get("/api/schema/").content.decode()
    for name in ("after_item", "after_pair", "after_criterion"):
        assert f"name: {name}" in schema
    assert "The next page; null on the last." in schema

import json

import datasets
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from annotation import selectors, services
from annotation.models import Judgment, Pair, Skip
from tests.factories import UserFactory, text_campaign


def bulk_judgments(campaign, users):
    pairs = list(Pair.objects.filter(campaign=campaign).order_by("id"))
    rows = []
    for n, pair in enumerate(pairs):
        for m, user in enumerate(users):
            rows.append(
                Judgment(
                    pair=pair,
                    annotator=user,
                    campaign=campaign,
                    choices={"overall": ["a", "b", "tie", "both_bad"][(n + m) % 4]},
                    shown_left_id=pair.item_a_id if (n + m) % 2 else pair.item_b_id,
                    duration_ms=1000 + n,
                )
            )
    Judgment.objects.bulk_create(rows, batch_size=2000)
    return len(rows)


@pytest.mark.django_db
def test_export_of_thousands_streams_and_loads_with_datasets(client, staff, tmp_path):
    users = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=250, responses=4, k=3, members=users)  # 1500 pairs
    total = bulk_judgments(campaign, users)
    assert total == 3000
    client.force_login(staff)
    response = client.get(f"/api/v1/campaigns/{campaign.slug}/export/judgments.jsonl")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("application/jsonl")
    assert int(response["X-Row-Count"]) == total
    path = tmp_path / "judgments.jsonl"
    with path.open("wb") as out:
        for chunk in response.streaming_content:
            out.write(chunk)
    lines = path.read_text().splitlines()
    assert len(lines) == total
    first = json.loads(lines[0])
    judgment = (
        Judgment.objects.order_by("id")
        .select_related("pair__item_a__prompt", "pair__item_b")
        .first()
    )
    assert first["judgment_id"] == judgment.pk
    assert first["prompt"] == judgment.pair.item_a.prompt.messages
    assert first["item_a"]["content"] == judgment.pair.item_a.content
    assert first["item_b"]["id"] == judgment.pair.item_b_id
    assert first["choices"] == judgment.choices
    assert first["shown_left"] == judgment.shown_left_id
    assert first["annotator"] == selectors.annotator_pseudonym(judgment.annotator_id)
    assert judgment.annotator.username not in lines[0]

    ds = datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert ds.num_rows == total
    assert {
        "prompt",
        "item_a",
        "item_b",
        "choices",
        "shown_left",
        "annotator",
        "created_at",
    } <= set(ds.column_names)
    assert ds[0]["prompt"][0]["role"] == "user"
    assert sorted(set(ds["annotator"])) == sorted(
        {selectors.annotator_pseudonym(u.pk) for u in users}
    )


@pytest.mark.django_db
def test_export_reads_through_one_server_side_cursor_whatever_the_size(staff, monkeypatch):
    import psycopg

    users = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=60, responses=3, members=users)
    bulk_judgments(campaign, users)
    cursors = []
    chunked_cursor = connection.chunked_cursor

    def spy():
        cursor = chunked_cursor()
        cursors.append(cursor.cursor)
        return cursor

    monkeypatch.setattr(connection, "chunked_cursor", spy)
    with CaptureQueriesContext(connection) as queries:
        count, top = selectors.export_row_count(campaign=campaign)
        lines = selectors.judgment_export_lines(campaign=campaign, up_to_id=top)
        first = next(lines)
        # A named (server-side) cursor: PostgreSQL holds the result and rows arrive in
        # chunks of EXPORT_CHUNK, so memory stays flat however many there are.
        assert len(cursors) == 1 and isinstance(cursors[0], psycopg.ServerCursor)
        rest = list(lines)
    assert 1 + len(rest) == count == 360 and first.startswith("{")
    assert len(queries) == 2  # the count, and the one cursor: no query per row


@pytest.mark.django_db
def test_skips_are_exportable(client, staff):
    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, members=[user])
    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
    services.skip_create(annotator=user, assignment_id=lease.pk, reason="can't read code")
    client.force_login(staff)
    body = b"".join(
        client.get(f"/api/v1/campaigns/{campaign.slug}/export/skips.jsonl").streaming_content
    )
    row = json.loads(body.decode().splitlines()[0])
    assert row["reason"] == "can't read code" and row["pair_id"] == Skip.objects.get().pair_id
    token = Token.objects.create(user=user)
    r = client.get(
        f"/api/v1/campaigns/{campaign.slug}/export/skips.jsonl",
        HTTP_AUTHORIZATION=f"Token {token.key}",
    )
    assert r.status_code == 403


@pytest.mark.django_db
def test_lease_query_count_does_not_grow_with_the_campaign(django_assert_max_num_queries):
    user = UserFactory()
    small = text_campaign(n_prompts=1, responses=2, members=[user])
    big = text_campaign(n_prompts=40, responses=4, members=[user])
    # Counts include the two SAVEPOINT statements of the test's enclosing transaction.
    for campaign in (small, big):
        with django_assert_max_num_queries(7):
            lease = services.assignment_lease_next(annotator=user, campaign=campaign)
        with django_assert_max_num_queries(9):
            services.judgment_submit(annotator=user, assignment_id=lease.pk, choices="left")

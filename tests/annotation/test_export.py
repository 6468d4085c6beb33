import json
import threading

import datasets
import pytest
from django.db import connection, transaction
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


class HeldSubmit:
    """A judgment submitted on another connection whose transaction stays open until
    commit(): its id is taken now, its row becomes visible only then -- a submit that is
    still committing while an export starts."""

    def __init__(self, *, annotator, campaign):
        lease = services.assignment_lease_next(annotator=annotator, campaign=campaign)
        self.pair_id = lease.pair_id
        self.committed = False
        self._inserted, self._go = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._submit, args=(annotator, lease.pk))
        self._thread.start()
        assert self._inserted.wait(10)

    def _submit(self, annotator, assignment_id):
        try:
            with transaction.atomic():
                self.judgment_id = services.judgment_submit(
                    annotator=annotator, assignment_id=assignment_id, choices="left"
                ).pk
                self._inserted.set()
                self._go.wait(10)
        finally:
            connection.close()  # this thread's own connection

    def commit(self):
        self._go.set()
        self._thread.join(10)
        self.committed = True


def judgment_committed_besides(held, *, annotator):
    """A judgment committed now, on another pair than `held`'s (whose row lock it holds)."""
    pair = Pair.objects.exclude(pk=held.pair_id).order_by("id").first()
    return Judgment.objects.create(
        pair=pair,
        annotator=annotator,
        campaign_id=pair.campaign_id,
        choices={"overall": "b"},
        shown_left_id=pair.item_a_id,
    )


def commit_after_count(held):
    """An execute_wrapper that commits `held` right after the first COUNT over judgments:
    between an export's row count and its rows."""

    def wrapper(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not held.committed and "COUNT(" in sql and '"annotation_judgment"' in sql:
            held.commit()
        return result

    return wrapper


def test_streamed_export_sends_exactly_x_row_count_lines_while_submits_commit(
    transactional_db, client, staff
):
    users = UserFactory.create_batch(3)
    campaign = text_campaign(n_prompts=20, responses=3, members=users)  # 60 pairs
    total = bulk_judgments(campaign, users[:1])
    # The held submit takes an id below the committed one's: an export reading "id <= the
    # highest id counted" after the count would pick it up too.
    held = HeldSubmit(annotator=users[1], campaign=campaign)
    later = judgment_committed_besides(held, annotator=users[2])
    assert later.pk > held.judgment_id
    client.force_login(staff)
    with connection.execute_wrapper(commit_after_count(held)):
        response = client.get(f"/api/v1/campaigns/{campaign.slug}/export/judgments.jsonl")
        lines = b"".join(response.streaming_content).decode().splitlines()
    assert held.committed and Judgment.objects.count() == total + 2
    assert int(response["X-Row-Count"]) == len(lines) == total + 1
    assert len({json.loads(line)["judgment_id"] for line in lines}) == total + 1


def page_reads(queries):
    return [
        q["sql"]
        for q in queries
        if q["sql"].startswith("SELECT")
        and '"annotation_judgment"' in q["sql"]
        and "COUNT(" not in q["sql"]
    ]


@pytest.mark.parametrize("server_side_cursors", [True, False], ids=["cursors-on", "cursors-off"])
def test_export_streams_keyset_pages_never_one_cursor_over_the_whole_result(
    transactional_db, client, staff, monkeypatch, server_side_cursors
):
    """With server-side cursors, Django declares the cursor WITH HOLD in autocommit and
    PostgreSQL builds the whole result before the first row; without them (PgBouncer) the
    driver fetches the whole result into the web process. Pages of LIMIT n do neither."""
    monkeypatch.setitem(
        connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", not server_side_cursors
    )
    monkeypatch.setattr(selectors, "EXPORT_PAGE", 100, raising=False)
    users = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=60, responses=3, members=users)
    total = bulk_judgments(campaign, users)
    assert total == 360
    named = []
    chunked_cursor = connection.chunked_cursor
    monkeypatch.setattr(connection, "chunked_cursor", lambda: named.append(1) or chunked_cursor())
    client.force_login(staff)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/api/v1/campaigns/{campaign.slug}/export/judgments.jsonl")
        blocks = iter(response.streaming_content)
        first = next(blocks)
        before_first = len(page_reads(queries.captured_queries))
        body = first + b"".join(blocks)
    assert body.decode().count("\n") == int(response["X-Row-Count"]) == total
    assert not named  # no named cursor, so none declared WITH HOLD
    reads = page_reads(queries.captured_queries)
    assert len(reads) == 4 and all("LIMIT 100" in sql for sql in reads)  # 100+100+100+60
    assert before_first < len(reads)  # the first bytes left before the last page was read


def test_a_client_that_goes_away_ends_the_export_transaction(
    transactional_db, client, staff, monkeypatch
):
    monkeypatch.setattr(selectors, "EXPORT_PAGE", 50)
    users = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=60, responses=3, members=users)
    bulk_judgments(campaign, users)
    client.force_login(staff)
    response = client.get(f"/api/v1/campaigns/{campaign.slug}/export/judgments.jsonl")
    next(iter(response.streaming_content))
    assert connection.in_atomic_block  # the rest is still to be read from the snapshot
    response.close()  # what the WSGI server does when the client goes away
    assert not connection.in_atomic_block and connection.get_autocommit()


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
    # Counts include the SAVEPOINT statements that stand for BEGIN/COMMIT inside the test's
    # transaction, and the lease's per-candidate savepoint (lease engine, locks.py).
    for campaign in (small, big):
        with django_assert_max_num_queries(10):
            lease = services.assignment_lease_next(annotator=user, campaign=campaign)
        with django_assert_max_num_queries(9):
            services.judgment_submit(annotator=user, assignment_id=lease.pk, choices="left")

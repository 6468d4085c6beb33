import json
import threading

import datasets
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from annotation import selectors, services
from annotation.models import Item, Judgment, Pair, Skip
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


def fetches(queries):
    return [q["sql"] for q in queries if q["sql"].startswith("FETCH")]


@pytest.mark.parametrize("server_side_cursors", [True, False], ids=["cursors-on", "cursors-off"])
def test_export_streams_from_a_cursor_without_hold_one_fetch_at_a_time(
    transactional_db, client, staff, monkeypatch, server_side_cursors
):
    """Django's own server-side cursors are declared WITH HOLD in autocommit, and PostgreSQL
    then builds the whole result before the first row; without them (PgBouncer) the driver
    fetches the whole result into the web process. The export declares its own cursor, NO
    SCROLL and WITHOUT HOLD inside its transaction, and fetches a bounded number of rows at
    a time, either way."""
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
        before_first = len(fetches(queries.captured_queries))
        with connection.cursor() as cursor:
            cursor.execute("SELECT is_holdable, is_scrollable FROM pg_cursors")
            open_cursors = cursor.fetchall()
        body = first + b"".join(blocks)
    assert body.decode().count("\n") == int(response["X-Row-Count"]) == total
    assert not named  # not Django's cursor, which it would declare WITH HOLD
    assert open_cursors == [(False, False)]
    reads = fetches(queries.captured_queries)
    assert reads == ["FETCH FORWARD 100 FROM export_rows"] * 4  # 100+100+100+60
    assert before_first < len(reads)  # the first bytes left before the last rows were read


def test_fetches_stay_near_the_byte_budget_and_the_first_is_small(
    transactional_db, client, staff, monkeypatch
):
    monkeypatch.setattr(selectors, "EXPORT_PAGE_BYTES", 8000)
    monkeypatch.setattr(selectors, "EXPORT_FIRST_PAGE", 3)
    users = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=60, responses=3, members=users)
    total = bulk_judgments(campaign, users)
    client.force_login(staff)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/api/v1/campaigns/{campaign.slug}/export/judgments.jsonl")
        chunks = list(response.streaming_content)
    sizes = [int(sql.split()[2]) for sql in fetches(queries.captured_queries)]
    assert sizes[:2] == [3, 12]  # a small first fetch, then four times more
    assert max(sizes) < 100  # ... until the byte budget, not the row limit, bounds them
    assert all(len(chunk) <= 1.25 * 8000 for chunk in chunks)
    assert b"".join(chunks).count(b"\n") == total


def test_a_client_that_goes_away_ends_the_export_transaction(
    transactional_db, client, staff, monkeypatch
):
    monkeypatch.setattr(selectors, "EXPORT_PAGE", 50)
    monkeypatch.setattr(selectors, "EXPORT_FIRST_PAGE", 50)
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


# Every character JSON treats specially, and some it must leave alone.
AWKWARD = (
    'quote " backslash \\ slash / newline \n return \r tab \t backspace \b formfeed \f '
    "controls \x01\x1f\x7f line separator \u2028 paragraph \u2029 é 中文 🎉 </script> ' %s %%"
)


def expected_judgment_row(judgment, campaign, fields):
    """The row as the export has always written it (json.dumps of the values Django reads)."""
    pair = judgment.pair
    prompt = pair.item_a.prompt
    return {
        "judgment_id": judgment.pk,
        "campaign": campaign.slug,
        "pair_id": pair.pk,
        "prompt": (prompt.messages if prompt else None) or [],
        "prompt_id": (prompt.external_id if prompt else None) or "",
        "item_a": Item.objects.values(*fields).get(pk=pair.item_a_id),
        "item_b": Item.objects.values(*fields).get(pk=pair.item_b_id),
        "choices": judgment.choices,
        "shown_left": judgment.shown_left_id,
        "annotator": selectors.annotator_pseudonym(judgment.annotator_id),
        "duration_ms": judgment.duration_ms,
        "status": judgment.status,
        "created_at": judgment.created_at.isoformat(),
    }


def exported_rows(client, campaign, what="judgments"):
    body = b"".join(
        client.get(f"/api/v1/campaigns/{campaign.slug}/export/{what}.jsonl").streaming_content
    ).decode()
    lines = body.split("\n")
    assert lines.pop() == ""  # every line ends with a newline, and only there
    return [json.loads(line) for line in lines]


def same(parsed, expected):
    """Equal values with keys in the same order, at every depth."""
    return json.dumps(parsed, ensure_ascii=False) == json.dumps(expected, ensure_ascii=False)


@pytest.mark.django_db
def test_text_rows_are_exact_json_for_awkward_text(client, staff):
    users = UserFactory.create_batch(3)
    campaign = text_campaign(n_prompts=3, responses=2, members=users)
    prompts = list(campaign.prompts.order_by("id"))
    prompts[0].messages = [{"role": "user", "content": AWKWARD, AWKWARD: [1, 2.5, None, True]}]
    prompts[0].external_id = AWKWARD[:200]
    prompts[1].messages = []  # empty: exported as []
    for prompt in prompts:
        prompt.save()
    items = list(campaign.items.order_by("id"))
    items[0].content, items[0].source, items[0].external_id = AWKWARD, AWKWARD[:200], "x\ny"
    items[1].content = ""
    items[4].prompt = None  # an item of no prompt: prompt [] and prompt_id ""
    for item in items:
        item.save()
    pairs = list(Pair.objects.filter(campaign=campaign).order_by("id"))
    stamps = ["2025-01-02 03:04:05+00", "2025-01-02 03:04:05.5+00", "2025-01-02 03:04:05.000001+00"]
    for n, (pair, user) in enumerate([(p, u) for p in pairs for u in users]):
        judgment = Judgment.objects.create(
            pair=pair,
            annotator=user,
            campaign=campaign,
            choices={"overall": "a", AWKWARD: "b"},
            shown_left_id=pair.item_b_id,
            duration_ms=None if n % 2 else 1234,
            status=["active", "retracted"][n % 2],
        )
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE annotation_judgment SET created_at = %s WHERE id = %s",
                [stamps[n % 3], judgment.pk],
            )
    client.force_login(staff)
    rows = exported_rows(client, campaign)
    judgments = Judgment.objects.filter(campaign=campaign).order_by("id")
    judgments = judgments.select_related("pair__item_a__prompt", "pair__item_b")
    expected = [
        expected_judgment_row(j, campaign, ("id", "external_id", "content", "source"))
        for j in judgments
    ]
    assert len(rows) == len(expected) == 9
    for row, want in zip(rows, expected, strict=True):
        assert same(row, want), (row, want)
    assert {row["created_at"][19:] for row in rows} == {"+00:00", ".500000+00:00", ".000001+00:00"}


@pytest.mark.django_db
def test_trajectory_rows_are_exact_json(client, staff):
    from annotation.models import Campaign

    users = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=1, responses=3, members=users, kind=Campaign.Kind.TRAJECTORY)
    Item.objects.filter(campaign=campaign).update(prompt=None, dataset=AWKWARD, episode="e1")
    first = campaign.items.order_by("id")[0].pk
    Item.objects.filter(pk=first).update(start=7, length=30, clip='clips/a "b".mp4')
    bulk_judgments(campaign, users)
    client.force_login(staff)
    rows = exported_rows(client, campaign)
    judgments = Judgment.objects.filter(campaign=campaign).order_by("id")
    judgments = judgments.select_related("pair__item_a__prompt", "pair__item_b")
    fields = ("id", "external_id", "source", "dataset", "episode", "start", "length", "clip")
    expected = [expected_judgment_row(j, campaign, fields) for j in judgments]
    assert len(rows) == len(expected) == 6
    for row, want in zip(rows, expected, strict=True):
        assert same(row, want), (row, want)
    assert {row["item_a"]["start"] for row in rows} >= {7, None}


@pytest.mark.django_db
def test_skip_rows_are_exact_json(client, staff):
    users = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=2, responses=2, members=users)
    for n, user in enumerate(users):
        lease = services.assignment_lease_next(annotator=user, campaign=campaign)
        services.skip_create(annotator=user, assignment_id=lease.pk, reason=AWKWARD[: 100 + n])
    client.force_login(staff)
    rows = exported_rows(client, campaign, "skips")
    expected = [
        {
            "skip_id": skip.pk,
            "campaign": campaign.slug,
            "pair_id": skip.pair_id,
            "item_a": skip.pair.item_a_id,
            "item_b": skip.pair.item_b_id,
            "annotator": selectors.annotator_pseudonym(skip.annotator_id),
            "reason": skip.reason,
            "created_at": skip.created_at.isoformat(),
        }
        for skip in Skip.objects.filter(campaign=campaign).select_related("pair").order_by("id")
    ]
    assert len(rows) == 2 and all(same(r, w) for r, w in zip(rows, expected, strict=True))

"""Hostile input: every bad request gets a JSON error that says what was wrong and where
(`field`), never a 500, and nothing already stored is lost."""

import json
import threading
import time
from collections import Counter

import httpx
import pytest
from django.core.files.base import ContentFile
from django.db import connection, transaction
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation import services
from annotation.errors import ServiceError
from annotation.models import Assignment, Campaign, Item, Judgment, Pair, Prompt, Skip
from labeling.models import ExportSnapshot
from tests.annotation.test_api import as_user
from tests.annotation.test_media import trajectory_campaign
from tests.factories import UserFactory, text_campaign

DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "9" * 4400  # more digits than int() converts (sys.get_int_max_str_digits)


def _stored() -> tuple[int, ...]:
    return tuple(
        m.objects.count() for m in (Campaign, Prompt, Item, Pair, Judgment, Skip, Assignment)
    )


def _error(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {"error", "detail"}
    if field is not None:
        assert body.get("field") == field, body
    return body


@pytest.fixture
def leased(staff):
    """A staff user holding a lease on a text campaign, with an API client as them."""
    campaign = text_campaign(n_prompts=1, responses=3, k=1, members=[staff])
    lease = services.assignment_lease_next(annotator=staff, campaign=campaign)
    return campaign, lease, as_user(APIClient(), staff)


def _json_writes(campaign, lease):
    return [
        "/api/v1/campaigns/",
        f"/api/v1/campaigns/{campaign.slug}/members/",
        f"/api/v1/campaigns/{campaign.slug}/prompts/",
        f"/api/v1/campaigns/{campaign.slug}/items/",
        f"/api/v1/campaigns/{campaign.slug}/pairs/",
        f"/api/v1/assignments/{lease.pk}/judgment/",
        f"/api/v1/assignments/{lease.pk}/skip/",
    ]


@pytest.mark.django_db
def test_deeply_nested_json_is_refused_on_every_json_write(leased):
    campaign, lease, api = leased
    before = _stored()
    for url in _json_writes(campaign, lease):
        for body in (DEEP, '{"choices": ' + "[" * 200 + "]" * 200 + "}"):
            r = api.post(url, data=body, content_type="application/json")
            assert _error(r, 400, "body")["error"] == "malformed_json", url
    assert _stored() == before


@pytest.mark.django_db
def test_bare_null_string_and_number_bodies_name_the_body(leased):
    campaign, lease, api = leased
    urls = _json_writes(campaign, lease)
    for url in urls:
        for body in ("null", '"x"', "5"):
            r = api.post(url, data=body, content_type="application/json")
            assert r.status_code == 400, (url, body)
            assert r.json().get("field") in ("body", "rows"), (url, body, r.json())


NUL_IMPORTS = [
    ("prompts", [{"external_id": "q\x00", "prompt": "Hi?"}], "rows[0].external_id"),
    ("prompts", [{"prompt": "Hi\x00?"}], "rows[0].prompt"),
    ("prompts", [{"messages": [{"role": "user", "content": "a\x00"}]}], "rows[0].messages[0]"),
    ("prompts", [{"prompt": "Hi?", "metadata": {"k": "v\x00"}}], "rows[0].metadata.k"),
    ("items", [{"prompt": "q\x00", "content": "x"}], "rows[0].prompt"),
    ("items", [{"prompt": "q0", "content": "x\x00"}], "rows[0].content"),
    ("items", [{"prompt": "q0", "content": "x", "source": "m\x00"}], "rows[0].source"),
    ("pairs", [{"item_a": "a\x00", "item_b": "i1"}], "rows[0].item_a"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("bad", ["\x00", "\ud800"], ids=["nul", "lone_surrogate"])
@pytest.mark.parametrize(("kind", "rows", "field"), NUL_IMPORTS)
def test_nul_and_lone_surrogates_in_imports_are_named(api, staff, kind, rows, field, bad):
    campaign = text_campaign(n_prompts=0)
    services.prompts_bulk_create(campaign=campaign, rows=[{"external_id": "q0", "prompt": "Q?"}])
    services.items_bulk_create(
        campaign=campaign,
        rows=[{"external_id": f"i{n}", "prompt": "q0", "content": f"A{n}"} for n in range(2)],
    )
    before = _stored()
    body = json.dumps(rows).replace("\\u0000", json.dumps(bad)[1:-1])
    r = as_user(api, staff).post(
        f"/api/v1/campaigns/{campaign.slug}/{kind}/", data=body, content_type="application/json"
    )
    assert _error(r, 400)["field"].startswith(field)
    r.content.decode()  # the message echoes nothing that cannot be sent
    assert _stored() == before


@pytest.mark.django_db
def test_a_nul_in_the_pages_skip_reason_is_refused(client):
    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, k=1, members=[user])
    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
    client.force_login(user)
    r = client.post(f"/c/{campaign.slug}/lease/{lease.pk}/skip/", {"reason": "bad\x00clip"})
    assert r.status_code == 400 and b"reason" in r.content
    assert not Skip.objects.exists()
    assert Assignment.objects.get(pk=lease.pk).status == Assignment.Status.OPEN
    with pytest.raises(ServiceError) as caught:
        services.skip_create(annotator=user, assignment_id=lease.pk, reason="\x00")
    assert caught.value.field == "reason"


@pytest.mark.django_db
def test_a_nul_in_a_media_url_is_not_found(client, media_root, staff):
    client.force_login(staff)
    assert client.get("/media/clips/%00.webm").status_code == 404
    assert client.get("/media/%00").status_code == 404


@pytest.mark.django_db
def test_a_lone_surrogate_in_a_choice_is_refused(leased):
    campaign, lease, api = leased
    url = f"/api/v1/assignments/{lease.pk}/judgment/"
    for choices in ('{"overall": "\\ud800"}', '"\\udfff"', '{"\\ud800": "left"}'):
        r = api.post(url, data='{"choices": ' + choices + "}", content_type="application/json")
        assert _error(r, 400)["field"].startswith("choices")
    r = api.post(url, data='{"choices": {"overall": "x\\u0000"}}', content_type="application/json")
    _error(r, 400, "choices.overall")
    assert not Judgment.objects.exists()


@pytest.mark.django_db
def test_trajectory_start_and_length_beyond_32_bits_are_refused(api, staff):
    campaign = text_campaign(n_prompts=0, kind=Campaign.Kind.TRAJECTORY)
    url = f"/api/v1/campaigns/{campaign.slug}/items/"
    as_user(api, staff)
    for key, value in (("start", 2**31), ("length", 2**31), ("length", 10**30)):
        row = {"dataset": "d", "episode": "e", "start": 0, "length": 10, key: value}
        _error(api.post(url, [row], format="json"), 400, f"rows[0].{key}")
    ok = {"dataset": "d", "episode": "e", "start": 2**31 - 1, "length": 2**31 - 1}
    assert api.post(url, [ok], format="json").status_code == 201


@pytest.mark.django_db
def test_a_range_with_thousands_of_digits_is_answered(client, media_root, staff):
    data = bytes(range(256)) * 4
    _, items = trajectory_campaign([], data)
    snapshot = ExportSnapshot.objects.create(
        campaign=items[0].campaign, token="a" * 32, status=ExportSnapshot.Status.DONE
    )
    snapshot.file.save("x.jsonl", ContentFile(data), save=True)
    client.force_login(staff)
    for url in (items[0].clip_url, f"/api/v1/exports/{snapshot.pk}/download"):
        r = client.get(url, HTTP_RANGE=f"bytes={HUGE}-")
        assert r.status_code == 416 and r["Content-Range"] == f"bytes */{len(data)}"
        r = client.get(url, HTTP_RANGE=f"bytes=10-{HUGE}")
        assert r.status_code == 206 and b"".join(r.streaming_content) == data[10:]
        r = client.get(url, HTTP_RANGE=f"bytes=-{HUGE}")
        assert r.status_code == 206 and b"".join(r.streaming_content) == data


@pytest.mark.django_db
def test_a_body_over_the_limit_answers_json_413(leased, settings):
    campaign, lease, api = leased
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2000
    settings.IMPORT_MAX_BYTES = 1000
    before = _stored()
    pad = "x" * 3000
    for url in _json_writes(campaign, lease):
        body = json.dumps({"choices": "left", "name": pad, "rows": [{"prompt": pad}]})
        r = api.post(url, data=body, content_type="application/json")
        assert _error(r, 413, "body")["error"] == "too_large", url
    assert _stored() == before


@pytest.mark.django_db
def test_unknown_urls_under_api_answer_in_the_api_shape(api, staff):
    as_user(api, staff)
    for url in (
        "/api/",
        "/api/v1/",
        "/api/v1/nothing",
        "/api/v2/campaigns/",
        "/api/v1/campaigns/x/nothing/",
        "/api/v1/campaigns/%00/next/",
        "/api/v1/assignments/abc/judgment/",
    ):
        _error(api.get(url), 404)
        _error(api.post(url, {}, format="json"), 404)
    _error(APIClient().get("/api/v1/nothing"), 404)


def _chunks(data: bytes, size: int = 100):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunked_bodies_are_read_and_limited(gunicorn_factory, monkeypatch):
    monkeypatch.setenv("IMPORT_MAX_BYTES", "2000")  # DATA_UPLOAD_MAX_MEMORY_SIZE is 1 MiB more
    base = gunicorn_factory()
    staff = UserFactory(is_staff=True, is_superuser=True)
    headers = {
        "Authorization": f"Token {Token.objects.create(user=staff).key}",
        "Content-Type": "application/json",
    }
    body = json.dumps({"name": "Chunked", "slug": "chunked", "status": "active"}).encode()
    r = httpx.post(f"{base}/api/v1/campaigns/", content=_chunks(body), headers=headers)
    assert r.status_code == 201, r.text
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert Campaign.objects.get(slug="chunked").name == "Chunked"
    rows = json.dumps([{"prompt": "x" * 100}] * 30).encode()
    r = httpx.post(
        f"{base}/api/v1/campaigns/chunked/prompts/", content=_chunks(rows), headers=headers
    )
    assert r.status_code == 413 and r.json()["field"] == "body"
    big = json.dumps({"name": "x" * (2 * 1024 * 1024), "slug": "big"}).encode()
    r = httpx.post(f"{base}/api/v1/campaigns/", content=_chunks(big, 65536), headers=headers)
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert not Prompt.objects.exists() and not Campaign.objects.filter(slug="big").exists()


# Ten identical creates at once. The interleaving is forced: a transaction holds an
# uncommitted row with the same key, so every request passes its "already exists?" check and
# queues on the unique index; the holder rolls back, one request wins, the rest lose the race.


def _waiting_for_a_lock(pids: list[int]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND wait_event_type = 'Lock'",
            [pids],
        )
        return cursor.fetchone()[0]


def _ten_at_once(user, url: str, body, hold) -> Counter:
    token = Token.objects.get_or_create(user=user)[0].key
    results: list = [None] * 10
    pids: list = [None] * 10
    ready = threading.Barrier(11)

    def post(n: int) -> None:
        try:
            connection.ensure_connection()
            pids[n] = connection.connection.info.backend_pid
            ready.wait(10)
            client = APIClient(HTTP_AUTHORIZATION=f"Token {token}")
            client.raise_request_exception = False
            results[n] = client.post(url, body, format="json")
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(n,)) for n in range(10)]

    class Release(Exception):
        pass

    with pytest.raises(Release), transaction.atomic():
        hold()
        for thread in threads:
            thread.start()
        ready.wait(10)
        deadline = time.monotonic() + 20
        while _waiting_for_a_lock(pids) < 10:
            assert time.monotonic() < deadline, "the creates never queued on the unique index"
            time.sleep(0.02)
        raise Release  # roll the held row back: the ten race for it
    for thread in threads:
        thread.join(30)
    for r in results:
        if r.status_code != 201:
            assert r["Content-Type"].startswith("application/json"), r.status_code
    return results


@pytest.mark.django_db(transaction=True)
def test_ten_identical_campaign_creates_give_one_201_and_nine_409():
    staff = UserFactory(is_staff=True, is_superuser=True)
    body = {"name": "Race", "slug": "race", "status": "active"}
    results = _ten_at_once(
        staff,
        "/api/v1/campaigns/",
        body,
        lambda: Campaign.objects.create(name="Held", slug="race"),
    )
    assert Counter(r.status_code for r in results) == {201: 1, 409: 9}
    assert {r.json()["field"] for r in results if r.status_code == 409} == {"slug"}
    assert Campaign.objects.get(slug="race").criteria.count() == 1
    # The same request once more, serially, is the same conflict.
    again = as_user(APIClient(), staff).post("/api/v1/campaigns/", body, format="json")
    assert _error(again, 409, "slug")["error"] == "conflict"


@pytest.mark.django_db(transaction=True)
def test_ten_identical_prompt_imports_give_one_201_and_nine_409():
    staff = UserFactory(is_staff=True, is_superuser=True)
    campaign = text_campaign(n_prompts=0)
    results = _ten_at_once(
        staff,
        f"/api/v1/campaigns/{campaign.slug}/prompts/",
        [{"external_id": "q1", "prompt": "Hi?"}],
        lambda: Prompt.objects.create(campaign=campaign, external_id="q1", messages=[]),
    )
    assert Counter(r.status_code for r in results) == {201: 1, 409: 9}
    assert {r.json()["field"] for r in results if r.status_code == 409} == {"rows[0].external_id"}
    assert Prompt.objects.get().messages == [{"role": "user", "content": "Hi?"}]


@pytest.mark.django_db(transaction=True)
def test_ten_identical_pair_imports_give_one_201_and_nine_409():
    staff = UserFactory(is_staff=True, is_superuser=True)
    campaign = text_campaign(n_prompts=1, responses=2)
    pair = Pair.objects.get()
    a, b = pair.item_a_id, pair.item_b_id
    pair.delete()
    results = _ten_at_once(
        staff,
        f"/api/v1/campaigns/{campaign.slug}/pairs/",
        [{"item_a": a, "item_b": b}],
        lambda: services.pairs_bulk_create(campaign=campaign, rows=[{"item_a": a, "item_b": b}]),
    )
    assert Counter(r.status_code for r in results) == {201: 1, 409: 9}
    assert {r.json()["field"] for r in results if r.status_code == 409} == {"rows[0]"}
    assert Pair.objects.count() == 1

"""What an operator relies on: request ids, structured logs, and exports that can't end
silently short."""

import asyncio
import json
import logging

import httpx
import pytest
from django.db import connection
from django.http import HttpResponse, StreamingHttpResponse
from django.test import RequestFactory

from feedback_app.request_id import JsonFormatter, RequestIdFilter, RequestIdMiddleware, request_id
from tests.annotation.test_export import bulk_judgments
from tests.conftest import GUNICORN_APP_NAME
from tests.factories import UserFactory, text_campaign


@pytest.mark.django_db
def test_request_ids_are_echoed_or_made(client):
    r = client.get("/healthz", HTTP_X_REQUEST_ID="trace-42")
    assert r["X-Request-ID"] == "trace-42"
    made = client.get("/healthz")["X-Request-ID"]
    assert len(made) == 32 and made != client.get("/healthz")["X-Request-ID"]
    assert (
        client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nwith newline")["X-Request-ID"]
        != "bad id\nwith newline"
    )


def test_log_lines_written_while_streaming_carry_the_request_id():
    seen = []

    def body():
        for n in range(3):
            seen.append(request_id.get())
            yield f"line {n}\n".encode()

    middleware = RequestIdMiddleware(lambda request: StreamingHttpResponse(body()))
    response = middleware(RequestFactory().get("/", HTTP_X_REQUEST_ID="trace-7"))
    assert request_id.get() == "-"  # nothing leaks out of the request
    assert b"".join(response.streaming_content) == b"line 0\nline 1\nline 2\n"
    assert seen == ["trace-7"] * 3 and request_id.get() == "-"
    assert isinstance(
        RequestIdMiddleware(lambda r: HttpResponse("x"))(RequestFactory().get("/")), HttpResponse
    )


def test_an_async_stream_stays_async_and_carries_the_request_id():
    seen = []

    async def body():
        for n in range(2):
            seen.append(request_id.get())
            yield f"line {n}\n".encode()

    middleware = RequestIdMiddleware(lambda request: StreamingHttpResponse(body()))
    response = middleware(RequestFactory().get("/", HTTP_X_REQUEST_ID="trace-8"))
    assert response.is_async

    async def read():
        return b"".join([chunk async for chunk in response.streaming_content])

    assert asyncio.run(read()) == b"line 0\nline 1\n"
    assert seen == ["trace-8"] * 2 and request_id.get() == "-"


def test_json_log_lines_carry_the_request_id():
    record = logging.LogRecord(
        "annotation", logging.WARNING, __file__, 1, "lease %s lost", (7,), None
    )
    token = request_id.set("trace-42")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "trace-42" and line["message"] == "lease 7 lost"
    assert line["level"] == "WARNING" and line["time"].endswith("+00:00")


def test_a_cut_export_stream_is_detected_by_the_client(gunicorn_server, client):
    staff = UserFactory(is_staff=True, is_superuser=True)
    users = UserFactory.create_batch(4)
    campaign = text_campaign(n_prompts=250, responses=4, members=users)
    total = bulk_judgments(campaign, users)
    client.force_login(staff)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    url = f"{gunicorn_server}/api/v1/campaigns/{campaign.slug}/export/judgments.jsonl"

    with httpx.stream("GET", url, cookies=cookies, timeout=30) as r:  # a complete export first
        lines = sum(1 for line in r.iter_lines() if line)
        assert int(r.headers["x-row-count"]) == total == lines
        assert r.headers["transfer-encoding"] == "chunked" and "content-length" not in r.headers

    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("GET", url, cookies=cookies, timeout=30) as r,
    ):
        received = 0
        for _line in r.iter_lines():
            received += 1
            if received == 10:
                # The server's database session dies mid-export, and its cursor with it.
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = %s",
                        [GUNICORN_APP_NAME],
                    )
                    assert cursor.fetchone()[0] is True
    assert received < total

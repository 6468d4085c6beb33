"""Request ids and structured logs.

Each request gets an id (the caller's X-Request-ID when it sends a sane one, else a new one),
returned in the X-Request-ID response header and stamped on every log line written while the
request runs, so one request can be followed through the logs.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase

request_id: ContextVar[str] = ContextVar("request_id", default="-")
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _SANE.match(incoming) else uuid.uuid4().hex
        token = request_id.set(rid)
        try:
            # An attribute of ours, which Django's HttpRequest does not declare.
            request.request_id = rid  # type: ignore[attr-defined]
            response = self.get_response(request)
        finally:
            request_id.reset(token)
        response["X-Request-ID"] = rid
        if isinstance(response, StreamingHttpResponse):
            # The body of a streamed response is produced after this returns: keep the id
            # on the log lines written while it is.
            # An async stream (ASGI) gets an async wrapper: a sync one cannot iterate it.
            chunks = response.streaming_content
            if isinstance(chunks, AsyncIterator):
                response.streaming_content = _with_request_id_async(chunks, rid)
            else:
                response.streaming_content = _with_request_id(chunks, rid)
        return response


def _with_request_id(iterator: Iterator[bytes], rid: str) -> Iterator[bytes]:
    while True:
        token = request_id.set(rid)
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        finally:
            request_id.reset(token)
        yield chunk


async def _with_request_id_async(iterator: AsyncIterator[bytes], rid: str) -> AsyncIterator[bytes]:
    while True:
        token = request_id.set(rid)
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        finally:
            request_id.reset(token)
        yield chunk


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key in ("status_code", "task_id"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)

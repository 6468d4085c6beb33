"""Request bodies for the API: JSON that cannot exhaust the stack, and chunked bodies.

SafeJSONParser is registered in settings.REST_FRAMEWORK, so this module must not import
rest_framework.views (which reads that setting when it is imported).
"""

from __future__ import annotations

import io
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

# Deeper than any body this API takes (a metadata object nests a few levels). The stdlib
# decoder recurses once per level and raises RecursionError, not ValueError, near 1,000.
MAX_DEPTH = 64


def _deeper_than(data: Any, limit: int) -> bool:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


class SafeJSONParser(JSONParser):
    """DRF's JSONParser, refusing bodies nested deeper than MAX_DEPTH with a ParseError (400,
    field `body`) instead of letting RecursionError escape as a 500."""

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        message = f"JSON parse error - nested deeper than {MAX_DEPTH} levels."
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(message) from None
        if isinstance(data, dict | list) and _deeper_than(data, MAX_DEPTH):
            raise ParseError(message)
        return data


def chunked_body_buffer(request: HttpRequest) -> None:
    """Read a chunked body (no Content-Length) into memory, so Django and DRF see it.

    WSGI gives such a request no CONTENT_LENGTH, which Django and DRF read as an empty body.
    gunicorn's wsgi.input decodes the chunks; read at most one byte past
    DATA_UPLOAD_MAX_MEMORY_SIZE, so a body over the limit is still refused (413) unread.
    """
    meta = request.META
    if (
        meta.get("CONTENT_LENGTH")
        or "chunked" not in meta.get("HTTP_TRANSFER_ENCODING", "").lower()
    ):
        return
    stream = meta.get("wsgi.input")
    if stream is None:
        return
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = stream.read() if limit is None else stream.read(limit + 1)
    meta["CONTENT_LENGTH"] = str(len(body))
    request._stream = io.BytesIO(body)

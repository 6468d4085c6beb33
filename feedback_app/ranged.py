"""File responses with HTTP Range support (RFC 9110 section 14), so browsers can seek and
scrub video. Reads through Django's storage API, so an object store is a settings change.

The content type comes from the file's first bytes, never its name: a playable video (or a
clip's JPEG poster frame) is served as one; a JSON-lines export as application/jsonl; anything else as an opaque download
(application/octet-stream, attachment) under a sandboxing Content-Security-Policy, so an
.svg or .html that reached the store can never run script on our origin. Every answer says
`nosniff`, so a browser does not second-guess the type either."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

from django.core.files.storage import Storage
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from annotation.clip_check import poster_type, read_head, video_type

CHUNK = 64 * 1024
# What a file that is not a video is served under: no script, no plugins, no same-origin.
SANDBOX_POLICY = "sandbox; default-src 'none'"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Past any file. A longer number means the same, and int() refuses more than 4,300 digits.
_BEYOND = 10**18


def _offset(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else _BEYOND


class Unsatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range one `Range` header asks of a `size`-byte file.

    None means "send the whole file": no header, a unit other than bytes, or several ranges
    (which a server may answer in full). Raises Unsatisfiable for a range past the end.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":  # suffix: the last N bytes
        length = _offset(last)
        if length == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - length), size - 1
    start = _offset(first)
    end = size - 1 if last == "" else min(_offset(last), size - 1)
    if start >= size or end < start:
        raise Unsatisfiable
    return start, end


def _read(handle: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    try:
        handle.seek(start)
        while length > 0:
            chunk = handle.read(min(CHUNK, length))
            if not chunk:
                break
            length -= len(chunk)
            yield chunk
    finally:
        handle.close()


def _looks_like_jsonl(name: str, head: bytes) -> bool:
    """An export snapshot: named .jsonl and empty or one JSON object a line. Browsers render
    neither application/jsonl nor an attachment, so this can run nothing either."""
    return name.endswith(".jsonl") and (head.lstrip()[:1] in (b"", b"{"))


def _typed(response: HttpResponseBase, *, name: str, head: bytes) -> None:
    response["X-Content-Type-Options"] = "nosniff"
    playable = video_type(head) or poster_type(head)
    if playable:
        response["Content-Type"] = playable
        return
    jsonl = _looks_like_jsonl(name, head)
    response["Content-Type"] = "application/jsonl" if jsonl else "application/octet-stream"
    response["Content-Disposition"] = "attachment"
    response["Content-Security-Policy"] = SANDBOX_POLICY


def ranged_file_response(
    request: HttpRequest, *, storage: Storage, name: str, accel_prefix: str = ""
) -> HttpResponseBase:
    handle = storage.open(name, "rb")
    head = read_head(handle)
    if accel_prefix:
        handle.close()
        # nginx serves the bytes (ranges included) from its internal location, under the
        # headers set here.
        accel = HttpResponse()
        accel["X-Accel-Redirect"] = accel_prefix.rstrip("/") + "/" + name
        _typed(accel, name=name, head=head)
        return accel
    size = storage.size(name)
    try:
        byte_range = parse_range(request.headers.get("Range"), size)
    except Unsatisfiable:
        handle.close()
        refused = HttpResponse(status=416)
        refused["Content-Range"] = f"bytes */{size}"
        return refused
    start, end = byte_range if byte_range else (0, size - 1)
    length = max(0, end - start + 1)
    if request.method == "HEAD":
        handle.close()
        body: Iterator[bytes] = iter(())
    else:
        body = _read(handle, start, length)
    response = StreamingHttpResponse(body, status=206 if byte_range else 200)
    _typed(response, name=name, head=head)
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    if byte_range:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Cache-Control"] = "private, max-age=3600"
    return response

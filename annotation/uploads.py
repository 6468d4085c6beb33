"""Dataset uploads over HTTP: the file part of a multipart body streamed straight to disk.

Django's default handlers keep small uploads in memory and write large ones to
FILE_UPLOAD_TEMP_DIR under a name that keeps the client's extension, with no size limit. A
dataset upload instead goes through `DatasetUploadHandler` alone (installed per view, before
anything reads the body):

- the `file` part is written, a chunk at a time, into a temporary file under DATASETS_ROOT
  (same filesystem as the import's own staging directory) named by `tempfile` only: the
  client's file name never becomes part of a path;
- a Content-Length over DATASET_MAX_BYTES plus a little room for the form fields is refused
  before one byte is read, and the file part is cut off (TooLarge, 413) as soon as it passes
  DATASET_MAX_BYTES, so a body that lies about its size is not read to its end either;
- `discard()` removes the temporary file; the views call it whatever happened.

A killed process can leave a `DATASETS_ROOT/.upload-*` file behind; it belongs to no dataset.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile
from django.http import HttpRequest

from .errors import LengthRequired, ServiceError, TooLarge, shown

FIELD = "file"
# Room for the form's other fields (name, format, env) and the multipart boundaries.
FORM_OVERHEAD_BYTES = 64 * 1024
CLIENT_NAME_SHOWN = 100  # characters of the client's file name echoed in a message, at most


class DatasetUploadHandler(FileUploadHandler):
    """Writes the first `file` part into a temporary file under `directory`; any other file
    part is skipped. Raises TooLarge from the parser once the body or the file is over
    `max_bytes`. Call `discard()` when the request is done."""

    chunk_size = 64 * 1024

    def __init__(self, request: HttpRequest, *, directory: Path, max_bytes: int) -> None:
        super().__init__(request)
        self.directory = directory
        self.max_bytes = max_bytes
        self.path: Path | None = None
        self.complete = False
        self.received = 0
        self._out: IO[bytes] | None = None

    @classmethod
    def install(cls, request: HttpRequest) -> DatasetUploadHandler:
        """Make this the request's only upload handler. Call before the body is read (the
        view must be csrf_exempt, checking CSRF itself afterwards)."""
        handler = cls(
            request,
            directory=Path(settings.DATASETS_ROOT),
            max_bytes=settings.DATASET_MAX_BYTES,
        )
        request.upload_handlers = [handler]
        return handler

    def handle_raw_input(
        self,
        input_data: Any,
        META: dict[str, Any],
        content_length: int,
        boundary: Any,
        encoding: str | None = None,
    ) -> None:
        if content_length > self.max_bytes + FORM_OVERHEAD_BYTES:
            raise TooLarge(
                f"The body is {content_length} bytes; a dataset file may be at most "
                f"{self.max_bytes} bytes (DATASET_MAX_BYTES).",
                field=FIELD,
            )

    def new_file(self, field_name: str, file_name: str, *args: Any, **kwargs: Any) -> None:
        if field_name != FIELD or self.path is not None:
            raise SkipFile()
        super().new_file(field_name, file_name, *args, **kwargs)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=self.directory)
        self.path = Path(name)
        self._out = os.fdopen(fd, "w+b")

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        assert self._out is not None
        self.received = start + len(raw_data)
        if self.received > self.max_bytes:
            self.discard()
            raise TooLarge(
                f"The file is over {self.max_bytes} bytes, the limit for a dataset "
                "(DATASET_MAX_BYTES); the rest of it was not read.",
                field=FIELD,
            )
        self._out.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> UploadedFile | None:
        if self._out is None:
            return None
        self._out.flush()
        self._out.seek(0)
        self.complete = True
        # The client's name rides along for messages only; the file lives at self.path.
        return UploadedFile(
            file=self._out,
            name=self.file_name,
            content_type=self.content_type,
            size=file_size,
            charset=self.charset,
            content_type_extra=self.content_type_extra,
        )

    def discard(self) -> None:
        """Close and remove the temporary file, if any. Safe to call more than once."""
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.complete = False

    def stored_path(self) -> Path:
        """The complete upload's temporary path; a 400 naming `file` if none arrived."""
        if not self.complete or self.path is None:
            raise ServiceError("No complete file was received.", field=FIELD)
        return self.path

    def shown_in(self, exc: ServiceError) -> ServiceError:
        """`exc` with the temporary file's name replaced by the client's (made safe to echo
        by errors.shown and cut short), so a message names the file the user sent."""
        if self.path is None or self.path.name not in exc.message:
            return exc
        client = shown(self.file_name or "the upload")
        if len(client) > CLIENT_NAME_SHOWN:
            client = client[:CLIENT_NAME_SHOWN] + "…"
        copy = type(exc)(exc.message.replace(self.path.name, client), field=exc.field, **exc.extra)
        copy.__cause__ = exc.__cause__
        return copy


def upload_length_check(request: HttpRequest) -> None:
    """Refuse a body without Content-Length: Django reads such a body as empty, and the
    size limit is checked against the declared length before anything is read."""
    meta = request.META
    if not meta.get("CONTENT_LENGTH") and "chunked" in meta.get("HTTP_TRANSFER_ENCODING", ""):
        raise LengthRequired(
            "Send the upload with a Content-Length (not chunked), e.g. curl -F.", field="body"
        )

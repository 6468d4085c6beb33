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

A Minari dataset is a directory: it is uploaded as a .zip of that directory and extracted
by `minari_zip_extracted` into a temporary directory under DATASETS_ROOT, refusing absolute
names, `..`, links and anything but plain files and folders, and an uncompressed total over
DATASET_MAX_BYTES (counted as it is written, not only as the archive declares it).

A killed process can leave a `DATASETS_ROOT/.upload-*` file or folder behind; it belongs to no
dataset.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile
from django.http import HttpRequest

from .errors import LengthRequired, ServiceError, TooLarge, shown
from .models import Dataset

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


ZIP_MAX_MEMBERS = 100_000
ZIP_COPY_CHUNK = 1024 * 1024
# How deep under the archive's root a Minari dataset's metadata.json may sit:
# metadata.json, data/metadata.json or <dataset>/data/metadata.json (and one folder more).
MINARI_METADATA_DEPTH = 4


def _zip_refuse(message: str) -> ServiceError:
    return ServiceError(f"The .zip archive {message}", field=FIELD)


def _zip_member_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The member's path segments, once its name and kind are known to be safe."""
    name = info.filename
    shown_name = shown(name)[:CLIENT_NAME_SHOWN]
    if "\x00" in name or "\\" in name:
        raise _zip_refuse(f"holds a member with a NUL or a backslash in its name ({shown_name!r}).")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise _zip_refuse(f"holds an absolute path ({shown_name!r}).")
    if ".." in path.parts:
        raise _zip_refuse(f"holds a path with '..' ({shown_name!r}).")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise _zip_refuse(f"holds a symbolic link ({shown_name!r}).")
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise _zip_refuse(f"holds something other than files and folders ({shown_name!r}).")
    if info.flag_bits & 0x1:
        raise _zip_refuse(f"holds an encrypted member ({shown_name!r}).")
    parts = tuple(part for part in path.parts if part not in ("", "."))
    if not parts and not info.is_dir():
        raise _zip_refuse(f"holds a member without a name ({shown_name!r}).")
    return parts


def zip_extract_safely(*, archive: Path, dest: Path, max_bytes: int) -> None:
    """Extract `archive` into `dest` (an existing, empty directory). Refuses (ServiceError,
    field `file`) before writing anything: absolute names, `..`, links, devices, encrypted
    members, more than ZIP_MAX_MEMBERS members, a declared uncompressed total over
    `max_bytes`; and while writing, the bytes actually decompressed passing `max_bytes`. On
    an error `dest` may hold part of the archive: the caller removes it."""
    try:
        opened = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _zip_refuse(f"cannot be read ({exc}).") from exc
    with opened:
        infos = opened.infolist()
        if len(infos) > ZIP_MAX_MEMBERS:
            raise _zip_refuse(f"holds more than {ZIP_MAX_MEMBERS} members.")
        plan = [(info, _zip_member_parts(info)) for info in infos]
        declared = sum(info.file_size for info in infos)
        if declared > max_bytes:
            raise _zip_refuse(
                f"holds {declared} bytes once uncompressed; the limit is {max_bytes} "
                "(DATASET_MAX_BYTES)."
            )
        root = dest.resolve()
        written = 0
        for info, parts in plan:
            if not parts:
                continue
            target = root.joinpath(*parts)
            if not target.resolve().is_relative_to(root):  # belt and braces after the checks
                raise _zip_refuse(f"holds a path outside the archive ({shown(info.filename)!r}).")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                # "x": a name given twice is refused rather than written over.
                with opened.open(info) as source, open(target, "xb") as out:
                    while chunk := source.read(ZIP_COPY_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise _zip_refuse(
                                f"holds more than {max_bytes} bytes once uncompressed "
                                "(DATASET_MAX_BYTES)."
                            )
                        out.write(chunk)
            except FileExistsError:
                raise _zip_refuse(f"holds {shown(info.filename)!r} twice.") from None
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise _zip_refuse(f"is damaged at {shown(info.filename)!r} ({exc}).") from exc


def _minari_directory(extracted: Path) -> Path:
    """The folder of the extracted archive that holds the dataset's metadata.json."""
    found = [
        path.parent
        for path in extracted.rglob("metadata.json")
        if path.is_file() and len(path.relative_to(extracted).parts) <= MINARI_METADATA_DEPTH
    ]
    if not found:
        raise _zip_refuse("holds no Minari dataset (no metadata.json).")
    if len(found) > 1:
        raise _zip_refuse("holds more than one Minari dataset (several metadata.json).")
    return found[0]


@contextlib.contextmanager
def minari_zip_extracted(*, archive: Path, directory: Path, max_bytes: int) -> Iterator[Path]:
    """The Minari dataset folder of an uploaded .zip, extracted into a temporary directory
    under `directory` that is removed when the block ends, whatever happened."""
    directory.mkdir(parents=True, exist_ok=True)
    extracted = Path(tempfile.mkdtemp(prefix=".upload-", dir=directory))
    try:
        zip_extract_safely(archive=archive, dest=extracted, max_bytes=max_bytes)
        yield _minari_directory(extracted)
    finally:
        shutil.rmtree(extracted, ignore_errors=True)


def upload_import(
    *, upload: DatasetUploadHandler, source_format: str, name: str, env_id: str
) -> Dataset:
    """Import the complete upload with services.dataset_import (a ``minari`` upload being a
    .zip of the dataset's directory); a refusal names the file the client sent, never the
    temporary one. The temporary file stays for `upload.discard()`."""
    from . import services  # services import nothing of the HTTP layer

    path = upload.stored_path()
    try:
        if source_format == Dataset.Format.MINARI:
            directory = Path(settings.DATASETS_ROOT)
            with minari_zip_extracted(
                archive=path, directory=directory, max_bytes=settings.DATASET_MAX_BYTES
            ) as source:
                return services.dataset_import(
                    path=source, source_format=source_format, name=name, env_id=env_id
                )
        return services.dataset_import(
            path=path, source_format=source_format, name=name, env_id=env_id
        )
    except ServiceError as exc:
        raise upload.shown_in(exc) from exc

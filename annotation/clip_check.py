"""What a stored clip is, read from its first bytes, never from its name: a browser renders an
.svg or .html "clip" as a page and runs its script, so only content that is a video the
player can play is served as one (and accepted on upload).

Signatures: WebM/Matroska start with the EBML magic 1A 45 DF A3 and name their DocType in
the header; MP4 (ISO-BMFF) has an `ftyp` box at offset 4 whose major brand says video or
image (AVIF/HEIF share the container); Ogg pages start `OggS`. No external tools: a few
bytes decide.
"""

from __future__ import annotations

from typing import IO

from django.core.exceptions import ValidationError
from django.db.models.fields.files import FieldFile

HEAD_BYTES = 64  # enough for an EBML header with its DocType, and an `ftyp` box's brand

_EBML = b"\x1a\x45\xdf\xa3"
_EBML_DOCTYPE = 0x4282
_EBML_DOCTYPES = {b"webm": "video/webm", b"matroska": "video/webm"}
# Major brands of ISO-BMFF files that are video; image brands (avif, heic, mif1 …) are not.
_MP4_BRANDS = {
    b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso8", b"iso9",
    b"mp41", b"mp42", b"mp71", b"avc1", b"dash", b"M4V ", b"M4VP", b"MSNV", b"f4v ",
    b"3gp4", b"3gp5", b"3gp6", b"3g2a",
}  # fmt: skip


def _vint(data: bytes, at: int, *, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at `at`: (value, its length), or None if cut off."""
    if at >= len(data) or data[at] == 0:
        return None
    length = 9 - data[at].bit_length()
    if at + length > len(data):
        return None
    value = int.from_bytes(data[at : at + length], "big")
    if not keep_marker:
        value &= (1 << (7 * length)) - 1
    return value, length


def _ebml_doctype(head: bytes) -> bytes | None:
    header_size = _vint(head, 4, keep_marker=False)
    if header_size is None:
        return None
    at, end = 4 + header_size[1], min(len(head), 4 + header_size[1] + header_size[0])
    while at < end:
        element = _vint(head, at, keep_marker=True)
        size = element and _vint(head, at + element[1], keep_marker=False)
        if not element or not size:
            return None
        at += element[1] + size[1]
        if element[0] == _EBML_DOCTYPE:
            return head[at : at + size[0]]
        at += size[0]
    return None


def video_type(head: bytes) -> str | None:
    """The content type of a file that starts with `head` (its first HEAD_BYTES bytes), if it
    is a video container a browser plays; None for anything else."""
    if head.startswith(_EBML):
        return _EBML_DOCTYPES.get(_ebml_doctype(head) or b"")
    if head[4:8] == b"ftyp" and head[8:12] in _MP4_BRANDS:
        return "video/mp4"
    if head.startswith(b"OggS"):
        return "video/ogg"
    return None


def poster_type(head: bytes) -> str | None:
    """ "image/jpeg" for a JPEG (what the renderer writes as a clip's poster frame), else
    None. A raster image runs no script, and responses say nosniff."""
    return "image/jpeg" if head.startswith(b"\xff\xd8\xff") else None


def read_head(handle: IO[bytes]) -> bytes:
    """The first HEAD_BYTES bytes of an open file, leaving its position where it was."""
    position = handle.tell()
    handle.seek(0)
    try:
        return handle.read(HEAD_BYTES)
    finally:
        handle.seek(position)


def validate_clip(value: FieldFile) -> None:
    """Model-field validator for Item.clip: a new upload must be a playable video. Files
    already stored are not reopened here; the media view types them by content anyway."""
    if getattr(value, "_committed", True):
        return
    if video_type(read_head(value.file)) is None:
        raise ValidationError(
            "This file is not a video the player can play (WebM, MP4 or Ogg); "
            "its content was checked, not its name.",
            code="not_a_video",
        )

"""Errors raised by services. Views and the API turn them into messages and status codes."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.message}
        if self.field:
            body["field"] = self.field
        body.update(self.extra)
        return body


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class Conflict(ServiceError):
    """The row exists already: stored before, or by a concurrent request that won the race
    to the unique constraint."""

    status = 409
    code = "conflict"


class TooLarge(ServiceError):
    """A body or upload over its size limit, refused before the rest of it is read."""

    status = 413
    code = "too_large"


class LengthRequired(ServiceError):
    """An upload sent without Content-Length (chunked): its size must be known up front."""

    status = 411
    code = "length_required"


class CampaignNotActive(ServiceError):
    status = 409
    code = "campaign_not_active"


class ClipsPending(ServiceError):
    """Nothing can be leased now, but pairs remain whose clips are still rendering (or
    failed and wait for staff): not "nothing left"."""

    status = 503
    code = "clips_pending"


class AlreadyJudged(ServiceError):
    status = 409
    code = "already_judged"


class LeaseLost(ServiceError):
    """The lease expired and the pair's slots have all been taken since."""

    status = 409
    code = "lease_lost"


def shown(value: object) -> str:
    """`value` as text fit to echo in a message or a field path: a lone surrogate (which JSON
    can escape but UTF-8 cannot encode) would make the error itself unsendable."""
    text = str(value)
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def text_check(value: str, *, field: str) -> str:
    """Refuse text PostgreSQL cannot store (NUL in text or jsonb; lone surrogates, which UTF-8
    cannot encode), naming the field, rather than fail on insert."""
    if "\x00" in value:
        raise ServiceError(
            f"{field} contains a NUL character (\\u0000), which cannot be stored.", field=field
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ServiceError(
                f"{field} contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text.",
                field=field,
            ) from None
    return value


class TooManyRequests(ServiceError):
    """A rate limit (feedback_app/throttling.py) was passed."""

    status = 429
    code = "throttled"

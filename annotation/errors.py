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


class CampaignNotActive(ServiceError):
    status = 409
    code = "campaign_not_active"


class AlreadyJudged(ServiceError):
    status = 409
    code = "already_judged"


class LeaseLost(ServiceError):
    """The lease expired and the pair's slots have all been taken since."""

    status = 409
    code = "lease_lost"

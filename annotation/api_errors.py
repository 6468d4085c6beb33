"""One error shape for the whole API: {"error": code, "detail": message, "field": where}."""

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from .errors import ServiceError


def _first_field(detail: Any, prefix: str = "") -> tuple[str, str]:
    if isinstance(detail, dict):
        for key, value in detail.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "non_field_errors":
                # At the top, the body itself was refused (null, a string, a number).
                path = prefix or "body"
            return _first_field(value, path)
    if isinstance(detail, list) and detail:
        if isinstance(detail[0], (dict, list)):
            for index, value in enumerate(detail):
                if value:
                    return _first_field(value, f"{prefix}[{index}]")
        return prefix, str(detail[0])
    return prefix, str(detail)


def too_large(detail: str) -> Response:
    return Response(
        {"error": "too_large", "detail": detail, "field": "body"},
        status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    )


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ServiceError):
        return Response(exc.as_dict(), status=exc.status)
    if isinstance(exc, RequestDataTooBig):
        # Django's own answer would be an HTML 400.
        return too_large(
            f"The body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes, the limit "
            "per request."
        )
    if isinstance(exc, exceptions.ParseError):
        return Response(
            {"error": "malformed_json", "detail": str(exc.detail), "field": "body"},
            status=status.HTTP_400_BAD_REQUEST,
        )
    if isinstance(exc, exceptions.ValidationError):
        field, message = _first_field(exc.detail)
        body = {"error": "invalid", "detail": f"{field}: {message}" if field else message}
        if field:
            body["field"] = field
        body["errors"] = exc.detail
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" in response.data:
        code = getattr(exc, "default_code", "error")
        response.data = {"error": code, "detail": str(response.data["detail"])}
    return response

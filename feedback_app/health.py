"""/healthz: 200 when the database and the broker answer, 503 naming what does not.

The answer is public, so it says which part failed and logs why, without the details."""

import logging

from django.db import connection
from django.http import HttpRequest, JsonResponse

from .celery import app

log = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception:  # any failure is the answer here
        log.exception("health check: database")
        checks["database"] = "error"
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception:
        log.exception("health check: broker")
        checks["broker"] = "error"
    healthy = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unhealthy", **checks}, status=200 if healthy else 503
    )

"""Rate limits: one mechanism for sign-in attempts, token API use and judgments.

A limit is written "N/period" — "120/min", "10/15min", "5000/d" (units s, min, h, d, with
an optional multiplier) — and read from settings.THROTTLE_RATES by scope; "" switches the
scope off (the test suite and the benchmarks, whose clients all share 127.0.0.1). Members
of the group settings.THROTTLE_EXEMPT_GROUP (trusted scripted annotators) are never limited.

Counting is a fixed window in the shared cache (Redis whenever REDIS_URL is set), so every
web process counts together, and the window's expiry is the cache's own (a key with a
time-to-live): no web process's clock decides it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|sec|min|m|h|hour|d|day)\s*$")
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}
_UNIT_SECONDS |= {"d": 86400, "day": 86400}


@dataclass(frozen=True)
class Rate:
    count: int
    seconds: int


def rate_parse(text: str) -> Rate | None:
    """None for "" (off); ValueError for anything that is not a rate."""
    if not text or not text.strip():
        return None
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"not a rate: {text!r} (write e.g. '120/min' or '10/15min')")
    count, multiplier, unit = match.groups()
    return Rate(int(count), int(multiplier or 1) * _UNIT_SECONDS[unit])


def rate_for(scope: str) -> Rate | None:
    return rate_parse(settings.THROTTLE_RATES.get(scope, ""))


def exempt(user: Any) -> bool:
    group = settings.THROTTLE_EXEMPT_GROUP
    return bool(
        group
        and getattr(user, "is_authenticated", False)
        and user.groups.filter(name=group).exists()
    )


def _key(scope: str, who: str) -> str:
    return f"throttle:{scope}:{who}"


def throttle_hit(*, scope: str, who: str) -> int | None:
    """Count one event of `who` in `scope`. Returns None while within the limit, else the
    seconds to wait (the whole window: the cache does not say how much of it is left)."""
    rate = rate_for(scope)
    if rate is None:
        return None
    key = _key(scope, who)
    cache.add(key, 0, timeout=rate.seconds)  # starts the window, unless it is running
    try:
        count = cache.incr(key)
    except ValueError:  # the window ended between the two calls
        cache.set(key, 1, timeout=rate.seconds)
        count = 1
    return rate.seconds if count > rate.count else None


def throttle_user(*, scope: str, user: Any, who: str) -> int | None:
    """throttle_hit for a request's user, unless the scope is off or the user is exempt. The
    scope is looked at first: with limits off (benchmarks, tests) a request pays no query."""
    if rate_for(scope) is None or exempt(user):
        return None
    return throttle_hit(scope=scope, who=who)


def throttle_over(*, scope: str, who: str) -> int | None:
    """Like throttle_hit without counting: the seconds to wait if `who` is over the limit."""
    rate = rate_for(scope)
    if rate is None:
        return None
    return rate.seconds if (cache.get(_key(scope, who)) or 0) >= rate.count else None


def throttle_reset(*, scope: str, who: str) -> None:
    cache.delete(_key(scope, who))


def client_ip(request: Any) -> str:
    """The client's address as the server saw it. Behind a reverse proxy set
    THROTTLE_TRUSTED_PROXY_HEADER (e.g. HTTP_X_REAL_IP) to the header the proxy writes."""
    header = settings.THROTTLE_TRUSTED_PROXY_HEADER
    if header and request.META.get(header):
        return str(request.META[header]).split(",")[0].strip()
    return str(request.META.get("REMOTE_ADDR", ""))


class ScopedThrottle(BaseThrottle):
    """DRF's face of the mechanism: `scope`, else the view's `throttle_scope`, else "api";
    per user, or per address for anonymous requests. A refusal is DRF's 429 with
    Retry-After."""

    scope: str | None = None

    def allow_request(self, request: Any, view: Any) -> bool:
        who = (
            f"user:{request.user.pk}"
            if getattr(request.user, "is_authenticated", False)
            else f"ip:{client_ip(request)}"
        )
        view_scope: str = getattr(view, "throttle_scope", "api")  # DRF's: a str
        scope = self.scope or view_scope
        self._wait = throttle_user(scope=scope, user=request.user, who=who)
        return self._wait is None

    def wait(self) -> float | None:
        return self._wait


class JudgmentThrottle(ScopedThrottle):
    """Judgments per annotator, against vote stuffing; the page's judge view counts in the
    same scope."""

    scope = "judgments"

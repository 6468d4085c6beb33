"""API token authentication with the token -> user lookup kept in the process cache.

Every API call authenticates, and a scripted annotator makes one call per judgment, so the
lookup is served from memory (feedback_app/process_cache.py). A token deleted, or a user
deactivated or changed, invalidates it through the database's notification, however the
write was made. Each request gets its own copy of the user, so nothing a request sets on it
leaks into another."""

from __future__ import annotations

import copy
from typing import Any

from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from .process_cache import ProcessCache

_tokens: ProcessCache[Any] = ProcessCache("tokens", max_age=300.0)


def _token_user(key: str) -> Any:
    """The active user of the token, or None. A database read; the cache keeps its answer."""
    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return None
    return token.user


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[Any, str]:
        user = _tokens.get_or_load(key, lambda: _token_user(key))
        if user is None:
            # One message for both, as DRF's: a wrong token and a deactivated user's token
            # look alike to whoever holds it.
            raise AuthenticationFailed("Invalid token.")
        # The token object itself is never used by the views; the key stands in for it.
        return copy.copy(user), key

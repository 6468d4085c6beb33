"""Sign-in with a limit on failed attempts, per username and per address.

After settings.THROTTLE_RATES["login"] failures for one username, or for one address, sign-in
is refused for the rest of the window with a message saying so (429), even with the right
password: guessing gets nowhere. A successful sign-in clears its username's count.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse

from .throttling import client_ip, throttle_hit, throttle_over, throttle_reset


class LoginView(auth_views.LoginView):
    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        username = str(request.POST.get("username", "")).strip().lower()[:150]
        keys = [f"user:{username}", f"ip:{client_ip(request)}"]
        wait = max((throttle_over(scope="login", who=k) or 0 for k in keys), default=0)
        if wait:
            message = (
                "Too many failed sign-in attempts for this account or from this address. "
                f"Try again in {max(1, wait // 60)} minutes."
            )
            context = self.get_context_data(form=self.get_form_class()(request), throttled=message)
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        username = str(self.request.POST.get("username", "")).strip().lower()[:150]
        for who in (f"user:{username}", f"ip:{client_ip(self.request)}"):
            throttle_hit(scope="login", who=who)
        return super().form_invalid(form)

    def form_valid(self, form: Any) -> HttpResponse:
        username = str(self.request.POST.get("username", "")).strip().lower()[:150]
        throttle_reset(scope="login", who=f"user:{username}")
        return super().form_valid(form)

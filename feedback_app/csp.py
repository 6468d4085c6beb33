"""A Content-Security-Policy on every response: script, style and media only from our own
origin, so markup that slips into a page (a prompt, an instruction, a stored file) cannot run
script. htmx and the app's scripts are static files; the pages carry no inline script or style.

The policy is `settings.CONTENT_SECURITY_POLICY`; `CONTENT_SECURITY_POLICY_BY_PATH` maps a
path prefix to another policy, for a third-party page that needs more (drf-spectacular's API
docs inline their start-up script). A response that sets its own policy keeps it: the media
view sandboxes a file that is not a video.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"


def policy_for(path: str) -> str:
    for prefix, policy in settings.CONTENT_SECURITY_POLICY_BY_PATH.items():
        if path.startswith(prefix):
            return str(policy)
    return str(settings.CONTENT_SECURITY_POLICY)


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if HEADER not in response:
            response[HEADER] = policy_for(request.path)
        return response

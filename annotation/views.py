"""HTML views: parse the form, call one service or selector, render. htmx requests get the
named partial; the same URLs work as plain form posts with JavaScript off."""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django_htmx.middleware import HtmxDetails

from feedback_app.ranged import ranged_file_response
from feedback_app.throttling import throttle_user

from . import selectors, services
from .errors import CampaignNotActive, ClipsPending, Forbidden, ServiceError, TooManyRequests
from .models import Assignment, Campaign

PAGE = "annotation/compare.html"


class HtmxHttpRequest(HttpRequest):
    """A request as HtmxMiddleware leaves it (django-htmx's documented typing)."""

    htmx: HtmxDetails


def _user(request: HttpRequest) -> AbstractBaseUser:
    """The signed-in user: call only behind login_required."""
    return cast(AbstractBaseUser, request.user)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    campaigns = selectors.campaign_list_for(user=_user(request))
    return render(request, "annotation/home.html", {"campaigns": campaigns})


def _campaign(request: HttpRequest, slug: str) -> Campaign:
    campaign = selectors.campaign_for(user=_user(request), slug=slug)
    if campaign is None:
        raise Http404("No such campaign, or you are not a member of it.")
    return campaign


def _sides(assignment: Assignment) -> dict[str, Any]:
    left, right = assignment.sides
    return {"left": left, "right": right, "sides": [("left", left), ("right", right)]}


def _render_pair(
    request: HtmxHttpRequest,
    campaign: Campaign,
    *,
    error: ServiceError | None = None,
    notice: str = "",
) -> HttpResponse:
    """Lease (or resume) the annotator's next pair and render it, with an optional message."""
    context: dict[str, Any] = {"campaign": campaign, "error": error, "notice": notice}
    status = error.status if error and not request.htmx else 200
    try:
        assignment = services.assignment_lease_next(annotator=_user(request), campaign=campaign)
    except (Forbidden, CampaignNotActive, ClipsPending) as exc:
        context["error"] = error or exc
        status = (error or exc).status if not request.htmx else 200
        assignment = None
    if assignment is not None:
        assignment = selectors.assignment_detail(assignment_id=assignment.pk)
        context.update(assignment=assignment, **_sides(assignment))
        context["criteria"] = list(campaign.criteria.all())
        # The page preloads the clips of the pair that will probably come next.
        context["next_pair"] = selectors.pair_peek_next(
            annotator=_user(request), campaign=campaign, current_pair_id=assignment.pair_id
        )
    template = f"{PAGE}#pair" if request.htmx else PAGE
    return render(request, template, context, status=status)


@login_required
def compare(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    return _render_pair(request, _campaign(request, slug))


def _choices_from_form(request: HttpRequest) -> dict[str, str] | str:
    if "choice" in request.POST:
        return request.POST["choice"]
    return {
        key.removeprefix("choice_"): request.POST[key]  # the key's last value, as items() gives
        for key in request.POST
        if key.startswith("choice_")
    }


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _act(request: HtmxHttpRequest, slug: str, action: Any, notice: str) -> HttpResponse:
    """Run one service on the annotator's lease in the campaign the URL names, then show the
    next pair: swapped in by htmx, or after a redirect for a plain form post. A refused
    action shows why, writing nothing."""
    campaign = _campaign(request, slug)
    try:
        action(campaign)
    except ServiceError as exc:
        return _render_pair(request, campaign, error=exc)
    if not request.htmx:
        return redirect("annotation:compare", slug=slug)
    return _render_pair(request, campaign, notice=notice)


@login_required
@require_POST
def judge(request: HtmxHttpRequest, slug: str, assignment_id: int) -> HttpResponse:
    def submit(campaign: Campaign) -> None:
        # The same per-annotator limit as the API's (scope "judgments"): no vote stuffing
        # through the page either.
        wait = throttle_user(scope="judgments", user=request.user, who=f"user:{request.user.pk}")
        if wait is not None:
            raise TooManyRequests(
                f"Too many judgments in a short time; please take a break and try again "
                f"in {wait} seconds. Your answer was not recorded."
            )
        services.judgment_submit(
            annotator=_user(request),
            assignment_id=assignment_id,
            campaign=campaign,
            choices=_choices_from_form(request),
            duration_ms=_int_or_none(request.POST.get("duration_ms")),
        )

    return _act(request, slug, submit, "Saved.")


@login_required
@require_POST
def skip(request: HtmxHttpRequest, slug: str, assignment_id: int) -> HttpResponse:
    return _act(
        request,
        slug,
        lambda campaign: services.skip_create(
            annotator=_user(request),
            assignment_id=assignment_id,
            campaign=campaign,
            reason=request.POST.get("reason", ""),
        ),
        "Skipped.",
    )


@login_required
@require_POST
def renew(request: HtmxHttpRequest, slug: str, assignment_id: int) -> HttpResponse:
    try:
        services.assignment_renew(
            annotator=_user(request),
            assignment_id=assignment_id,
            campaign=_campaign(request, slug),
        )
    except ServiceError as exc:
        return HttpResponse(exc.message, status=200 if request.htmx else exc.status)
    return HttpResponse("")


@login_required
@require_GET
def media(request: HttpRequest, name: str) -> HttpResponseBase:
    """A clip (or its poster frame), with Range support, for staff and members of its
    campaign only."""
    item = selectors.clip_item_for(user=_user(request), name=name)
    if item is None:
        raise Http404("No such file, or you may not see it.")
    return ranged_file_response(
        request,
        storage=default_storage,
        name=name,  # the clip's or the poster's, as the selector matched it
        accel_prefix=settings.MEDIA_ACCEL_REDIRECT_PREFIX,
    )

"""Staff pages: plain server-rendered forms that work without JavaScript.

/staff/datasets/ lists the imported datasets and uploads a new one through the same handler
and service as the API (annotation/uploads.py, services.dataset_import);
/staff/campaigns/from-dataset/ cuts a trajectory campaign from one
(services.campaign_create_from_dataset). The view is
csrf_exempt only so that the upload handler can be installed before the CSRF check reads the
form; the check then runs (csrf_protect) once the user is known to be allowed to import.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods

from . import segments, selectors, services
from .errors import ServiceError, shown
from .models import Campaign
from .permissions import (
    Need,
    campaign_for,
    can_create_campaign,
    can_import_datasets,
    can_view_datasets,
)
from .serializers import DATASET_UPLOAD_FORMATS, DatasetUploadInSerializer
from .uploads import DatasetUploadHandler, upload_import, upload_length_check

DATASETS_PAGE = "annotation/staff/datasets.html"
LISTED = 200  # the newest datasets shown; the API pages through them all


def _render(
    request: HttpRequest,
    *,
    error: ServiceError | None = None,
    values: dict[str, Any] | None = None,
    status: int = 200,
) -> HttpResponse:
    user = request.user
    context = {
        "datasets": selectors.datasets_page(limit=LISTED),
        "listed": LISTED,
        "can_import": can_import_datasets(user=user),
        "formats": DATASET_UPLOAD_FORMATS,
        "error": error,
        "values": values or {"format": DATASET_UPLOAD_FORMATS[0][0], "name": "", "env": ""},
    }
    return render(request, DATASETS_PAGE, context, status=status)


@csrf_protect
def _upload(request: HttpRequest, upload: DatasetUploadHandler) -> HttpResponse:
    """The form post, once the CSRF check has passed (it read the form, streaming the file
    through `upload`)."""
    values = {key: request.POST.get(key, "") for key in ("format", "name", "env")}
    form: dict[str, Any] = {
        **values,
        **({"file": request.FILES["file"]} if "file" in request.FILES else {}),
    }
    serializer = DatasetUploadInSerializer(data=form)
    try:
        if not serializer.is_valid():
            field, problems = next(iter(serializer.errors.items()))
            raise ServiceError(f"{field}: {problems[0]}", field=field)
        data = serializer.validated_data
        dataset = upload_import(
            upload=upload, source_format=data["format"], name=data["name"], env_id=data["env"]
        )
    except ServiceError as exc:
        return _render(request, error=exc, values=values, status=exc.status)
    messages.success(
        request,
        f"Imported {dataset.name}: {dataset.transition_count} transitions, "
        f"{dataset.episode_count} episodes.",
    )
    return redirect("annotation:staff-datasets")


@csrf_exempt
@require_http_methods(["GET", "HEAD", "POST"])
def datasets(request: HttpRequest) -> HttpResponse:
    user = request.user
    if not user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not can_view_datasets(user=user):
        raise PermissionDenied("Datasets are for staff with the dataset permissions.")
    if request.method != "POST":
        return _render(request)
    if not can_import_datasets(user=user):
        raise PermissionDenied("Importing datasets needs the permission to add them.")
    upload = DatasetUploadHandler.install(request)
    try:
        upload_length_check(request)
        return _upload(request, upload)
    except ServiceError as exc:
        # Too large (or no length): the form was not read, so nothing of it is shown back.
        return _render(request, error=exc, status=exc.status)
    finally:
        upload.discard()


TRAJECTORY_PAGE = "annotation/staff/campaign_from_dataset.html"
_SOURCE_INTS = ("segment_length", "stride", "pairs", "seed")


@require_http_methods(["GET", "HEAD", "POST"])
def campaign_from_dataset(request: HttpRequest) -> HttpResponse:
    """A trajectory campaign cut from a stored dataset: the campaign API's `source` options
    as a form (services.campaign_create_from_dataset)."""
    user = request.user
    if not user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not (can_view_datasets(user=user) and can_create_campaign(user=user)):
        raise PermissionDenied("Creating campaigns from datasets is for staff.")
    values = {
        "dataset": request.GET.get("dataset", ""),
        "name": "",
        "slug": "",
        "segment_length": "25",
        "stride": "",
        "pairs": "200",
        "sampling": "random",
        "seed": "0",
        "judgments_per_pair": "3",
        "instructions": "",
        "activate": "",
    }
    error: ServiceError | None = None
    if request.method == "POST":
        values.update({key: request.POST.get(key, "").strip() for key in values})
        try:
            source: dict[str, Any] = {"dataset": values["dataset"], "sampling": values["sampling"]}
            for key in _SOURCE_INTS:
                if values[key]:
                    source[key] = _form_int(values[key], f"source.{key}")
            campaign = services.campaign_create_from_dataset(
                name=values["name"] or values["slug"],
                slug=values["slug"],
                source=source,
                owner=user,
                instructions=values["instructions"],
                judgments_per_pair=_form_int(values["judgments_per_pair"], "judgments_per_pair"),
                status=Campaign.Status.ACTIVE if values["activate"] else Campaign.Status.DRAFT,
            )
        except ServiceError as exc:
            error = exc
        else:
            messages.success(
                request,
                f"Created {campaign.name}: {campaign.pairs.count()} pairs of "
                f"{campaign.items.count()} segments; their clips are being rendered.",
            )
            return redirect("annotation:staff-campaign-clips", slug=campaign.slug)
    context = {
        "datasets": selectors.datasets_page(limit=LISTED),
        "samplings": segments.SAMPLINGS,
        "values": values,
        "error": error,
    }
    return render(request, TRAJECTORY_PAGE, context, status=error.status if error else 200)


def _form_int(raw: str, field: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ServiceError(
            f"{field} must be a whole number, not {shown(raw)!r}.", field=field
        ) from None


CLIPS_PAGE = "annotation/staff/campaign_clips.html"
FAILED_SHOWN = 100


@require_http_methods(["GET", "HEAD", "POST"])
def campaign_clips(request: HttpRequest, slug: str) -> HttpResponse:
    """A trajectory campaign's clips: how many are rendering, ready or failed, the pairs
    ready to be shown, each failed segment with its error, and a re-render action. The
    progress part refreshes itself (htmx) while clips are pending."""
    user = request.user
    if not user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    try:
        campaign = campaign_for(user=user, slug=slug, need=Need.MANAGE)
    except ServiceError as exc:
        raise PermissionDenied(exc.message) from None
    if request.method == "POST":
        result = services.clips_rerender(campaign=campaign)
        messages.success(
            request,
            f"Asked again for {len(result.requested)} clip(s)"
            + (f"; {len(result.judged)} kept: their pairs are judged." if result.judged else "."),
        )
        return redirect("annotation:staff-campaign-clips", slug=campaign.slug)
    summary = selectors.clips_summary(campaign=campaign, limit=FAILED_SHOWN)
    context = {
        "campaign": campaign,
        "summary": summary,
        "total": sum(summary.counts.values()),
        "failed_shown": FAILED_SHOWN,
    }
    template = f"{CLIPS_PAGE}#progress" if request.headers.get("HX-Request") else CLIPS_PAGE
    return render(request, template, context)

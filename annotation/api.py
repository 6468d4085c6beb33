"""REST API v1: parse, call one service or selector, serialize. Business rules live in
services.py, so scripts and simulated crowds annotate under exactly the page's rules."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import TooManyFieldsSent, TooManyFilesSent
from django.core.files.storage import default_storage
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import permissions, serializers, status, views
from rest_framework.request import Request
from rest_framework.response import Response

from feedback_app.ranged import ranged_file_response
from feedback_app.throttling import JudgmentThrottle, ScopedThrottle
from labeling import selectors as labeling_selectors
from labeling import services as labeling_services

from . import selectors, services
from .api_errors import too_large
from .errors import NotFound, ServiceError, shown
from .models import Assignment, Campaign, choices_as_shown
from .parsers import chunked_body_buffer
from .permissions import (
    CampaignPermission,
    CanCreateCampaign,
    Need,
    campaign_by_id,
    campaign_checked,
)
from .permissions import campaign_for as campaign_checked_for
from .permissions import can as campaign_can
from .serializers import (
    AssignmentOutputSerializer,
    AssignmentStaffOutputSerializer,
    BulkCreatedOutputSerializer,
    CampaignSerializer,
    ErrorSerializer,
    ExportSnapshotOutputSerializer,
    ItemRowSerializer,
    JudgmentInSerializer,
    JudgmentOutputSerializer,
    JudgmentPageOutputSerializer,
    LabelsOutputSerializer,
    MembersInSerializer,
    MembersOutputSerializer,
    PairPageOutputSerializer,
    PairRowSerializer,
    PromptRowSerializer,
    RenewOutputSerializer,
    ScoresOutputSerializer,
    SkipInSerializer,
    SkipOutputSerializer,
    assignment_payload,
)


class APIView(views.APIView):
    """DRF's APIView that also reads chunked request bodies, and answers a form body with too
    many fields in the API's error shape."""

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        chunked_body_buffer(request)
        return super().initialize_request(request, *args, **kwargs)

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
            # Django's own answer would be an HTML 400.
            exc = ServiceError(
                f"The form has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields or "
                f"{settings.DATA_UPLOAD_MAX_NUMBER_FILES} files; send JSON.",
                field="body",
            )
        return super().handle_exception(exc)


@csrf_exempt
def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Any URL under /api/ that matches no endpoint, in the API's error shape."""
    path = shown(request.path)
    detail = f"No API endpoint at {path}; see /api/docs/."
    if not path.endswith("/"):
        try:
            if resolve(request.path_info + "/").func is not not_found:
                detail = f"No API endpoint at {path}; did you mean {path}/ ?"
        except Resolver404:
            pass
    return JsonResponse({"error": "not_found", "detail": detail, "field": "path"}, status=404)


# The error statuses each kind of call can answer, all in ErrorSerializer's shape: 401 without
# a valid token, 403 for a call not allowed to this user, 404 for an unknown slug or id, 429
# for a rate limit; a body can also be refused (400), be too large (413) or of a type no
# parser reads (415), or collide with a stored row or a campaign's state (409).
READ_ERRORS = (401, 403, 404, 429)
WRITE_ERRORS = (400, 401, 403, 404, 409, 413, 415, 429)


def _responses(ok: dict[Any, Any], errors: tuple[int, ...] = WRITE_ERRORS) -> dict[Any, Any]:
    return {**ok, **{code: ErrorSerializer for code in errors}}


def _campaign(request: Request, slug: str) -> Campaign:
    """The campaign for an annotator's action: 404 unless the caller is in it."""
    return campaign_checked_for(user=request.user, slug=slug, need=Need.VIEW)


class ManagerView(APIView):
    """A view for a campaign's managers and owners (annotation/permissions.py): the
    campaign its URL names is checked before the request body is read, and left in
    `self.campaign`. Every staff endpoint derives from it."""

    permission_classes = [CampaignPermission]
    need = Need.MANAGE
    campaign: Campaign


class CampaignListView(APIView):
    def get_permissions(self):
        if self.request.method == "POST":
            return [permissions.IsAuthenticated(), CanCreateCampaign()]
        return [permissions.IsAuthenticated()]

    @extend_schema(responses=_responses({200: CampaignSerializer(many=True)}, (401, 429)))
    def get(self, request: Request) -> Response:
        campaigns = selectors.campaigns_visible_to(user=request.user).prefetch_related("criteria")
        return Response(CampaignSerializer(campaigns, many=True).data)

    @extend_schema(request=CampaignSerializer, responses=_responses({201: CampaignSerializer}))
    def post(self, request: Request) -> Response:
        serializer = CampaignSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        create: Any = services.campaign_create
        if data.get("source") is not None:
            create = services.campaign_create_from_dataset
            data["source"] = dict(data["source"])
        else:
            data.pop("source", None)
        campaign = create(criteria=data.pop("criteria", None), owner=request.user, **data)
        return Response(CampaignSerializer(campaign).data, status=status.HTTP_201_CREATED)


class CampaignMembersView(ManagerView):
    @extend_schema(responses=_responses({200: MembersOutputSerializer}, READ_ERRORS))
    def get(self, request: Request, slug: str) -> Response:
        campaign = self.campaign
        members = campaign.members.order_by("username").values("id", "username")
        return Response({"members": list(members)})

    @extend_schema(
        request=MembersInSerializer, responses=_responses({200: MembersOutputSerializer})
    )
    def post(self, request: Request, slug: str) -> Response:
        campaign = self.campaign
        serializer = MembersInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        for user in serializer.validated_data["usernames"]:
            services.membership_add(campaign=campaign, user=user)
        return self.get(request, slug)


class NextPairView(APIView):
    @extend_schema(
        request=None,
        responses=_responses({200: AssignmentOutputSerializer, 204: None, 503: ErrorSerializer}),
        description="Lease the next pair (or return the lease you already hold). 204 when "
        "nothing is left for you in this campaign; 503 `clips_pending` when the pairs left "
        "wait for their clips to render.",
    )
    def post(self, request: Request, slug: str) -> Response:
        campaign = _campaign(request, slug)
        assignment = services.assignment_lease_next(annotator=request.user, campaign=campaign)
        if assignment is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(assignment_payload(assignment))


class JudgmentSubmitView(APIView):
    # Every API call counts in "api"; a judgment also in "judgments" (per annotator).
    throttle_classes = [ScopedThrottle, JudgmentThrottle]

    @extend_schema(
        request=JudgmentInSerializer,
        responses=_responses({201: JudgmentOutputSerializer}),
        description="409 `already_judged` carries `judgment_id`, the judgment stored before.",
    )
    def post(self, request: Request, assignment_id: int) -> Response:
        serializer = JudgmentInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        submit = dict(
            annotator=request.user,
            assignment_id=assignment_id,
            choices=data["choices"],
            duration_ms=data.get("duration_ms"),
        )
        if not data["next"]:
            judgment = services.judgment_submit(**submit)
            return Response(_judgment_body(judgment), status=status.HTTP_201_CREATED)
        submitted = services.judgment_submit_and_lease_next(**submit)
        body = _judgment_body(submitted.judgment)
        body["next"] = assignment_payload(submitted.next) if submitted.next else None
        if submitted.next_refused is not None:
            body["next_detail"] = submitted.next_refused.message
        elif submitted.next is None:
            body["next_detail"] = "Nothing is left for you in this campaign."
        return Response(body, status=status.HTTP_201_CREATED)


def _judgment_body(judgment: Any) -> dict[str, Any]:
    return {
        "judgment": judgment.pk,
        # As the annotator saw the sides: "a"/"b" would tell which response the pair stores
        # first, i.e. the import order.
        "choices": choices_as_shown(judgment.choices, a_on_left=judgment.assignment.a_on_left),
    }


class SkipView(APIView):
    @extend_schema(request=SkipInSerializer, responses=_responses({201: SkipOutputSerializer}))
    def post(self, request: Request, assignment_id: int) -> Response:
        serializer = SkipInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        skip = services.skip_create(
            annotator=request.user,
            assignment_id=assignment_id,
            reason=serializer.validated_data["reason"],
        )
        return Response({"skip": skip.pk}, status=status.HTTP_201_CREATED)


class AssignmentView(APIView):
    @extend_schema(
        responses=_responses({200: AssignmentStaffOutputSerializer}, READ_ERRORS),
        description="A lease resolved to its pair, both items' source rows and the side "
        "each was shown on. For the campaign's managers.",
    )
    def get(self, request: Request, assignment_id: int) -> Response:
        assignment = Assignment.objects.filter(pk=assignment_id).first()
        campaign = (
            None if assignment is None else campaign_by_id(campaign_id=assignment.campaign_id)
        )
        if (
            assignment is None
            or campaign is None
            or not campaign_can(user=request.user, campaign=campaign, need=Need.MANAGE)
        ):
            raise NotFound(f"No lease {assignment_id} that you manage.", field="assignment_id")
        assignment.campaign = campaign
        return Response(selectors.assignment_staff_detail(assignment=assignment))


class RenewView(APIView):
    @extend_schema(request=None, responses=_responses({200: RenewOutputSerializer}))
    def post(self, request: Request, assignment_id: int) -> Response:
        assignment = services.assignment_renew(annotator=request.user, assignment_id=assignment_id)
        return Response({"assignment": assignment.pk, "expires_at": assignment.expires_at})


class BulkCreateView(ManagerView):
    """POST a JSON list of rows (or {"rows": [...]}) to create them all or none."""

    service: Any = None
    kind = ""
    row: Any = None

    def post(self, request: Request, slug: str) -> Response:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > settings.IMPORT_MAX_BYTES:
            return too_large(
                f"The body is more than {settings.IMPORT_MAX_BYTES} bytes, the limit per "
                "request. Split it into batches."
            )
        campaign = self.campaign  # checked before the body is read
        rows = request.data.get("rows") if isinstance(request.data, dict) else request.data
        created = type(self).service(campaign=campaign, rows=rows)
        ids = [obj.pk for obj in created]
        return Response({"created": len(ids), "ids": ids}, status=status.HTTP_201_CREATED)


def _bulk_schema(view: type[BulkCreateView]) -> type[BulkCreateView]:
    """The request of a bulk view: a list of its rows, or {"rows": [...]}."""
    name = view.row.__name__.removesuffix("Serializer")
    rows = PolymorphicProxySerializer(
        component_name=f"{name}s",
        serializers=[
            view.row(many=True),
            type(f"{name}sInSerializer", (serializers.Serializer,), {"rows": view.row(many=True)}),
        ],
        resource_type_field_name=None,
        many=False,
    )
    return extend_schema_view(
        post=extend_schema(
            request={"application/json": rows},
            responses=_responses({201: BulkCreatedOutputSerializer}),
            description="At most IMPORT_MAX_ROWS rows or IMPORT_MAX_BYTES bytes; all rows "
            "or none are stored, and the first bad one is named (`rows[i].field`).",
        )
    )(view)


@_bulk_schema
class PromptBulkView(BulkCreateView):
    service = services.prompts_bulk_create
    row = PromptRowSerializer


@_bulk_schema
class ItemBulkView(BulkCreateView):
    service = services.items_bulk_create
    row = ItemRowSerializer


PAIR_PAGE_LIMIT = 1000


@_bulk_schema
class PairBulkView(BulkCreateView):
    service = services.pairs_bulk_create
    row = PairRowSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("after", int, description="Return pairs with id > after."),
            OpenApiParameter(
                "limit", int, description=f"At most this many (1-{PAIR_PAGE_LIMIT}, default)."
            ),
        ],
        responses=_responses({200: PairPageOutputSerializer}, (400, *READ_ERRORS)),
        description="The campaign's pairs, each side with its dataset, episode and source "
        "rows (start, length), so judgments can be mapped to transitions.",
    )
    def get(self, request: Request, slug: str) -> Response:
        after = _int_param(request, "after", 0, low=0, high=_ID_MAX)
        limit = _int_param(request, "limit", PAIR_PAGE_LIMIT, low=1, high=PAIR_PAGE_LIMIT)
        rows = selectors.pairs_page(campaign=self.campaign, after=after, limit=limit)
        following = None
        if len(rows) == limit:
            query = request.query_params.copy()
            query["after"] = str(rows[-1]["id"])
            following = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
        return Response({"results": rows, "next": following})


# Pages of scores and labels: rows after a two-part key, `limit` at a time.
KEY_PAGE_LIMIT = 1000
KEY_PAGE_MAX = 10_000
_ID_MAX = 2**63 - 1


class KeysetPager:
    """The query parameters of a keyset page (`after_<first>`, `after_<second>`, `limit`),
    their schema, and the `next` link that carries the last key of a full page forward."""

    def __init__(self, first: str, second: str, what: str) -> None:
        self.names = (f"after_{first}", f"after_{second}")
        self.parameters = [
            OpenApiParameter(
                self.names[0], int, description=f"Return {what} after this {first} id ..."
            ),
            OpenApiParameter(
                self.names[1],
                int,
                description=f"... and, within that {first}, after this {second} id.",
            ),
            OpenApiParameter(
                "limit",
                int,
                description=f"At most this many (1-{KEY_PAGE_MAX}, default {KEY_PAGE_LIMIT}).",
            ),
        ]

    def parse(self, request: Request) -> dict[str, Any]:
        """`after` and `limit` for the selector; a bad value is a 400 naming its parameter."""
        after = tuple(_int_param(request, name, 0, low=0, high=_ID_MAX) for name in self.names)
        limit = _int_param(request, "limit", KEY_PAGE_LIMIT, low=1, high=KEY_PAGE_MAX)
        return {"after": after, "limit": limit}

    def next_link(self, request: Request, next_after: tuple[int, int] | None) -> str | None:
        if next_after is None:
            return None
        query = request.query_params.copy()
        for name, value in zip(self.names, next_after, strict=True):
            query[name] = str(value)
        return request.build_absolute_uri(f"{request.path}?{query.urlencode()}")


SCORES_PAGER = KeysetPager("item", "criterion", "scores")
LABELS_PAGER = KeysetPager("pair", "criterion", "labels")
KEYSET_DESCRIPTION = (
    "Rows in key order, `limit` at a time; follow `next` (null on the last page). The key "
    "survives a refit, so every row is returned exactly once; rows a refit adds behind the "
    "cursor show up in a new pass."
)


class ScoresView(ManagerView):
    @extend_schema(
        parameters=SCORES_PAGER.parameters,
        responses=_responses({200: ScoresOutputSerializer}, (400, *READ_ERRORS)),
        description=KEYSET_DESCRIPTION + " `updated_at` changes when a refit lands.",
    )
    def get(self, request: Request, slug: str) -> Response:
        campaign = self.campaign
        page = labeling_selectors.item_scores_page(campaign=campaign, **SCORES_PAGER.parse(request))
        state = labeling_selectors.aggregation_state(campaign=campaign)
        return Response(
            {
                "updated_at": state.last_finished_at if state else None,
                "judgments_used": state.judgments_used if state else 0,
                # False: the solver stopped before converging; the scores are its last
                # iterate, applied but not to be trusted blindly.
                "fit_converged": state.fit_converged if state else None,
                "fit_iterations": state.fit_iterations if state else 0,
                "fit_l2": state.fit_l2 if state else {},
                "scores": [
                    {
                        "item": r["item_id"],
                        "external_id": r["item__external_id"],
                        "criterion": r["criterion__slug"],
                        "score": r["score"],
                        "comparisons": r["comparisons"],
                    }
                    for r in page.rows
                ],
                "next": SCORES_PAGER.next_link(request, page.next_after),
            }
        )


class LabelsView(ManagerView):
    @extend_schema(
        parameters=LABELS_PAGER.parameters,
        responses=_responses({200: LabelsOutputSerializer}, (400, *READ_ERRORS)),
        description=KEYSET_DESCRIPTION,
    )
    def get(self, request: Request, slug: str) -> Response:
        page = labeling_selectors.pair_labels_page(
            campaign=self.campaign, **LABELS_PAGER.parse(request)
        )
        return Response(
            {
                "labels": [
                    {
                        "pair": r["pair_id"],
                        "item_a": r["pair__item_a_id"],
                        "item_b": r["pair__item_b_id"],
                        "criterion": r["criterion__slug"],
                        "prefer_a": r["prefer_a"],
                        "count": r["count"],
                    }
                    for r in page.rows
                ],
                "next": LABELS_PAGER.next_link(request, page.next_after),
            }
        )


def _int_param(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ServiceError(f"{name} must be an integer, not {raw!r}.", field=name) from None
    if not low <= value <= high:
        raise ServiceError(f"{name} must be between {low} and {high}.", field=name)
    return value


class JudgmentListView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("after", int, description="Return judgments with id > after."),
            OpenApiParameter("limit", int, description="At most this many (1-1000, default 100)."),
        ],
        responses=_responses({200: JudgmentPageOutputSerializer}, (400, *READ_ERRORS)),
        description="Incremental pull: pass the returned `next_after` as `after` next time. "
        "Annotators see only their own judgments.",
    )
    def get(self, request: Request, slug: str) -> Response:
        campaign = _campaign(request, slug)
        after = _int_param(request, "after", 0, low=0, high=2**63 - 1)
        limit = _int_param(request, "limit", 100, low=1, high=1000)
        rows = selectors.judgments_page(
            campaign=campaign,
            viewer=request.user,
            after=after,
            limit=limit,
            every=campaign_can(user=request.user, campaign=campaign, need=Need.MANAGE),
        )
        return Response({"results": rows, "next_after": rows[-1]["id"] if rows else after})


class ExportView(ManagerView):
    """Streams JSON Lines. `X-Row-Count` gives the number of lines the body will hold: the
    count and the rows are read in one snapshot, so it is exact while annotators submit. The
    body goes out with chunked transfer encoding and no Content-Length, from the first page
    on, so a stream cut by a failure ends without the final chunk and the client's HTTP
    library raises; a body with fewer lines than X-Row-Count was cut too."""

    what = "judgments"
    export = staticmethod(selectors.judgment_export)

    @extend_schema(
        responses=_responses({(200, "application/jsonl"): OpenApiTypes.STR}, READ_ERRORS),
        description="JSON Lines, one row per line; `X-Row-Count` gives the number of lines.",
    )
    def get(self, request: Request, slug: str) -> StreamingHttpResponse:
        campaign = self.campaign
        export = self.export(campaign=campaign)
        # The response closes the chunks when the body is sent or the client goes away,
        # which ends the export's read transaction either way.
        response = StreamingHttpResponse(
            export.chunks, content_type="application/jsonl; charset=utf-8"
        )
        response["Content-Disposition"] = (
            f'attachment; filename="{campaign.slug}-{self.what}.jsonl"'
        )
        response["X-Row-Count"] = str(export.rows)
        response["Cache-Control"] = "no-store"
        return response


class SkipExportView(ExportView):
    what = "skips"
    export = staticmethod(selectors.skip_export)


def _snapshot_payload(snapshot: Any) -> dict[str, Any]:
    done = snapshot.status == snapshot.Status.DONE
    return {
        "id": snapshot.pk,
        "campaign": snapshot.campaign.slug,
        "status": snapshot.status,
        "rows": snapshot.rows,
        "size": snapshot.size,
        "error": snapshot.error,
        "created_at": snapshot.created_at,
        "finished_at": snapshot.finished_at,
        "download": f"/api/v1/exports/{snapshot.pk}/download" if done else None,
    }


class ExportSnapshotCreateView(ManagerView):
    """Ask for a file snapshot of the judgments; poll it, then download it with Range."""

    @extend_schema(request=None, responses=_responses({202: ExportSnapshotOutputSerializer}))
    def post(self, request: Request, slug: str) -> Response:
        campaign = self.campaign
        snapshot = labeling_services.export_snapshot_request(campaign=campaign, user=request.user)
        return Response(_snapshot_payload(snapshot), status=status.HTTP_202_ACCEPTED)


def _snapshot(request: Request, snapshot_id: int) -> Any:
    """The snapshot, if the caller manages its campaign: 404 as for an unknown id if they
    cannot see the campaign, 403 if they only annotate in it."""
    snapshot = labeling_selectors.export_snapshot_for(snapshot_id=snapshot_id)
    try:
        campaign_checked(
            user=request.user,
            campaign=snapshot.campaign if snapshot else None,
            need=Need.MANAGE,
            name="",
        )
    except NotFound:
        raise NotFound(f"No export {snapshot_id}.", field="id") from None
    return snapshot


class ExportSnapshotView(ManagerView):
    @extend_schema(responses=_responses({200: ExportSnapshotOutputSerializer}, READ_ERRORS))
    def get(self, request: Request, snapshot_id: int) -> Response:
        return Response(_snapshot_payload(_snapshot(request, snapshot_id)))


class ExportSnapshotDownloadView(ManagerView):
    @extend_schema(
        responses=_responses(
            {
                (200, "application/jsonl"): OpenApiTypes.STR,
                (206, "application/jsonl"): OpenApiTypes.STR,
                416: None,
            },
            (400, *READ_ERRORS),
        ),
        description="Served with HTTP Range: 206 for a range, 416 for one past the end; 400 "
        "while the snapshot is not done.",
    )
    def get(self, request: Request, snapshot_id: int) -> Any:
        snapshot = _snapshot(request, snapshot_id)
        if snapshot.status != snapshot.Status.DONE:
            raise ServiceError(f"Export {snapshot_id} is {snapshot.status}, not done.", field="id")
        response = file_download(
            request,
            name=snapshot.file.name,
            filename=f"{snapshot.campaign.slug}-judgments-{snapshot.pk}.jsonl",
        )
        response["X-Row-Count"] = str(snapshot.rows)
        return response


def file_download(request: Request, *, name: str, filename: str) -> Any:
    """A stored file as an attachment named `filename` (ours, never a user's text), with
    HTTP Range, through nginx when it serves media."""
    response = ranged_file_response(
        request,
        storage=default_storage,
        name=name,
        accel_prefix=settings.MEDIA_ACCEL_REDIRECT_PREFIX,
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response

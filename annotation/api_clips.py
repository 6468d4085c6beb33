"""Staff endpoints for a trajectory campaign's clips: where rendering stands, and asking for
failed (or chosen) clips to be rendered again. Managers and owners only
(annotation/permissions.py); errors in the API's shape (annotation/errors.py)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from . import selectors
from .api import READ_ERRORS, WRITE_ERRORS, ManagerView, _int_param
from .api import _responses as _errors
from .errors import ServiceError
from .services import clips as clip_services

FAILED_LIMIT = 100
FAILED_MAX = 1000
RERENDER_MAX_IDS = 10_000
_ID_MAX = 2**63 - 1


_FAILED_ITEMS = inline_serializer(
    "ClipFailedItem",
    {
        "id": serializers.IntegerField(),
        "external_id": serializers.CharField(),
        "source_dataset_id": serializers.IntegerField(allow_null=True),
        "episode": serializers.CharField(),
        "start": serializers.IntegerField(allow_null=True),
        "length": serializers.IntegerField(allow_null=True),
        "error": serializers.CharField(),
    },
    many=True,
)


class ClipsView(ManagerView):
    @extend_schema(
        summary="Clip rendering status of a campaign",
        description=(
            "Items per clip status (none, pending, ready, failed), pairs ready and waiting "
            "for clips, and the failed items with their errors, by id, `limit` at a time; "
            "follow `next` (null on the last page)."
        ),
        parameters=[
            OpenApiParameter("after_item", int, description="Failed items after this id."),
            OpenApiParameter(
                "limit", int, description=f"At most this many (1-{FAILED_MAX}, default 100)."
            ),
        ],
        responses=_errors(
            {
                200: inline_serializer(
                    "ClipsOutput",
                    {
                        "counts": serializers.DictField(child=serializers.IntegerField()),
                        "pairs_ready": serializers.IntegerField(),
                        "pairs_waiting": serializers.IntegerField(),
                        "failed": _FAILED_ITEMS,
                        "next": serializers.CharField(allow_null=True),
                    },
                )
            },
            (400, *READ_ERRORS),
        ),
    )
    def get(self, request: Request, slug: str) -> Response:
        after = _int_param(request, "after_item", 0, low=0, high=_ID_MAX)
        limit = _int_param(request, "limit", FAILED_LIMIT, low=1, high=FAILED_MAX)
        summary = selectors.clips_summary(campaign=self.campaign, after=after, limit=limit)
        next_link = None
        if summary.next_after is not None:
            query = request.query_params.copy()
            query["after_item"] = str(summary.next_after)
            next_link = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
        return Response(
            {
                "counts": summary.counts,
                "pairs_ready": summary.pairs_ready,
                "pairs_waiting": summary.pairs_waiting,
                "failed": summary.failed,
                "next": next_link,
            }
        )


class _RerenderIn(serializers.Serializer):
    item_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=_ID_MAX),
        required=False,
        max_length=RERENDER_MAX_IDS,
        help_text="Items to render again; default every failed item of the campaign.",
    )


class ClipsRerenderView(ManagerView):
    @extend_schema(
        summary="Render clips again",
        description=(
            "Failed (or pending) clips among `item_ids`, default every failed clip, are "
            "rendered again. A ready clip is rendered again only if none of its pairs has a "
            "judgment or an open lease; those are listed under `kept`."
        ),
        request=_RerenderIn,
        responses=_errors(
            {
                202: inline_serializer(
                    "ClipsRerenderOutput",
                    {
                        "requested": serializers.ListField(child=serializers.IntegerField()),
                        "kept": serializers.ListField(child=serializers.IntegerField()),
                    },
                )
            },
            WRITE_ERRORS,
        ),
    )
    def post(self, request: Request, slug: str) -> Response:
        body = _RerenderIn(data=request.data or {})
        if not body.is_valid():
            field, problems = next(iter(body.errors.items()))
            while isinstance(problems, dict | list) and problems:  # a list's own errors nest
                problems = (
                    next(iter(problems.values())) if isinstance(problems, dict) else problems[0]
                )
            raise ServiceError(f"{field}: {problems}", field=field)
        ids = body.validated_data.get("item_ids")
        result = clip_services.clips_rerender(campaign=self.campaign, item_ids=ids)
        return Response(
            {"requested": result.requested, "kept": result.judged},
            status=status.HTTP_202_ACCEPTED,
        )

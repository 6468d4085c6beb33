"""REST API v1 for RL datasets: upload (multipart, streamed to disk), list and detail.

Staff only (annotation/permissions.py: `can_view_datasets`, `can_import_datasets`). The
upload's body is never held in memory and never read past DATASET_MAX_BYTES
(annotation/uploads.py); the import itself is `services.dataset_import`, all or nothing.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.http.response import HttpResponseBase
from drf_spectacular.authentication import SessionScheme
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, views
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from feedback_app.authentication import CachedTokenAuthentication

from . import selectors
from .api import READ_ERRORS, WRITE_ERRORS, APIView, _int_param, _responses
from .errors import NotFound
from .permissions import DatasetPermission, can_import_datasets
from .serializers import (
    DatasetDetailOutputSerializer,
    DatasetOutputSerializer,
    DatasetPageOutputSerializer,
    DatasetUploadInSerializer,
)
from .uploads import DatasetUploadHandler, upload_import, upload_length_check

PAGE_LIMIT = 100
PAGE_MAX = 1000


class DatasetSessionAuthentication(SessionAuthentication):
    """Session sign-in for the dataset endpoints. DRF's CSRF check reads the form, i.e. the
    whole upload, while authenticating -- before the permission check. Here it runs only for
    users who may import: anyone else is refused (403) without the body being read, and a
    refused request changes nothing, so it needs no CSRF check."""

    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        user = getattr(request._request, "user", None)
        if not user or not user.is_active:
            return None
        if can_import_datasets(user=user):
            self.enforce_csrf(request)
        return (user, None)


class DatasetSessionScheme(SessionScheme):
    """The schema's cookie sign-in for the dataset endpoints' own session class: the same
    cookie as `cookieAuth`, under its own name (one name per class in the schema)."""

    target_class = "annotation.api_datasets.DatasetSessionAuthentication"
    name = "datasetCookieAuth"


def _payload(dataset: Any) -> dict[str, Any]:
    """The dataset as the API shows it: never its directory under DATASETS_ROOT."""
    return {
        "id": dataset.pk,
        "name": dataset.name,
        "source_format": dataset.source_format,
        "env_id": dataset.env_id,
        "observation_space": dataset.observation_space,
        "action_space": dataset.action_space,
        "fields": dataset.fields,
        "transition_count": dataset.transition_count,
        "episode_count": dataset.episode_count,
        "created_at": dataset.created_at,
    }


class DatasetListView(APIView):
    authentication_classes = [CachedTokenAuthentication, DatasetSessionAuthentication]
    permission_classes = [DatasetPermission]
    parser_classes = [MultiPartParser]
    upload: DatasetUploadHandler | None = None

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        # Installed before anything reads the body (DRF views are csrf_exempt, so the CSRF
        # middleware has not); the temporary file goes whatever the answer.
        if request.method == "POST":
            self.upload = DatasetUploadHandler.install(request)
        try:
            return super().dispatch(request, *args, **kwargs)
        finally:
            if self.upload is not None:
                self.upload.discard()

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        # Not api.APIView's: it would read a chunked body into memory. A chunked upload is
        # refused instead (upload_length_check).
        return views.APIView.initialize_request(self, request, *args, **kwargs)

    @extend_schema(
        operation_id="v1_datasets_list",
        parameters=[
            OpenApiParameter("before", int, description="Return datasets with id < before."),
            OpenApiParameter(
                "limit", int, description=f"At most this many (1-{PAGE_MAX}, default {PAGE_LIMIT})."
            ),
        ],
        responses=_responses({200: DatasetPageOutputSerializer}, (400, *READ_ERRORS)),
        description="Datasets, newest first; follow `next` (null on the last page).",
    )
    def get(self, request: Request) -> Response:
        before = _int_param(request, "before", 0, low=0, high=2**63 - 1)
        limit = _int_param(request, "limit", PAGE_LIMIT, low=1, high=PAGE_MAX)
        rows = selectors.datasets_page(before=before, limit=limit)
        next_link = None
        if len(rows) == limit:
            query = request.query_params.copy()
            query["before"] = str(rows[-1].pk)
            next_link = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
        return Response({"results": [_payload(d) for d in rows], "next": next_link})

    @extend_schema(
        request={"multipart/form-data": DatasetUploadInSerializer},
        responses=_responses({201: DatasetOutputSerializer}, (*WRITE_ERRORS, 411)),
        description="Import a dataset file (multipart form: `file`, `format`, `name`, "
        "optional `env`). The file is streamed to disk and refused with 413 once it passes "
        "DATASET_MAX_BYTES; a bad file is refused (400) naming the field and row, and "
        "nothing is stored; a taken name answers 409. Needs a Content-Length (411 without).",
    )
    def post(self, request: Request) -> Response:
        upload = self.upload
        assert upload is not None
        upload_length_check(request._request)
        serializer = DatasetUploadInSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        dataset = upload_import(
            upload=upload, source_format=data["format"], name=data["name"], env_id=data["env"]
        )
        dataset = selectors.dataset_by_id(dataset_id=dataset.pk) or dataset  # created_at
        return Response(_payload(dataset), status=status.HTTP_201_CREATED)


class DatasetDetailView(APIView):
    permission_classes = [DatasetPermission]

    @extend_schema(
        responses=_responses({200: DatasetDetailOutputSerializer}, READ_ERRORS),
        description="One dataset, with a summary of its episodes: counts, lengths "
        "(min, median, max) and the policies named by the source.",
    )
    def get(self, request: Request, dataset_id: int) -> Response:
        dataset = selectors.dataset_by_id(dataset_id=dataset_id)
        if dataset is None:
            raise NotFound(f"No dataset {dataset_id}.", field="dataset_id")
        summary = selectors.dataset_episode_summary(dataset=dataset)
        return Response({**_payload(dataset), "episodes": summary.__dict__})

"""Staff endpoints for a trajectory campaign's reward labels (labeling/services/reward_labels.py):
the versions computed so far, newest first, and each version's labels as a NumPy ``.npy``
(one float32 per row of the imported dataset, in its order). Managers and owners only."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from labeling import selectors as labeling_selectors

from .api import READ_ERRORS, ManagerView, _responses, file_download
from .errors import NotFound, ServiceError

_LABELINGS = inline_serializer(
    "RewardLabeling",
    {
        "id": serializers.IntegerField(),
        "method": serializers.ChoiceField(choices=["orl", "orl-exact"]),
        "status": serializers.ChoiceField(choices=["running", "done", "failed"]),
        "error": serializers.CharField(),
        "criterion": serializers.CharField(),
        "aggregation_seq": serializers.IntegerField(),
        "judgments_used": serializers.IntegerField(),
        "pairs_used": serializers.IntegerField(),
        "transitions": serializers.IntegerField(),
        "covered": serializers.IntegerField(),
        "coverage": serializers.FloatField(),
        "objective": serializers.FloatField(allow_null=True),
        "iterations": serializers.IntegerField(allow_null=True),
        "converged": serializers.BooleanField(allow_null=True),
        "seconds": serializers.FloatField(allow_null=True),
        "created_at": serializers.DateTimeField(),
        "finished_at": serializers.DateTimeField(allow_null=True),
        "download": serializers.CharField(allow_null=True),
    },
    many=True,
)


class RewardLabelsView(ManagerView):
    @extend_schema(
        summary="Reward-label versions of a trajectory campaign",
        responses=_responses(
            {200: inline_serializer("RewardLabelings", {"results": _LABELINGS})},
            READ_ERRORS,
        ),
        description="Newest first. `orl`: closed form (each step of a pair's first segment "
        "+(2y-1), of the second -(2y-1), averaged where segments overlap); `orl-exact`: the "
        "per-step rewards in [-1, 1] that maximise the Bradley-Terry likelihood of the pairs. "
        "Recomputed after each aggregation run.",
    )
    def get(self, request: Request, slug: str) -> Response:
        rows = labeling_selectors.reward_labelings(campaign=self.campaign)
        for row in rows:
            row["download"] = (
                f"/api/v1/campaigns/{self.campaign.slug}/reward-labels/{row['id']}/download"
                if row["status"] == "done"
                else None
            )
        return Response({"results": rows})


class RewardLabelsDownloadView(ManagerView):
    @extend_schema(
        summary="A reward-label version as a .npy file",
        responses=_responses(
            {(200, "application/octet-stream"): OpenApiTypes.BINARY}, (400, *READ_ERRORS)
        ),
        description="`numpy.load` reads it: float32, one value per row of the imported "
        "dataset in its order (0 where no judged segment covers the row).",
    )
    def get(self, request: Request, slug: str, labeling_id: int) -> Any:
        labeling = labeling_selectors.reward_labeling(
            campaign=self.campaign, labeling_id=labeling_id
        )
        if labeling is None:
            raise NotFound(f"No reward labels {labeling_id} in this campaign.", field="id")
        if labeling.status != labeling.Status.DONE:
            raise ServiceError(f"Reward labels {labeling_id} are {labeling.status}.", field="id")
        return file_download(
            request,
            name=labeling.file.name,
            filename=f"{self.campaign.slug}-{labeling.method}-{labeling.pk}.npy",
        )

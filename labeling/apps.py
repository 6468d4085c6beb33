from typing import Any

from django.apps import AppConfig

from annotation.events import judgments_committed


def _judgments_committed(sender: Any, *, campaign_id: int, **kwargs: Any) -> None:
    from .services import aggregation_request  # models are loaded only once apps are ready

    aggregation_request(campaign_id=campaign_id)


class LabelingConfig(AppConfig):
    name = "labeling"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # New judgments schedule an aggregation of their campaign (labeling/services).
        judgments_committed.connect(_judgments_committed, dispatch_uid="labeling_aggregate")

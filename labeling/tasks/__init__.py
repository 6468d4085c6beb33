"""Celery entry points of the labeling app, by concern. Task names are fixed (`name=`) so
routes and queued messages do not depend on the module layout."""

from .aggregation import aggregate_campaign, aggregation_sweep
from .exports import build_export_snapshot, export_snapshot_sweep
from .reward_labels import reward_labels, reward_labels_sweep

__all__ = [
    "aggregate_campaign",
    "aggregation_sweep",
    "build_export_snapshot",
    "export_snapshot_sweep",
    "reward_labels",
    "reward_labels_sweep",
]

"""Writes of the labeling app, by concern: aggregation runs, export snapshots and reward
labels."""

from .aggregation import (
    aggregation_failed,
    aggregation_request,
    aggregation_requeue_stale,
    aggregation_run,
)
from .exports import export_snapshot_build, export_snapshot_request

__all__ = [
    "aggregation_failed",
    "aggregation_request",
    "aggregation_requeue_stale",
    "aggregation_run",
    "export_snapshot_build",
    "export_snapshot_request",
]

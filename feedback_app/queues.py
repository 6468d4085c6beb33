"""The Celery queues, one per workload, so a retrain never delays an aggregation."""

from enum import StrEnum


class Queue(StrEnum):
    DEFAULT = "default"
    LABELS = "labels"  # aggregation, reward labels: short, latency-sensitive
    TRAINING = "training"  # reward-model retrains: long, may want a GPU
    EXPORTS = "exports"  # dataset snapshots
    MEDIA = "media"  # clip rendering

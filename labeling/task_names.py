"""The names of the labeling app's Celery tasks, in a module that imports nothing.

Services send tasks by name (`feedback_app.celery.app.send_task`) and the task modules
register under these names, so `labeling.services` and `labeling.tasks` never import each
other; `feedback_app/celery.py` routes each name to its queue."""

AGGREGATE_CAMPAIGN = "labeling.tasks.aggregate_campaign"
AGGREGATION_SWEEP = "labeling.tasks.aggregation_sweep"
BUILD_EXPORT_SNAPSHOT = "labeling.tasks.build_export_snapshot"
EXPORT_SNAPSHOT_SWEEP = "labeling.tasks.export_snapshot_sweep"
REWARD_LABELS = "labeling.tasks.reward_labels"
REWARD_LABELS_SWEEP = "labeling.tasks.reward_labels_sweep"

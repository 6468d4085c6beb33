import os

from celery import Celery
from kombu import Queue as KombuQueue

from .queues import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_app.settings")

app = Celery("feedback_app")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [KombuQueue(q.value) for q in Queue]
app.conf.task_default_queue = Queue.DEFAULT.value
app.conf.task_routes = {
    "labeling.tasks.aggregate_campaign": {"queue": Queue.LABELS.value},
    "labeling.tasks.aggregation_sweep": {"queue": Queue.LABELS.value},
    "labeling.tasks.build_export_snapshot": {"queue": Queue.EXPORTS.value},
    "labeling.tasks.export_snapshot_sweep": {"queue": Queue.DEFAULT.value},
}
app.autodiscover_tasks()

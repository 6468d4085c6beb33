import os

from celery import Celery
from kombu import Queue as KombuQueue

from annotation import task_names as annotation_tasks
from labeling import task_names

from .queues import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedback_app.settings")

app = Celery("feedback_app")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [KombuQueue(q.value) for q in Queue]
app.conf.task_default_queue = Queue.DEFAULT.value
app.conf.task_routes = {
    task_names.AGGREGATE_CAMPAIGN: {"queue": Queue.LABELS.value},
    task_names.AGGREGATION_SWEEP: {"queue": Queue.LABELS.value},
    task_names.BUILD_EXPORT_SNAPSHOT: {"queue": Queue.EXPORTS.value},
    task_names.EXPORT_SNAPSHOT_SWEEP: {"queue": Queue.DEFAULT.value},
    task_names.REWARD_LABELS: {"queue": Queue.LABELS.value},
    task_names.REWARD_LABELS_SWEEP: {"queue": Queue.LABELS.value},
    annotation_tasks.RENDER_CLIPS: {"queue": Queue.MEDIA.value},
    annotation_tasks.CLIPS_SWEEP: {"queue": Queue.DEFAULT.value},
    annotation_tasks.DATASETS_SWEEP: {
        "queue": Queue.DEFAULT.value
    },  # web and workers share DATASETS_ROOT
}
app.autodiscover_tasks()

"""The names of the annotation app's Celery tasks, in a module that imports nothing.

Services send tasks by name (`feedback_app.celery.app.send_task`) and annotation/tasks.py
registers under these names, so services never import the tasks; `feedback_app/celery.py`
routes each name to its queue."""

RENDER_CLIPS = "annotation.tasks.render_clips"
CLIPS_SWEEP = "annotation.tasks.clips_sweep"
DATASETS_SWEEP = "annotation.tasks.datasets_sweep"

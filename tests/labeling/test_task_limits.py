"""Every task ends before the broker would hand its message to a second worker.

With acks_late, Redis keeps an unacknowledged message and delivers it again once the
visibility timeout has passed; a task still running then runs twice at once. So every task
has a hard time limit, and it is below the visibility timeout by a margin."""

import pytest

from feedback_app.celery import app

MARGIN = 120  # seconds: the worker's kill, the ack and clock skew between hosts


def visibility_timeout(broker_url, transport_options):
    """Seconds after which the broker redelivers an unacknowledged message; None when it
    never does (the embedded filesystem transport hands a message out once)."""
    if broker_url.startswith("filesystem:"):
        return None
    return transport_options.get("visibility_timeout", 3600)  # kombu's Redis default


def test_the_visibility_timeout_is_read_for_each_broker():
    assert visibility_timeout("filesystem://", {"data_folder_in": "/tmp"}) is None
    assert visibility_timeout("redis://h:6379/0", {}) == 3600
    assert visibility_timeout("redis://h:6379/0", {"visibility_timeout": 7200}) == 7200


@pytest.fixture(scope="module")
def tasks():
    app.loader.import_default_modules()  # autodiscovery, as a worker does at start
    return {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}


def test_every_task_has_a_time_limit_below_the_visibility_timeout(tasks):
    timeout = visibility_timeout(app.conf.broker_url, app.conf.broker_transport_options or {})
    for name, task in tasks.items():
        hard = task.time_limit or app.conf.task_time_limit
        soft = task.soft_time_limit or app.conf.task_soft_time_limit
        assert hard, f"{name} has no time limit"
        assert soft is None or soft < hard, name
        if timeout is not None:
            assert hard <= timeout - MARGIN, f"{name}: {hard} s against {timeout} s"
    assert {"labeling.tasks.build_export_snapshot", "labeling.tasks.export_snapshot_sweep"} <= (
        set(tasks)
    )


def test_every_beat_entry_runs_a_registered_task(tasks):
    schedule = app.conf.beat_schedule
    assert {entry["task"] for entry in schedule.values()} <= set(tasks)
    sweeps = [e for e in schedule.values() if e["task"] == "labeling.tasks.export_snapshot_sweep"]
    assert len(sweeps) == 1 and sweeps[0]["schedule"] <= 60

"""File snapshots of a campaign's judgments, written by a real worker on the exports queue and
downloaded with HTTP Range."""

import time
from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.db.models.functions import Now

from feedback_app.celery import app
from labeling.models import ExportSnapshot
from labeling.services import export_snapshot_build
from tests.annotation.test_export import (
    HeldSubmit,
    bulk_judgments,
    commit_after_count,
    judgment_committed_besides,
)
from tests.factories import UserFactory, text_campaign


@pytest.fixture
def exports_worker(transactional_db):
    app.control.purge()
    with start_worker(
        app, pool="solo", concurrency=1, perform_ping_check=False, queues=["exports"]
    ) as w:
        yield w


def test_snapshot_is_built_by_the_exports_worker_and_downloads_in_ranges(
    exports_worker, client, staff, media_root
):
    users = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=50, responses=3, members=users)
    total = bulk_judgments(campaign, users)
    client.force_login(staff)
    r = client.post(f"/api/v1/campaigns/{campaign.slug}/exports/")
    assert r.status_code == 202 and r.json()["status"] == "pending"
    url = f"/api/v1/exports/{r.json()['id']}/"
    deadline = time.monotonic() + 30
    while (snap := client.get(url).json())["status"] != "done":
        assert snap["status"] != "failed" and time.monotonic() < deadline, snap
        time.sleep(0.2)
    assert snap["rows"] == total
    streamed = b"".join(
        client.get(f"/api/v1/campaigns/{campaign.slug}/export/judgments.jsonl").streaming_content
    )
    whole = client.get(snap["download"])
    body = b"".join(whole.streaming_content)
    assert whole.status_code == 200 and body == streamed and whole["X-Row-Count"] == str(total)
    assert whole["Content-Type"] == "application/jsonl"
    part = client.get(snap["download"], HTTP_RANGE="bytes=100-1099")
    assert part.status_code == 206 and b"".join(part.streaming_content) == body[100:1100]
    name = ExportSnapshot.objects.get().file.name
    assert name.startswith("exports/") and campaign.slug not in name  # unguessable


@pytest.mark.django_db
def test_snapshots_are_staff_only_and_a_rebuild_is_harmless(client, staff, media_root):
    user = UserFactory()
    campaign = text_campaign(n_prompts=5, responses=2, members=[user])
    bulk_judgments(campaign, [user])
    snapshot = ExportSnapshot.objects.create(campaign=campaign, token="f" * 32)
    done = export_snapshot_build(snapshot_id=snapshot.pk)
    assert done.status == "done" and done.rows == 5
    again = export_snapshot_build(snapshot_id=snapshot.pk)
    assert again.file.name == done.file.name and again.rows == 5
    client.force_login(user)
    assert client.get(f"/api/v1/exports/{snapshot.pk}/download").status_code == 403
    assert client.post(f"/api/v1/campaigns/{campaign.slug}/exports/").status_code == 403
    client.force_login(staff)
    assert client.get("/api/v1/exports/999/").status_code == 404
    pending = ExportSnapshot.objects.create(campaign=campaign, token="e" * 32)
    r = client.get(f"/api/v1/exports/{pending.pk}/download")
    assert r.status_code == 400 and "pending" in r.json()["detail"]


def snapshot_row(campaign, letter, **fields):
    return ExportSnapshot.objects.create(campaign=campaign, token=letter * 32, **fields)


def test_snapshot_holds_exactly_the_rows_it_counts_while_submits_commit(
    transactional_db, media_root
):
    users = UserFactory.create_batch(3)
    campaign = text_campaign(n_prompts=10, responses=3, members=users)
    total = bulk_judgments(campaign, users[:1])
    held = HeldSubmit(annotator=users[1], campaign=campaign)
    judgment_committed_besides(held, annotator=users[2])
    snapshot = snapshot_row(campaign, "a")
    with connection.execute_wrapper(commit_after_count(held)):
        done = export_snapshot_build(snapshot_id=snapshot.pk)
    assert held.committed
    assert done.status == "done", done.error
    assert done.rows == total + 1 == done.file.read().count(b"\n")


def test_one_build_at_a_time_and_a_rerun_after_a_crash_starts_from_nothing(
    transactional_db, media_root
):
    user = UserFactory()
    campaign = text_campaign(n_prompts=5, responses=2, members=[user])
    total = bulk_judgments(campaign, [user])
    snapshot = snapshot_row(campaign, "b", status="running", attempts=1)
    ExportSnapshot.objects.filter(pk=snapshot.pk).update(started_at=Now(), heartbeat_at=Now())
    # A build is alive (its heartbeat is fresh): a second delivery of the task does nothing.
    same = export_snapshot_build(snapshot_id=snapshot.pk)
    assert (same.status, same.attempts, same.file.name) == ("running", 1, "")
    # Its worker died after writing part of the file; once its heartbeat is stale, a rerun
    # claims the snapshot and writes the file again from nothing.
    base = f"exports/{'b' * 32}.jsonl"
    default_storage.save(base, ContentFile(b'{"half a line'))
    ExportSnapshot.objects.filter(pk=snapshot.pk).update(heartbeat_at=Now() - timedelta(hours=1))
    done = export_snapshot_build(snapshot_id=snapshot.pk)
    assert (done.status, done.attempts, done.rows, done.file.name) == ("done", 2, total, base)
    body = done.file.read()
    assert body.count(b"\n") == total and b"half a line" not in body


def test_lost_snapshot_tasks_are_found_and_rerun_by_the_sweep(exports_worker, media_root):
    from labeling.services.exports import MAX_ATTEMPTS, export_snapshot_requeue_lost

    user = UserFactory()
    campaign = text_campaign(n_prompts=5, responses=2, members=[user])
    total = bulk_judgments(campaign, [user])
    hour_ago = Now() - timedelta(hours=1)
    never_sent = snapshot_row(campaign, "c")  # its message was lost before a worker saw it
    died = snapshot_row(campaign, "d", status="running", attempts=1)  # its worker died
    alive = snapshot_row(campaign, "e", status="running", attempts=1)
    queued = snapshot_row(campaign, "f")  # waiting behind other exports: not lost
    hopeless = snapshot_row(campaign, "0", status="running", attempts=MAX_ATTEMPTS)
    rows = ExportSnapshot.objects.filter
    rows(pk=never_sent.pk).update(enqueued_at=hour_ago)
    rows(pk__in=[died.pk, hopeless.pk]).update(started_at=hour_ago, heartbeat_at=hour_ago)
    rows(pk=alive.pk).update(started_at=hour_ago, heartbeat_at=Now())
    rows(pk=queued.pk).update(enqueued_at=Now())

    assert sorted(export_snapshot_requeue_lost()) == [never_sent.pk, died.pk]
    deadline = time.monotonic() + 30
    while rows(pk__in=[never_sent.pk, died.pk], status="done").count() < 2:
        assert time.monotonic() < deadline, list(rows().values("pk", "status", "error"))
        time.sleep(0.2)
    assert rows(pk=never_sent.pk).get().attempts == 1 and rows(pk=died.pk).get().attempts == 2
    assert {s.rows for s in rows(pk__in=[never_sent.pk, died.pk])} == {total}
    assert rows(pk=alive.pk).get().status == "running" and rows(pk=queued.pk).get().attempts == 0
    gave_up = rows(pk=hopeless.pk).get()
    assert gave_up.status == "failed" and f"{MAX_ATTEMPTS} attempts" in gave_up.error
    assert export_snapshot_requeue_lost() == []


def test_a_failed_enqueue_leaves_the_snapshot_for_the_sweep(
    transactional_db, client, staff, monkeypatch
):
    from kombu.exceptions import OperationalError

    from labeling import task_names
    from labeling.services import exports as exports_service
    from labeling.services.exports import export_snapshot_requeue_lost

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to redis")

    campaign = text_campaign(n_prompts=2, responses=2)
    # The service sends the task by name through the Celery app (labeling/task_names.py).
    monkeypatch.setattr(exports_service.celery_app, "send_task", broker_down)
    client.force_login(staff)
    r = client.post(f"/api/v1/campaigns/{campaign.slug}/exports/")
    assert r.status_code == 202 and r.json()["status"] == "pending"
    snapshot = ExportSnapshot.objects.get()
    assert snapshot.enqueued_at is None  # never sent: the next sweep sends it
    sent = []

    def send_task(name, args=(), **kwargs):
        assert name == task_names.BUILD_EXPORT_SNAPSHOT
        sent.append(args[0])

    monkeypatch.setattr(exports_service.celery_app, "send_task", send_task)
    assert export_snapshot_requeue_lost() == [snapshot.pk] and sent == [snapshot.pk]
    snapshot.refresh_from_db()
    assert snapshot.status == "pending" and snapshot.enqueued_at is not None
    assert export_snapshot_requeue_lost() == []  # sent now; not again until it is stale


def test_a_running_build_keeps_its_heartbeat_fresh(transactional_db, media_root, monkeypatch):
    from annotation import selectors
    from labeling.services import exports

    monkeypatch.setattr(exports, "HEARTBEAT_EVERY", timedelta(seconds=0.05), raising=False)
    monkeypatch.setattr(selectors, "EXPORT_PAGE", 2, raising=False)
    user = UserFactory()
    campaign = text_campaign(n_prompts=6, responses=2, members=[user])
    total = bulk_judgments(campaign, [user])

    def slow_fetches(execute, sql, params, many, context):
        if sql.startswith("FETCH"):  # a batch of the export's rows
            time.sleep(0.1)
        return execute(sql, params, many, context)

    snapshot = snapshot_row(campaign, "1")
    with connection.execute_wrapper(slow_fetches):
        done = export_snapshot_build(snapshot_id=snapshot.pk)
    assert done.status == "done" and done.rows == total
    assert done.heartbeat_at - done.started_at >= timedelta(seconds=0.1)


@pytest.mark.parametrize("kind", ["time limit", "gave up"])
def test_a_build_that_cannot_finish_fails_with_a_clear_error(transactional_db, media_root, kind):
    from celery.exceptions import SoftTimeLimitExceeded

    from labeling.services.exports import MAX_ATTEMPTS

    user = UserFactory()
    campaign = text_campaign(n_prompts=3, responses=2, members=[user])
    bulk_judgments(campaign, [user])
    snapshot = snapshot_row(campaign, "2")

    def out_of_time(execute, sql, params, many, context):
        if sql.startswith("FETCH"):  # a batch of the export's rows
            raise SoftTimeLimitExceeded()
        return execute(sql, params, many, context)

    if kind == "time limit":
        with connection.execute_wrapper(out_of_time):
            done = export_snapshot_build(snapshot_id=snapshot.pk)
        assert "soft time limit" in done.error and "docs/deploy.md" in done.error
    else:
        ExportSnapshot.objects.filter(pk=snapshot.pk).update(attempts=MAX_ATTEMPTS)
        done = export_snapshot_build(snapshot_id=snapshot.pk)
        assert f"gave up after {MAX_ATTEMPTS} attempts" in done.error
    assert done.status == "failed" and done.finished_at is not None and not done.file

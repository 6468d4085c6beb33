"""File snapshots of a campaign's judgments, written by a real worker on the exports queue and
downloaded with HTTP Range."""

import time

import pytest
from celery.contrib.testing.worker import start_worker

from feedback_app.celery import app
from labeling.models import ExportSnapshot
from labeling.services import export_snapshot_build
from tests.annotation.test_export import bulk_judgments
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

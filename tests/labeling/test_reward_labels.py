"""Reward labels per transition for a trajectory campaign (labeling/services/reward_labels.py):
computed from the pairs' soft labels after aggregation, versioned, idempotent, failures
recorded and found again by the sweep; end to end through a real worker."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from celery.contrib.testing.worker import start_worker
from django.core.files.storage import default_storage
from rest_framework.test import APIClient

from annotation import services
from annotation.models import Campaign, ClipStatus, Item, Pair
from feedback_app.celery import app
from labeling.models import RewardLabeling
from labeling.services import aggregation, reward_labels
from tests.annotation.test_datasets import write_npz
from tests.factories import UserFactory

ROWS, EPISODE = 40, 10


def source_arrays() -> dict[str, np.ndarray]:
    timeouts = np.zeros(ROWS, dtype=bool)
    timeouts[EPISODE - 1 :: EPISODE] = True
    return {
        "observations": np.arange(ROWS, dtype=np.float32)[:, None],
        "actions": np.zeros((ROWS, 1), dtype=np.float32),
        "rewards": np.arange(ROWS, dtype=np.float32),  # later rows are better
        "terminals": np.zeros(ROWS, dtype=bool),
        "timeouts": timeouts,
    }


def campaign_with_judgments(tmp_path, *, annotators=3):
    services.dataset_import(
        path=write_npz(tmp_path / "d.npz", source_arrays()), source_format="npz", name="d"
    )
    campaign = services.campaign_create_from_dataset(
        name="c",
        slug="c",
        status=Campaign.Status.ACTIVE,
        judgments_per_pair=annotators,
        source={
            "dataset": "d",
            "segment_length": 5,
            "stride": 5,
            "pairs": 6,
            "sampling": "across_episode",
        },
    )
    Item.objects.filter(campaign=campaign).update(clip_status=ClipStatus.READY, clip="c.mp4")
    Pair.objects.filter(campaign=campaign).update(ready=True)
    users = UserFactory.create_batch(annotators)
    for user in users:
        services.membership_add(campaign=campaign, user=user)
        while lease := services.assignment_lease_next(annotator=user, campaign=campaign):
            pair = lease.pair
            # The segment with the later rows (higher true reward) is preferred.
            better_a = pair.item_a.start > pair.item_b.start
            shown_left_is_a = lease.a_on_left
            choice = "left" if better_a == shown_left_is_a else "right"
            services.judgment_submit(annotator=user, assignment_id=lease.pk, choices=choice)
    return campaign


def labels_of(labeling: RewardLabeling) -> np.ndarray:
    with default_storage.open(labeling.file.name, "rb") as fh:
        return np.load(fh)


@pytest.mark.django_db(transaction=True)
def test_closed_form_and_exact_labels_follow_the_judged_segments(tmp_path, monkeypatch):
    monkeypatch.setattr(app, "send_task", lambda *a, **k: None)  # no worker in this test
    campaign = campaign_with_judgments(tmp_path)
    aggregation.aggregation_run(campaign_id=campaign.pk)
    assert reward_labels.reward_labels_owed() == [campaign.pk]

    closed = reward_labels.reward_labeling_run(campaign_id=campaign.pk, method="orl")
    assert closed.status == "done" and closed.pairs_used == 6 and closed.judgments_used == 18
    values = labels_of(closed)
    assert values.shape == (ROWS,) and values.dtype == np.float32
    covered = np.zeros(ROWS, dtype=bool)
    for pair in Pair.objects.filter(campaign=campaign).select_related("item_a", "item_b"):
        a, b = pair.item_a, pair.item_b
        covered[a.start : a.start + a.length] = True
        covered[b.start : b.start + b.length] = True
        sums = values[a.start : a.start + 5].sum(), values[b.start : b.start + 5].sum()
        # Every annotator preferred the later segment.
        assert (sums[0] > sums[1]) == (a.start > b.start)
    assert closed.covered == covered.sum() and (values[~covered] == 0).all()
    assert set(np.unique(np.round(values[covered], 6))) <= {-1.0, 0.0, 1.0, -0.5, 0.5}

    exact = reward_labels.reward_labeling_run(campaign_id=campaign.pk, method="orl-exact")
    assert exact.status == "done" and exact.converged and exact.objective is not None
    exact_values = labels_of(exact)
    assert (np.abs(exact_values) <= 1 + 1e-6).all()
    # Same inputs again: nothing to do, no new version.
    assert reward_labels.reward_labeling_run(campaign_id=campaign.pk, method="orl") is None
    assert RewardLabeling.objects.filter(campaign=campaign).count() == 2
    assert reward_labels.reward_labels_owed() == []

    # Staff read the versions and download the labels as .npy; annotators may not.
    api = APIClient()
    api.force_authenticate(UserFactory(is_staff=True, is_superuser=True))
    listed = api.get("/api/v1/campaigns/c/reward-labels/").json()["results"]
    assert [row["method"] for row in listed] == ["orl-exact", "orl"]
    assert listed[1]["coverage"] == pytest.approx(covered.mean())
    assert listed[1]["judgments_used"] == 18 and listed[1]["criterion"] == "overall"
    download = api.get(listed[1]["download"])
    assert download.status_code == 200
    body = b"".join(download.streaming_content)
    assert np.array_equal(np.load(io.BytesIO(body)), values)
    annotator = campaign.members.first()
    api.force_authenticate(annotator)
    assert api.get("/api/v1/campaigns/c/reward-labels/").status_code == 403
    assert api.get(listed[1]["download"]).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_a_failed_labeling_is_recorded_and_the_sweep_still_owes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(app, "send_task", lambda *a, **k: None)
    campaign = campaign_with_judgments(tmp_path)
    aggregation.aggregation_run(campaign_id=campaign.pk)

    def broken(**kwargs):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(reward_labels.orl, "closed_form", broken)
    with pytest.raises(RuntimeError):
        reward_labels.reward_labeling_run(campaign_id=campaign.pk, method="orl")
    failed = RewardLabeling.objects.get(campaign=campaign)
    assert failed.status == "failed" and "solver exploded" in failed.error
    assert reward_labels.reward_labels_owed() == [campaign.pk]


@pytest.fixture
def worker(transactional_db):
    app.control.purge()
    with start_worker(
        app, pool="solo", concurrency=1, perform_ping_check=False, queues=["labels", "default"]
    ) as w:
        yield w


def test_labels_follow_aggregation_on_the_workers_with_no_one_asking(worker, tmp_path):
    campaign = campaign_with_judgments(tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = set(
            RewardLabeling.objects.filter(campaign=campaign, status="done").values_list(
                "method", flat=True
            )
        )
        if done == {"orl", "orl-exact"}:
            break
        time.sleep(0.2)
    assert done == {"orl", "orl-exact"}


@pytest.mark.django_db(transaction=True)
def test_a_second_delivery_while_one_run_is_live_does_nothing_a_dead_one_is_redone(
    tmp_path, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone

    from labeling.models import AggregationState

    monkeypatch.setattr(app, "send_task", lambda *a, **k: None)
    campaign = campaign_with_judgments(tmp_path)
    aggregation.aggregation_run(campaign_id=campaign.pk)
    seq = AggregationState.objects.get(campaign=campaign).applied_seq
    live = RewardLabeling.objects.create(
        campaign=campaign, criterion=campaign.criteria.get(), method="orl", aggregation_seq=seq
    )
    # Another delivery of the same task while that run is computing: no second version.
    assert reward_labels.reward_labeling_run(campaign_id=campaign.pk, method="orl") is None
    assert RewardLabeling.objects.filter(campaign=campaign).count() == 1
    # The run's worker died long ago: the labels are owed again, and computed.
    RewardLabeling.objects.filter(pk=live.pk).update(
        created_at=timezone.now() - reward_labels.STALE_AFTER - timedelta(minutes=1)
    )
    assert reward_labels.reward_labels_owed() == [campaign.pk]
    done = reward_labels.reward_labeling_run(campaign_id=campaign.pk, method="orl")
    assert done is not None and done.status == "done"

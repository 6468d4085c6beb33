"""Aggregation through a real Celery worker consuming the labels queue over Redis."""

import threading
import time

import pytest
from celery.contrib.testing.worker import start_worker
from django.db import connection

from annotation import services
from feedback_app.celery import app
from labeling.models import AggregationState, ItemScore, PairLabel
from labeling.services import aggregation as labeling_services
from tests.factories import UserFactory, text_campaign


@pytest.fixture
def worker(transactional_db):
    app.control.purge()  # tasks left in the test Redis database by earlier tests
    with start_worker(
        app, pool="solo", concurrency=1, perform_ping_check=False, queues=["labels", "default"]
    ) as w:
        yield w


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def judge(user, campaign, choice):
    """`choice` canonical ("a" = item_a), given as the side the lease shows item_a on."""
    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
    side = {
        "a": "left" if lease.a_on_left else "right",
        "b": "right" if lease.a_on_left else "left",
    }
    return services.judgment_submit(
        annotator=user, assignment_id=lease.pk, choices=side.get(choice, choice)
    )


def test_worker_aggregates_outside_the_web_process(worker):
    users = UserFactory.create_batch(3)
    campaign = text_campaign(n_prompts=1, responses=2, k=3, members=users)
    for user, choice in zip(users, ["a", "a", "tie"], strict=True):  # canonical: a means item_a
        judge(user, campaign, choice)
    state = lambda: AggregationState.objects.filter(campaign=campaign).first()  # noqa: E731
    assert wait_for(lambda: state() and state().judgments_used == 3 and not state().pending)
    label = PairLabel.objects.get(pair__campaign=campaign)
    assert label.count == 3 and label.prefer_a == pytest.approx(2.5 / 3)
    scores = {s.item_id: s.score for s in ItemScore.objects.filter(campaign=campaign)}
    pair = label.pair
    assert scores[pair.item_a_id] > 0 > scores[pair.item_b_id]


def test_judgment_committed_mid_run_triggers_one_more_run(worker, monkeypatch):
    a, b = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=1, responses=2, k=2, members=[a, b])
    real_fit = labeling_services.bradley_terry.fit
    calls = []

    def fit_with_a_judgment_arriving(**kwargs):
        calls.append(kwargs["comparisons"].total.sum())
        if len(calls) == 1:
            # Another annotator's judgment commits while this run is computing.
            t = threading.Thread(target=lambda: (judge(b, campaign, "right"), connection.close()))
            t.start()
            t.join()
        return real_fit(**kwargs)

    monkeypatch.setattr(labeling_services.bradley_terry, "fit", fit_with_a_judgment_arriving)
    judge(a, campaign, "left")
    state = lambda: AggregationState.objects.get(campaign=campaign)  # noqa: E731
    assert wait_for(lambda: state().runs_completed == 2 and not state().pending)
    time.sleep(1.0)  # and no third run follows
    final = state()
    assert final.runs_completed == 2 and final.started_seq == 2
    assert final.judgments_used == 2
    assert calls == [1.0, 2.0]
    assert PairLabel.objects.get(pair__campaign=campaign).count == 2


@pytest.fixture
def enqueued(monkeypatch):
    sent = []
    monkeypatch.setattr(
        labeling_services, "_enqueue", lambda campaign_id, countdown=0: sent.append(campaign_id)
    )
    return sent


@pytest.mark.django_db(transaction=True)
def test_only_one_run_is_pending_per_campaign(enqueued):
    campaign = text_campaign(n_prompts=1, responses=2)
    assert labeling_services.aggregation_request(campaign_id=campaign.pk) is True
    assert labeling_services.aggregation_request(campaign_id=campaign.pk) is False
    assert enqueued == [campaign.pk]
    labeling_services.aggregation_run(campaign_id=campaign.pk)
    assert labeling_services.aggregation_request(campaign_id=campaign.pk) is True
    assert enqueued == [campaign.pk, campaign.pk]


@pytest.mark.django_db(transaction=True)
def test_a_stale_run_never_overwrites_newer_results(enqueued):
    campaign = text_campaign(n_prompts=1, responses=2)
    AggregationState.objects.create(campaign=campaign, started_seq=5, applied_seq=7)
    # This run starts as number 6 and must drop its results: run 7 already applied newer ones.
    outcome = labeling_services.aggregation_run(campaign_id=campaign.pk)
    assert outcome == labeling_services.RunOutcome.SUPERSEDED
    assert not ItemScore.objects.exists()
    assert AggregationState.objects.get(campaign=campaign).finished_seq == 6


@pytest.mark.django_db(transaction=True)
def test_sweep_requeues_only_stale_pending_runs(enqueued):
    from datetime import timedelta

    from django.db.models.functions import Now

    stale, fresh, idle = (text_campaign(n_prompts=1, responses=2) for _ in range(3))
    # Database time, as the services compare it.
    long_ago = Now() - labeling_services.PENDING_GRACE - timedelta(seconds=30)
    AggregationState.objects.create(campaign=stale, pending=True, requested_at=long_ago)
    AggregationState.objects.create(campaign=fresh, pending=True, requested_at=Now())
    AggregationState.objects.create(campaign=idle, pending=False, requested_at=long_ago)
    assert labeling_services.aggregation_requeue_stale() == [stale.pk]
    assert enqueued == [stale.pk]
    assert labeling_services.aggregation_requeue_stale() == []  # its clock was reset

"""Aggregation under faults: no judgment is left unaggregated for long, whatever single part
fails -- the broker refusing a publish, the database dropping the connection under the
after-commit hook, a worker killed holding its countdown task or midway through a run --
and two runs of one campaign never overlap."""

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import redis
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.db import connection, transaction
from django.db.models.functions import Now

from annotation import services
from annotation.models import Judgment, Pair
from feedback_app.celery import app
from labeling.models import AggregationState, ItemScore
from labeling.services import aggregation as agg
from labeling.tasks import aggregate_campaign, aggregation_sweep
from tests.factories import UserFactory, judged_campaign, text_campaign

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def enqueued(monkeypatch):
    """What the services would have published, in order (no broker involved)."""
    sent: list[int] = []
    monkeypatch.setattr(agg, "_enqueue", lambda campaign_id, countdown=0: sent.append(campaign_id))
    return sent


def age(campaign, **fields_seconds_ago):
    """Move the state's timestamps back by the database's clock."""
    AggregationState.objects.filter(campaign=campaign).update(
        **{f: Now() - timedelta(seconds=s) for f, s in fields_seconds_ago.items()}
    )


def wait_for(predicate, timeout=30.0, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


# --- the request: never skipped, never blocked for long, never an error ---------------------


@pytest.mark.django_db(transaction=True)
def test_a_failed_enqueue_keeps_the_flag_and_the_sweep_enqueues(monkeypatch, caplog):
    campaign = text_campaign(n_prompts=1, responses=2)

    def broker_down(campaign_id, countdown=0):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(agg, "_enqueue", broker_down)
    with caplog.at_level(logging.ERROR, logger="labeling"):
        assert agg.aggregation_request(campaign_id=campaign.pk) is False
    assert AggregationState.objects.get(campaign=campaign).pending is True
    assert "could not enqueue" in caplog.text

    sent = []
    monkeypatch.setattr(agg, "_enqueue", lambda campaign_id, countdown=0: sent.append(campaign_id))
    assert agg.aggregation_requeue_stale() == []  # its countdown could still be running
    age(campaign, requested_at=30)
    assert agg.aggregation_requeue_stale() == [campaign.pk]
    assert sent == [campaign.pk]
    assert agg.aggregation_requeue_stale() == []  # once per staleness period, not every sweep


@pytest.mark.django_db(transaction=True)
def test_a_pending_flag_blocks_requests_for_seconds_not_minutes(
    enqueued, django_assert_num_queries
):
    campaign = text_campaign(n_prompts=1, responses=2)
    assert agg.aggregation_request(campaign_id=campaign.pk) is True
    with django_assert_num_queries(1):  # the common case: a run is pending, nothing to write
        assert agg.aggregation_request(campaign_id=campaign.pk) is False
    age(campaign, requested_at=30)  # the task was lost 30 s ago and beat is not running
    assert agg.aggregation_request(campaign_id=campaign.pk) is True
    assert enqueued == [campaign.pk, campaign.pk]


@pytest.mark.django_db(transaction=True)
def test_the_after_commit_hook_survives_a_dropped_connection(enqueued):
    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, members=[user])
    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
    db = connection.settings_dict

    def drop_this_connection():
        pid = connection.connection.info.backend_pid
        with psycopg.connect(
            host=db["HOST"] or "127.0.0.1",
            port=db["PORT"] or 5432,
            user=db["USER"] or "postgres",
            dbname=db["NAME"],
            autocommit=True,
        ) as other:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])
            assert wait_for(
                lambda: (
                    not other.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]
                    ).fetchone()
                )
            )

    try:
        with transaction.atomic():
            # Registered first, so it runs first after the commit: the scheduling hook then
            # finds its connection gone, as in the 500 answered for a stored judgment.
            transaction.on_commit(drop_this_connection)
            judgment = services.judgment_submit(
                annotator=user, assignment_id=lease.pk, choices="left"
            )
    finally:
        connection.close()  # whatever happened, later tests get a working connection
    assert Judgment.objects.filter(pk=judgment.pk).exists()
    state = AggregationState.objects.get(campaign=campaign)
    assert state.pending is True and enqueued == [campaign.pk]


@pytest.mark.django_db(transaction=True)
def test_a_request_that_cannot_reach_the_database_logs_and_the_sweep_catches_up(enqueued, caplog):
    campaign = judged_campaign()  # committed; the hook is about to run
    port = connection.settings_dict["PORT"]
    connection.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        connection.settings_dict["PORT"] = s.getsockname()[1]  # nothing listens: database down
    try:
        with caplog.at_level(logging.ERROR, logger="labeling"):
            assert agg.aggregation_request(campaign_id=campaign.pk) is False
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port
    assert "aggregation request" in caplog.text

    # The database is back: judgments newer than any run, and no flag, are owed a run.
    assert agg.aggregation_requeue_stale() == [campaign.pk]
    assert enqueued == [campaign.pk]
    agg.aggregation_run(campaign_id=campaign.pk)
    assert agg.aggregation_requeue_stale() == []
    pair = Pair.objects.get(campaign=campaign)
    Judgment.objects.create(
        pair=pair,
        annotator=UserFactory(),
        campaign=campaign,
        choices={"overall": "b"},
        shown_left=pair.item_a,
    )
    assert agg.aggregation_requeue_stale() == [campaign.pk]


# --- runs: one at a time, a killed one redone, an unconverged fit flagged --------------------


@pytest.mark.django_db(transaction=True)
def test_two_runs_of_one_campaign_never_overlap_and_a_request_meanwhile_is_kept(
    monkeypatch, enqueued
):
    campaign = judged_campaign()
    real_fit = agg.bradley_terry.fit
    fitting, finish = threading.Event(), threading.Event()
    fits = []

    def slow_fit(**kwargs):
        fits.append(threading.current_thread().name)
        fitting.set()
        finish.wait(5)
        return real_fit(**kwargs)

    monkeypatch.setattr(agg.bradley_terry, "fit", slow_fit)
    outcomes = {}

    def run(name):
        try:
            outcomes[name] = aggregate_campaign(campaign.pk)  # the task, run in this thread
        finally:
            connection.close()

    first = threading.Thread(target=run, args=("first",), name="first")
    assert agg.aggregation_request(campaign_id=campaign.pk) is True
    first.start()
    assert fitting.wait(10)
    # A judgment commits mid-run; its task is delivered while the first run still holds
    # the campaign.
    assert agg.aggregation_request(campaign_id=campaign.pk) is True
    second = threading.Thread(target=run, args=("second",), name="second")
    second.start()
    second.join(3)
    assert not second.is_alive() and fits == ["first"]
    finish.set()
    first.join(10)
    assert outcomes == {"first": "applied", "second": "busy"}
    # The second task, finding the campaign held, sent itself again for after the debounce:
    # the mid-run judgment is not dropped.
    assert enqueued == [campaign.pk, campaign.pk, campaign.pk]
    assert AggregationState.objects.get(campaign=campaign).pending is True


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_or_late_message_finds_nothing_owed():
    campaign = judged_campaign()
    AggregationState.objects.create(campaign=campaign, pending=True, requested_at=Now())
    assert aggregate_campaign(campaign.pk) == "applied"
    assert aggregate_campaign(campaign.pk) == "not owed"  # e.g. a killed worker's, an hour on
    state = AggregationState.objects.get(campaign=campaign)
    assert state.runs_completed == 1 and state.started_seq == 1


@pytest.mark.django_db(transaction=True)
def test_a_run_killed_midway_is_redone_by_the_sweep(monkeypatch, enqueued):
    campaign = judged_campaign()

    class WorkerKilled(BaseException):
        """Stands in for SIGKILL: no except clause of the run sees it."""

    def killed(**kwargs):
        raise WorkerKilled

    monkeypatch.setattr(agg.bradley_terry, "fit", killed)
    AggregationState.objects.create(campaign=campaign, pending=True, requested_at=Now())
    with pytest.raises(WorkerKilled):
        agg.aggregation_run(campaign_id=campaign.pk)
    state = AggregationState.objects.get(campaign=campaign)
    assert state.pending is False and state.runs_completed == 0  # cleared at its start
    age(campaign, last_started_at=10, requested_at=10)
    assert agg.aggregation_requeue_stale() == [campaign.pk]
    assert enqueued == [campaign.pk]


@pytest.mark.django_db(transaction=True)
def test_a_run_that_never_finishes_is_given_up_not_redone_forever(monkeypatch, enqueued):
    """A fit that always dies (out of memory, past the hard time limit) must not be redone by
    the sweep forever on the worker every campaign shares."""
    campaign = judged_campaign()

    class WorkerKilled(BaseException):
        """Stands in for SIGKILL: no except clause of the run sees it."""

    def killed(**kwargs):
        raise WorkerKilled

    monkeypatch.setattr(agg.bradley_terry, "fit", killed)
    AggregationState.objects.create(campaign=campaign, pending=True, requested_at=Now())
    outcomes = []
    for _ in range(agg.MAX_UNFINISHED_RUNS + 2):
        age(campaign, last_started_at=10, requested_at=10)
        if not agg.aggregation_requeue_stale():
            break
        try:
            outcomes.append(agg.aggregation_run(campaign_id=campaign.pk, only_if_owed=True))
        except WorkerKilled:
            outcomes.append("killed")
    assert outcomes == ["killed"] * agg.MAX_UNFINISHED_RUNS + [agg.RunOutcome.GAVE_UP]
    state = AggregationState.objects.get(campaign=campaign)
    assert "never finished" in state.last_error and state.started_seq == state.finished_seq
    # The next judgment tries again, and a fit that works now applies.
    monkeypatch.undo()
    monkeypatch.setattr(agg, "_enqueue", lambda campaign_id, countdown=0: None)
    assert agg.aggregation_run(campaign_id=campaign.pk) == agg.RunOutcome.APPLIED
    assert AggregationState.objects.get(campaign=campaign).unfinished_runs == 0


@pytest.mark.django_db(transaction=True)
def test_a_read_counts_and_streams_the_judgments_of_one_snapshot(monkeypatch):
    """The count that sizes the arrays and the stream that fills them are two statements: a
    judgment committed between them must be in both or in neither (it is owed to the next
    run, which its own request schedules)."""
    from labeling.services import aggregation_io

    campaign = judged_campaign()
    pair = Pair.objects.get(campaign=campaign)
    criterion = campaign.criteria.get()
    late = UserFactory()
    real_read = aggregation_io.rows_read

    def commit_another_then_read(**kwargs):
        def commit():
            try:
                Judgment.objects.create(
                    pair=pair,
                    annotator=late,
                    campaign=campaign,
                    choices={"overall": "b"},
                    shown_left=pair.item_a,
                )
            finally:
                connection.close()

        other = threading.Thread(target=commit)  # its own connection, committed at once
        other.start()
        other.join()
        return real_read(**kwargs)

    monkeypatch.setattr(aggregation_io, "rows_read", commit_another_then_read)
    judgments = aggregation_io.judgments_read(
        campaign_id=campaign.pk, criteria=[(criterion.pk, criterion.slug)]
    )
    assert Judgment.objects.filter(campaign=campaign).count() == 3
    assert len(judgments) == 2 and judgments.choices[criterion.pk].tolist() == [0, 0]


@pytest.mark.django_db(transaction=True)
def test_a_failed_run_is_recorded_and_not_retried_by_the_sweep(monkeypatch, enqueued):
    campaign = judged_campaign()

    def broken(**kwargs):
        raise ValueError("l2=0 needs a connected comparison graph")

    monkeypatch.setattr(agg.bradley_terry, "fit", broken)
    with pytest.raises(ValueError):
        agg.aggregation_run(campaign_id=campaign.pk)
    state = AggregationState.objects.get(campaign=campaign)
    assert "connected comparison graph" in state.last_error
    age(campaign, last_started_at=60)
    assert agg.aggregation_requeue_stale() == []  # a bug, not a lost task: no rerun loop


@pytest.mark.django_db(transaction=True)
def test_an_unconverged_fit_is_applied_and_recorded_as_such(monkeypatch, caplog):
    campaign = judged_campaign()
    real_fit = agg.bradley_terry.fit
    monkeypatch.setattr(agg.bradley_terry, "fit", lambda **kw: real_fit(**kw, max_iter=1))
    with caplog.at_level(logging.WARNING, logger="labeling"):
        agg.aggregation_run(campaign_id=campaign.pk)
    state = AggregationState.objects.get(campaign=campaign)
    assert state.fit_converged is False and state.fit_iterations == 1
    assert ItemScore.objects.filter(campaign=campaign).count() == 2  # applied, not dropped
    assert "did not converge" in caplog.text
    from rest_framework.test import APIClient

    from tests.factories import UserFactory

    api = APIClient()
    api.force_authenticate(UserFactory(is_staff=True, is_superuser=True))
    body = api.get(f"/api/v1/campaigns/{campaign.slug}/scores/").json()
    assert (body["fit_converged"], body["fit_iterations"]) == (False, 1)  # said, not hidden

    monkeypatch.setattr(agg.bradley_terry, "fit", real_fit)
    agg.aggregation_run(campaign_id=campaign.pk)
    state = AggregationState.objects.get(campaign=campaign)
    assert state.fit_converged is True and state.fit_iterations > 1


# --- a real worker killed holding its countdown task -----------------------------------------


def test_the_sweep_runs_every_few_seconds():
    entry = settings.CELERY_BEAT_SCHEDULE["aggregation-sweep"]
    assert entry["task"] == aggregation_sweep.name and entry["schedule"] <= 5


@pytest.fixture
def killable_worker(transactional_db, tmp_path):
    """The Procfile's worker, as a process of its own on this test's database and Redis."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "ENV_FILE": "/dev/null",
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    line = next(
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("worker:")
    )
    log_path = tmp_path / "worker.log"
    app.control.purge()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*shlex.split(line.split(":", 1)[1]), "--concurrency", "1"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            assert wait_for(lambda: "ready." in log_path.read_text(), 30), log_path.read_text()
            yield proc, log_path
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            # What the killed worker held stays in Redis's unacked set for the visibility
            # timeout; drop it so that no later test's worker gets it.
            redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("unacked", "unacked_index")


def test_a_worker_killed_holding_the_countdown_task_catches_up_within_30s(
    killable_worker, settings
):
    worker, log_path = killable_worker
    users = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=1, responses=2, members=users)
    # A long debounce, so that the worker surely still holds the task when it is killed.
    settings.AGGREGATION_DELAY_SECONDS = 20
    for user, choice in zip(users, ["left", "left"], strict=True):
        lease = services.assignment_lease_next(annotator=user, campaign=campaign)
        services.judgment_submit(annotator=user, assignment_id=lease.pk, choices=choice)
    last_judgment = time.monotonic()
    assert wait_for(lambda: "aggregate_campaign[" in log_path.read_text(), 10)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    settings.AGGREGATION_DELAY_SECONDS = 0.2

    interval = settings.CELERY_BEAT_SCHEDULE["aggregation-sweep"]["schedule"]
    done = lambda: ItemScore.objects.filter(campaign=campaign).exists()  # noqa: E731
    with start_worker(
        app, pool="solo", concurrency=1, perform_ping_check=False, queues=["labels", "default"]
    ):
        deadline = last_judgment + 30
        while not done() and time.monotonic() < deadline:
            aggregation_sweep()  # what beat runs, at beat's interval
            wait_for(done, timeout=min(interval, deadline - time.monotonic()), every=0.2)
    assert done(), AggregationState.objects.filter(campaign=campaign).values().first()
    assert time.monotonic() - last_judgment < 30
    assert AggregationState.objects.get(campaign=campaign).judgments_used == 2

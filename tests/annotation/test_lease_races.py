"""Races and clocks of the lease engine: each test reproduces a defect found under a crowd.

The interleavings are forced, not hoped for: a helper transaction holds a row lock, the
request under test is started in a thread, and the helper acts only once PostgreSQL reports
that request as waiting for the lock (pg_stat_activity), so the outcome is the same every run.
"""

import threading
import time
from collections import Counter
from datetime import timedelta

import httpx
import pytest
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

from annotation import services
from annotation.errors import ServiceError
from annotation.models import Assignment, Campaign, Judgment, Membership, Pair, Skip
from tests.factories import UserFactory, text_campaign


def _waiting_for_a_lock(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return bool(row) and row[0] == "Lock"


class InThread:
    """Run `fn` in a thread with its own connection; `pid` is its backend's process id."""

    def __init__(self, fn):
        self.result = self.error = None
        self.pid = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fn,))
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self, fn):
        try:
            connection.ensure_connection()
            self.pid = connection.connection.info.backend_pid
            self._ready.set()
            self.result = fn()
        except BaseException as exc:  # surfaced through .join()
            self.error = exc
        finally:
            self._ready.set()
            connection.close()

    def wait_until_blocked(self):
        deadline = time.monotonic() + 10
        while not _waiting_for_a_lock(self.pid):
            assert self._thread.is_alive(), self.error
            assert time.monotonic() < deadline, "the request never waited for the lock"
            time.sleep(0.01)

    def join(self):
        self._thread.join(20)
        return self.result, self.error


@pytest.mark.django_db(transaction=True)
def test_a_skip_committed_while_a_submit_waits_for_the_pair_lock_wins():
    """Two tabs: the skip holds the pair lock when the submit arrives. The submit must decide
    on the lease as it is once it has the lock (skipped), not as it was before the wait."""
    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, k=2, members=[user])
    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
    pair_id = lease.pair_id
    with transaction.atomic():
        # What skip_create does, with the lock taken first so the submit queues behind it.
        Pair.objects.select_for_update().filter(pk=pair_id).exists()
        submit = InThread(
            lambda: services.judgment_submit(annotator=user, assignment_id=lease.pk, choices="left")
        )
        submit.wait_until_blocked()
        services.skip_create(annotator=user, assignment_id=lease.pk, reason="second tab")
    _, error = submit.join()
    assert isinstance(error, ServiceError), error
    assert Skip.objects.filter(pair_id=pair_id, annotator=user).count() == 1
    assert not Judgment.objects.filter(pair_id=pair_id, annotator=user).exists()
    assert Pair.objects.get(pk=pair_id).judgment_count == 0


@pytest.mark.django_db(transaction=True)
def test_a_request_that_waited_for_a_pair_that_filled_gets_another_free_pair():
    """Both pairs are locked for an instant; the request waits for the first, which fills
    meanwhile. The second pair is still free: "nothing left" would be a lie."""
    user, other = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=2, responses=2, k=1, members=[user, other])
    first, second = Pair.objects.filter(campaign=campaign).order_by("id")
    with transaction.atomic():
        list(Pair.objects.select_for_update().filter(campaign=campaign))
        request = InThread(
            lambda: services.assignment_lease_next(annotator=user, campaign=campaign)
        )
        request.wait_until_blocked()
        # The request waits for the first pair (the lease order); the other annotator fills it.
        Assignment.objects.create(
            pair=first,
            annotator=other,
            campaign=campaign,
            a_on_left=True,
            expires_at=timezone.now() + timedelta(minutes=5),
        )
    lease, error = request.join()
    assert error is None, error
    assert lease is not None, "answered nothing left while a pair had a free slot"
    assert lease.pair_id == second.pk


@pytest.mark.django_db
def test_an_annotator_is_not_shown_the_same_prompt_twice_running():
    """Four responses per prompt make six pairs per prompt. While another prompt has a free
    pair, the next lease comes from a different prompt than the last one."""
    user = UserFactory()
    campaign = text_campaign(n_prompts=3, responses=4, k=1, members=[user])
    prompts = []
    while (lease := services.assignment_lease_next(annotator=user, campaign=campaign)) is not None:
        prompts.append(lease.pair.item_a.prompt_id)
        services.judgment_submit(annotator=user, assignment_id=lease.pk, choices="left")
    assert len(prompts) == 18
    repeats = [n for n in range(1, 18) if prompts[n] == prompts[n - 1]]
    # 6 pairs of each of 3 prompts can always be interleaved: no prompt twice in a row.
    assert repeats == [], prompts
    assert Counter(prompts[:3]) == Counter(set(prompts)), "fresh pairs spread across prompts"


@pytest.mark.django_db
def test_removing_a_member_releases_their_lease_at_once():
    a, b = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=1, responses=2, k=1, members=[a, b])
    lease = services.assignment_lease_next(annotator=a, campaign=campaign)
    assert services.assignment_lease_next(annotator=b, campaign=campaign) is None
    Membership.objects.filter(user=a, campaign=campaign).delete()
    assert Assignment.objects.get(pk=lease.pk).status != Assignment.Status.OPEN
    assert services.assignment_lease_next(annotator=b, campaign=campaign) is not None


@pytest.mark.django_db
def test_deactivating_an_annotator_releases_their_leases_at_once():
    a, b = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=1, responses=2, k=1, members=[a, b])
    services.assignment_lease_next(annotator=a, campaign=campaign)
    a.is_active = False
    a.save()
    assert not Assignment.objects.filter(annotator=a, status=Assignment.Status.OPEN).exists()
    assert services.assignment_lease_next(annotator=b, campaign=campaign) is not None


@pytest.mark.django_db
def test_renewal_cannot_keep_a_lease_alive_past_its_maximum_life():
    from annotation.errors import LeaseLost

    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, k=1, members=[user], lease_seconds=60)
    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
    # The lease was taken long ago and renewed ever since: an idle tab on a timer.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE annotation_assignment SET leased_at = now() - interval '1 day' WHERE id = %s",
            [lease.pk],
        )
    with pytest.raises(LeaseLost, match="maximum"):
        services.assignment_renew(annotator=user, assignment_id=lease.pk)


@pytest.mark.django_db
def test_the_page_renews_on_a_timer_derived_from_the_lease_length(client):
    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, members=[user], lease_seconds=30)
    client.force_login(user)
    body = client.get(f"/c/{campaign.slug}/").content.decode()
    assert 'data-renew-every-ms="10000"' in body  # a third of the lease: two tries before expiry
    assert "every 60s" not in body


@pytest.mark.django_db(transaction=True)
def test_two_web_hosts_with_different_clocks_never_overfill_a_pair(gunicorn_factory):
    """Host B's clock runs 20 s ahead. A k=1 pair leased through host A for 10 s must not
    look expired to host B: every liveness decision uses the database's clock."""
    a, b = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=1, responses=2, k=1, members=[a, b])
    Campaign.objects.filter(pk=campaign.pk).update(lease_seconds=10)
    host_a = gunicorn_factory()
    host_b = gunicorn_factory(prefix=["faketime", "-f", "+20s"])

    def call(host, user, path, body=None):
        token, _ = Token.objects.get_or_create(user=user)
        return httpx.post(
            f"{host}/api/v1/{path}",
            json=body,
            headers={"Authorization": f"Token {token.key}"},
            timeout=20,
        )

    lease_a = call(host_a, a, f"campaigns/{campaign.slug}/next/")
    assert lease_a.status_code == 200
    lease_b = call(host_b, b, f"campaigns/{campaign.slug}/next/")
    assert lease_b.status_code == 204, "host B handed out a slot still leased to A"
    submitted = call(
        host_a, a, f"assignments/{lease_a.json()['assignment']}/judgment/", {"choices": "left"}
    )
    assert submitted.status_code == 201
    assert Judgment.objects.count() == 1


@pytest.mark.django_db
def test_reviving_an_expired_lease_never_gives_an_annotator_two_live_leases():
    """Tab 1's lease expired; tab 2 leased another pair. Tab 1's renewal must not bring the
    old lease back beside the new one."""
    from annotation.errors import LeaseLost

    user = UserFactory()
    campaign = text_campaign(n_prompts=2, responses=2, k=1, members=[user])
    old = services.assignment_lease_next(annotator=user, campaign=campaign)
    Assignment.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    new = services.assignment_lease_next(annotator=user, campaign=campaign)
    assert new.pk != old.pk
    with pytest.raises(LeaseLost, match="another pair"):
        services.assignment_renew(annotator=user, assignment_id=old.pk)
    live = Assignment.objects.filter(
        annotator=user, status=Assignment.Status.OPEN, expires_at__gt=timezone.now()
    )
    assert list(live.values_list("pk", flat=True)) == [new.pk]


@pytest.mark.django_db(transaction=True)
def test_a_request_that_found_its_pair_full_waits_for_another_holding_no_pair_lock():
    """No savepoint per candidate: a pair found full once locked stays locked until the
    request's transaction ends. Before it would wait for another pair it must end that
    transaction, or two such requests could wait on each other's pairs (a deadlock)."""
    user, other = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=2, responses=2, k=1, members=[user, other])
    first, second = Pair.objects.filter(campaign=campaign).order_by("id")
    release_second = threading.Event()

    def hold_second():
        with transaction.atomic():
            list(Pair.objects.select_for_update().filter(pk=second.pk))
            assert release_second.wait(20)

    holder = InThread(hold_second)
    time.sleep(0.2)  # the holder has its lock (it takes it before waiting)
    with transaction.atomic():
        list(Pair.objects.select_for_update().filter(pk=first.pk))
        request = InThread(
            lambda: services.assignment_lease_next(annotator=user, campaign=campaign)
        )
        request.wait_until_blocked()  # on the first pair: every pair was locked
        Assignment.objects.create(
            pair=first,
            annotator=other,
            campaign=campaign,
            a_on_left=True,
            expires_at=timezone.now() + timedelta(minutes=5),
        )
    # The first pair is full now; the second is still locked by the holder. The request
    # must let go of the first pair before it waits for the second.
    deadline = time.monotonic() + 10
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM annotation_pair WHERE id = %s FOR UPDATE SKIP LOCKED",
                [first.pk],
            )
            if cursor.fetchone() is not None:
                break
        assert time.monotonic() < deadline, "the request kept the full pair locked"
        time.sleep(0.01)
    request.wait_until_blocked()  # now on the second pair, holding no other
    release_second.set()
    assert holder.join()[1] is None
    lease, error = request.join()
    assert error is None, error
    assert lease is not None and lease.pair_id == second.pk


@pytest.mark.django_db(transaction=True)
def test_two_tabs_judging_the_same_lease_with_next_store_one_judgment_and_hold_one_lease():
    user = UserFactory()
    campaign = text_campaign(n_prompts=3, responses=2, k=1, members=[user])
    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
    start = threading.Barrier(2)

    def tab():
        start.wait(5)
        return services.judgment_submit_and_lease_next(
            annotator=user, assignment_id=lease.pk, choices="left"
        )

    tabs = [InThread(tab) for _ in range(2)]
    outcomes = [t.join() for t in tabs]
    stored = [result for result, error in outcomes if error is None]
    refused = [error for result, error in outcomes if error is not None]
    assert len(stored) == 1 and len(refused) == 1, outcomes
    assert isinstance(refused[0], ServiceError) and refused[0].code == "already_judged"
    assert Judgment.objects.filter(annotator=user).count() == 1
    open_leases = Assignment.objects.filter(annotator=user, status=Assignment.Status.OPEN)
    assert open_leases.count() == 1 and open_leases.get().pk == stored[0].next.pk

"""A crowd of tabs leasing, submitting, skipping, renewing while leases expire and
members are removed and re-added; the slot invariant is checked continuously in one
statement (one snapshot, one clock) by a separate connection."""

import contextlib
import random
import threading
import time

import pytest
from django.db import connection, transaction

from annotation import services
from annotation.errors import ServiceError
from annotation.models import Membership
from tests.factories import UserFactory, text_campaign

INVARIANT_SQL = """
SELECT p.id, p.judgment_count,
  (SELECT COUNT(*) FROM annotation_judgment j WHERE j.pair_id = p.id) AS judged,
  (SELECT COUNT(*) FROM annotation_assignment a
    WHERE a.pair_id = p.id AND a.status = 'open' AND a.expires_at > STATEMENT_TIMESTAMP()
      AND NOT EXISTS (SELECT 1 FROM annotation_judgment j
                      WHERE j.pair_id = p.id AND j.annotator_id = a.annotator_id)) AS live
FROM annotation_pair p WHERE p.campaign_id = %s
"""


@pytest.mark.django_db(transaction=True)
def test_slot_invariant_under_a_chaotic_crowd():
    k = 2
    users = UserFactory.create_batch(8)
    campaign = text_campaign(n_prompts=4, responses=3, k=k, members=users, lease_seconds=10)
    stop = threading.Event()
    violations, errors = [], []

    def tab(user, seed):
        rnd = random.Random(seed)
        try:
            while not stop.is_set():
                try:
                    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
                except ServiceError:
                    time.sleep(0.01)
                    continue
                if lease is None:
                    time.sleep(0.02)
                    continue
                for _ in range(rnd.randint(0, 2)):
                    with contextlib.suppress(ServiceError):
                        services.assignment_renew(annotator=user, assignment_id=lease.pk)
                r = rnd.random()
                try:
                    if r < 0.15:
                        services.skip_create(annotator=user, assignment_id=lease.pk)
                    elif r < 0.9:
                        services.judgment_submit(
                            annotator=user, assignment_id=lease.pk, choices="left"
                        )
                except ServiceError:
                    pass
        except BaseException as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    def expirer():
        # Time passing, sped up: an hour back, not a millisecond. A checker statement that
        # started before the expirer's transaction would otherwise see a lease that the engine
        # (deciding later) already saw as expired as still live: an artifact, not a defect.
        try:
            while not stop.is_set():
                with connection.cursor() as cur:
                    cur.execute(
                        "UPDATE annotation_assignment SET expires_at = now() - interval '1 hour'"
                        " WHERE status = 'open' AND random() < 0.3"
                    )
                time.sleep(0.01)
        except BaseException as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    def remover():
        try:
            rnd = random.Random(7)
            while not stop.is_set():
                user = rnd.choice(users)
                Membership.objects.filter(campaign=campaign, user=user).delete()
                time.sleep(0.005)
                services.membership_add(campaign=campaign, user=user)
                time.sleep(0.05)
        except BaseException as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    def checker():
        try:
            while not stop.is_set():
                with transaction.atomic(), connection.cursor() as cur:
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    cur.execute(INVARIANT_SQL, [campaign.pk])
                    for pid, count, judged, live in cur.fetchall():
                        if count != judged or judged + live > k:
                            cur.execute(
                                "SELECT id, annotator_id, status, leased_at, expires_at,"
                                " expires_at > STATEMENT_TIMESTAMP() FROM annotation_assignment"
                                " WHERE pair_id = %s ORDER BY id",
                                [pid],
                            )
                            leases = cur.fetchall()
                            cur.execute(
                                "SELECT id, annotator_id, assignment_id, created_at FROM"
                                " annotation_judgment WHERE pair_id = %s ORDER BY id",
                                [pid],
                            )
                            violations.append((pid, count, judged, live, leases, cur.fetchall()))
        except BaseException as exc:
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=tab, args=(u, n)) for n, u in enumerate(users * 2)]
    threads += [threading.Thread(target=f) for f in (expirer, remover, checker)]
    for t in threads:
        t.start()
    time.sleep(8)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:5]
    assert not violations, violations[:5]

import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from annotation import services
from annotation.errors import AlreadyJudged, CampaignNotActive, Forbidden, LeaseLost, ServiceError
from annotation.models import Assignment, Campaign, FrozenError, Judgment, Pair, Skip
from tests.factories import UserFactory, text_campaign


def expire(assignment):
    Assignment.objects.filter(pk=assignment.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )


@pytest.mark.django_db
def test_lease_is_resumed_until_judged_then_next_pair():
    user = UserFactory()
    campaign = text_campaign(n_prompts=2, responses=2, k=1, members=[user])
    first = services.assignment_lease_next(annotator=user, campaign=campaign)
    again = services.assignment_lease_next(annotator=user, campaign=campaign)
    assert again.pk == first.pk
    judgment = services.judgment_submit(annotator=user, assignment_id=first.pk, choices="left")
    assert judgment.choices == {"overall": "a" if first.a_on_left else "b"}
    assert judgment.shown_left_id == (
        first.pair.item_a_id if first.a_on_left else first.pair.item_b_id
    )
    second = services.assignment_lease_next(annotator=user, campaign=campaign)
    assert second.pair_id != first.pair_id
    services.judgment_submit(annotator=user, assignment_id=second.pk, choices="tie")
    assert services.assignment_lease_next(annotator=user, campaign=campaign) is None


@pytest.mark.django_db
def test_nobody_gets_a_pair_they_judged_or_skipped():
    user = UserFactory()
    campaign = text_campaign(n_prompts=3, responses=2, k=3, members=[user])
    seen = []
    for n in range(3):
        lease = services.assignment_lease_next(annotator=user, campaign=campaign)
        seen.append(lease.pair_id)
        if n == 1:
            services.skip_create(annotator=user, assignment_id=lease.pk, reason="unclear")
        else:
            services.judgment_submit(annotator=user, assignment_id=lease.pk, choices="right")
    assert len(set(seen)) == 3
    assert services.assignment_lease_next(annotator=user, campaign=campaign) is None
    assert Skip.objects.get(annotator=user).reason == "unclear"


@pytest.mark.django_db
def test_a_pair_never_collects_more_than_k():
    users = UserFactory.create_batch(5)
    campaign = text_campaign(n_prompts=1, responses=2, k=2, members=users)
    leases = [services.assignment_lease_next(annotator=u, campaign=campaign) for u in users]
    assert [lease is not None for lease in leases] == [True, True, False, False, False]


@pytest.mark.django_db
def test_expired_lease_is_accepted_while_a_slot_is_free():
    a, b = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=1, responses=2, k=2, members=[a, b])
    lease = services.assignment_lease_next(annotator=a, campaign=campaign)
    expire(lease)
    services.assignment_lease_next(annotator=b, campaign=campaign)  # takes the other slot
    judgment = services.judgment_submit(annotator=a, assignment_id=lease.pk, choices="left")
    assert judgment.pk and Pair.objects.get().judgment_count == 1


@pytest.mark.django_db
def test_expired_lease_is_refused_when_the_pair_filled_up():
    a, b = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=1, responses=2, k=1, members=[a, b])
    lease = services.assignment_lease_next(annotator=a, campaign=campaign)
    expire(lease)
    other = services.assignment_lease_next(annotator=b, campaign=campaign)
    assert other is not None and other.pair_id == lease.pair_id
    services.judgment_submit(annotator=b, assignment_id=other.pk, choices="right")
    with pytest.raises(LeaseLost, match="expired"):
        services.judgment_submit(annotator=a, assignment_id=lease.pk, choices="left")
    assert Judgment.objects.count() == 1


@pytest.mark.django_db
def test_duplicate_submit_names_the_existing_judgment():
    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, k=2, members=[user])
    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
    first = services.judgment_submit(annotator=user, assignment_id=lease.pk, choices="left")
    with pytest.raises(AlreadyJudged) as info:
        services.judgment_submit(annotator=user, assignment_id=lease.pk, choices="right")
    assert info.value.extra["judgment_id"] == first.pk
    assert Judgment.objects.count() == 1 and Pair.objects.get().judgment_count == 1


@pytest.mark.django_db
def test_foreign_lease_unknown_choice_and_closed_campaign_write_nothing():
    a, b = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=1, responses=2, k=2, members=[a, b])
    lease = services.assignment_lease_next(annotator=a, campaign=campaign)
    with pytest.raises(Forbidden, match="another annotator"):
        services.judgment_submit(annotator=b, assignment_id=lease.pk, choices="left")
    with pytest.raises(ServiceError, match="not a valid choice") as info:
        services.judgment_submit(annotator=a, assignment_id=lease.pk, choices="sideways")
    assert info.value.field == "choices.overall"
    with pytest.raises(ServiceError, match="Unknown criterion"):
        services.judgment_submit(annotator=a, assignment_id=lease.pk, choices={"style": "left"})
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.CLOSED)
    with pytest.raises(CampaignNotActive):
        services.judgment_submit(annotator=a, assignment_id=lease.pk, choices="left")
    campaign.refresh_from_db()
    with pytest.raises(CampaignNotActive):
        services.assignment_lease_next(annotator=b, campaign=campaign)
    assert Judgment.objects.count() == 0 and Pair.objects.get().judgment_count == 0


@pytest.mark.django_db
def test_non_member_cannot_lease():
    outsider = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2)
    with pytest.raises(Forbidden):
        services.assignment_lease_next(annotator=outsider, campaign=campaign)


@pytest.mark.django_db
def test_multiple_criteria_are_all_required_and_stored_canonically():
    user = UserFactory()
    campaign = text_campaign(
        n_prompts=1, responses=2, k=1, members=[user], criteria=["helpful", "honest"]
    )
    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
    with pytest.raises(ServiceError) as info:
        services.judgment_submit(
            annotator=user, assignment_id=lease.pk, choices={"helpful": "left"}
        )
    assert info.value.field == "choices.honest"
    judgment = services.judgment_submit(
        annotator=user, assignment_id=lease.pk, choices={"helpful": "left", "honest": "both_bad"}
    )
    left = "a" if lease.a_on_left else "b"
    assert judgment.choices == {"helpful": left, "honest": "both_bad"}


@pytest.mark.django_db
def test_renewal_extends_a_lease_and_revives_an_expired_one_only_with_a_free_slot():
    a, b = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=1, responses=2, k=1, members=[a, b])
    lease = services.assignment_lease_next(annotator=a, campaign=campaign)
    renewed = services.assignment_renew(annotator=a, assignment_id=lease.pk)
    assert renewed.expires_at > lease.expires_at
    expire(lease)
    services.assignment_renew(annotator=a, assignment_id=lease.pk)  # slot still free
    expire(lease)
    services.assignment_lease_next(annotator=b, campaign=campaign)
    with pytest.raises(LeaseLost):
        services.assignment_renew(annotator=a, assignment_id=lease.pk)


@pytest.mark.django_db
def test_judged_pairs_items_and_judgments_are_frozen():
    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, k=1, members=[user])
    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
    judgment = services.judgment_submit(annotator=user, assignment_id=lease.pk, choices="left")
    pair = Pair.objects.get()
    item = pair.item_a
    item.content = "rewritten after judging"
    with pytest.raises(FrozenError):
        item.save()
    with pytest.raises(FrozenError):
        item.delete()
    with pytest.raises(FrozenError):
        pair.delete()
    with pytest.raises(FrozenError):
        judgment.delete()
    with pytest.raises(FrozenError):
        Judgment.objects.all().delete()
    prompt = item.prompt
    prompt.messages = [{"role": "user", "content": "a different question"}]
    with pytest.raises(FrozenError):
        prompt.save()
    criterion = campaign.criteria.get()
    criterion.slug = "renamed"
    with pytest.raises(FrozenError):
        criterion.save()
    with pytest.raises(FrozenError):
        criterion.delete()
    assert Judgment.objects.count() == 1
    item.refresh_from_db()
    assert item.content != "rewritten after judging"


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_clients_never_share_a_slot():
    """50 threads, each with its own PostgreSQL connection, lease and judge at once."""
    k = 3
    users = UserFactory.create_batch(50)
    campaign = text_campaign(n_prompts=10, responses=3, k=k, members=users)  # 30 pairs, 90 slots
    start = threading.Barrier(len(users))
    errors: list[BaseException] = []
    held: list[tuple[int, int]] = []
    lock = threading.Lock()

    def client(user):
        try:
            start.wait()
            while True:  # at most 30 rounds: one per pair
                lease = services.assignment_lease_next(annotator=user, campaign=campaign)
                if lease is None:
                    break
                with lock:
                    held.append((lease.pair_id, user.pk))
                services.judgment_submit(annotator=user, assignment_id=lease.pk, choices="left")
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    per_pair = Counter(pair_id for pair_id, _ in held)
    assert max(per_pair.values()) <= k
    assert len(set(held)) == len(held), "an annotator got the same pair twice"
    assert len(held) == 30 * k  # every slot was handed out exactly once
    for pair in Pair.objects.all():
        assert pair.judgment_count == Judgment.objects.filter(pair=pair).count() <= k


@pytest.mark.django_db
def test_pair_clean_orders_items_and_checks_they_belong_together():
    from django.core.exceptions import ValidationError

    from annotation.models import Item

    campaign = text_campaign(n_prompts=2, responses=2)
    a, b, c, _ = Item.objects.filter(campaign=campaign).order_by("id")
    pair = Pair(campaign=campaign, item_a=b, item_b=a)
    pair.clean()
    assert (pair.item_a, pair.item_b) == (a, b)
    with pytest.raises(ValidationError, match="same prompt"):
        Pair(campaign=campaign, item_a=a, item_b=c).clean()


@pytest.mark.django_db
def test_a_double_click_through_a_live_lease_is_a_duplicate_not_a_second_judgment():
    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, k=2, members=[user])
    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
    first = services.judgment_submit(annotator=user, assignment_id=lease.pk, choices="left")
    # The second request read the lease before the first committed: still open and live.
    Assignment.objects.filter(pk=lease.pk).update(status=Assignment.Status.OPEN)
    with pytest.raises(AlreadyJudged) as info:
        services.judgment_submit(annotator=user, assignment_id=lease.pk, choices="right")
    assert info.value.extra["judgment_id"] == first.pk
    assert Judgment.objects.count() == 1 and Pair.objects.get().judgment_count == 1


@pytest.mark.django_db
def test_a_closed_campaign_takes_no_skips_or_renewals():
    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, members=[user])
    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.PAUSED)
    with pytest.raises(CampaignNotActive, match="paused"):
        services.skip_create(annotator=user, assignment_id=lease.pk)
    with pytest.raises(CampaignNotActive):
        services.assignment_renew(annotator=user, assignment_id=lease.pk)
    assert not Skip.objects.exists()


@pytest.mark.django_db
def test_an_expired_lease_is_revived_not_duplicated():
    user, other = UserFactory.create_batch(2)
    campaign = text_campaign(n_prompts=1, responses=2, k=2, members=[user, other])
    first = services.assignment_lease_next(annotator=user, campaign=campaign)
    expire(first)
    again = services.assignment_lease_next(annotator=user, campaign=campaign)
    assert again.pk == first.pk and again.expires_at > timezone.now()
    assert Assignment.objects.filter(annotator=user, status=Assignment.Status.OPEN).count() == 1
    services.judgment_submit(annotator=user, assignment_id=first.pk, choices="left")
    assert services.assignment_lease_next(annotator=user, campaign=campaign) is None
    assert services.assignment_lease_next(annotator=other, campaign=campaign) is not None


@pytest.mark.django_db(transaction=True)
def test_a_momentarily_locked_pair_is_waited_for_not_reported_as_nothing_left():
    from django.db import transaction

    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, k=1, members=[user])
    locked, release = threading.Event(), threading.Event()

    def hold_the_pair_lock():
        try:
            with transaction.atomic():
                list(Pair.objects.select_for_update().filter(campaign=campaign))
                locked.set()
                release.wait(5)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_pair_lock)
    holder.start()
    locked.wait(5)
    threading.Timer(0.5, release.set).start()
    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
    holder.join()
    assert lease is not None and lease.pair_id == Pair.objects.get().pk


@pytest.mark.django_db
def test_a_removed_member_can_no_longer_use_their_lease():
    from annotation.models import Membership

    user = UserFactory()
    campaign = text_campaign(n_prompts=1, responses=2, members=[user])
    lease = services.assignment_lease_next(annotator=user, campaign=campaign)
    Membership.objects.filter(user=user).delete()
    for action in (
        lambda: services.judgment_submit(annotator=user, assignment_id=lease.pk, choices="left"),
        lambda: services.skip_create(annotator=user, assignment_id=lease.pk),
        lambda: services.assignment_renew(annotator=user, assignment_id=lease.pk),
    ):
        with pytest.raises(Forbidden, match="no longer a member"):
            action()
    assert not Judgment.objects.exists() and not Skip.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_one_annotators_simultaneous_requests_share_one_lease():
    user = UserFactory()
    campaign = text_campaign(n_prompts=5, responses=2, members=[user])
    start = threading.Barrier(6)
    got = []

    def ask():
        try:
            start.wait()
            got.append(services.assignment_lease_next(annotator=user, campaign=campaign).pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and len(set(got)) == 1
    assert Assignment.objects.filter(annotator=user).count() == 1

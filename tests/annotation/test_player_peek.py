"""The compare page's guess at the next pair (selectors.pair_peek_next), whose clips it
preloads, and the player markup that works with JavaScript off."""

import pytest
from django.urls import reverse

from annotation import selectors
from annotation.models import Pair, Skip
from tests.annotation.test_media import trajectory_campaign
from tests.factories import UserFactory, text_campaign

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(media_root):
    member = UserFactory()
    campaign, items = trajectory_campaign([member], b"not played here", n_items=4)
    first = campaign.pairs.get()
    later = [
        campaign.pairs.create(item_a=items[a], item_b=items[b]) for a, b in ((1, 2), (2, 3), (0, 3))
    ]
    return member, campaign, [first, *later]


def peek(member, campaign, current):
    return selectors.pair_peek_next(annotator=member, campaign=campaign, current_pair_id=current.pk)


def test_the_peek_follows_the_lease_order_and_skips_the_current_pair(
    world, django_assert_num_queries
):
    member, campaign, (p01, p12, p23, p03) = world
    with django_assert_num_queries(1):  # the pair and both items, one index scan
        nxt = peek(member, campaign, p01)
    assert nxt == p12
    assert nxt.item_a.clip_url and nxt.item_b.clip_url  # loaded with the pair
    assert peek(member, campaign, p12) == p01
    # nearly complete pairs first, as the lease order
    campaign.judgments_per_pair = 2
    campaign.save()
    Pair.objects.filter(pk=p03.pk).update(judgment_count=1)
    assert peek(member, campaign, p01) == p03


def test_the_peek_leaves_out_what_the_annotator_cannot_get(world):
    member, campaign, (p01, p12, p23, p03) = world
    Skip.objects.create(pair=p12, annotator=member, campaign=campaign)  # skipped by them
    Pair.objects.filter(pk=p23.pk).update(judgment_count=1)  # full (k = 1)
    assert peek(member, campaign, p01) == p03
    Pair.objects.filter(pk=p03.pk).update(ready=False)  # a clip is being rendered again
    assert peek(member, campaign, p01) is None
    # someone else's skip changes nothing for this annotator
    assert peek(UserFactory(), campaign, p01) == p12


def test_text_campaigns_peek_at_nothing(django_assert_num_queries):
    member = UserFactory()
    campaign = text_campaign(n_prompts=2, responses=2, k=1, members=[member])
    current = campaign.pairs.first()
    with django_assert_num_queries(0):
        assert peek(member, campaign, current) is None


def test_the_page_preloads_the_next_pair_and_works_without_javascript(world, client):
    member, campaign, (p01, p12, *_) = world
    client.force_login(member)
    response = client.get(reverse("annotation:compare", args=[campaign.slug]))
    html = response.content.decode()
    assert response.context["assignment"].pair == p01
    for item in (p12.item_a, p12.item_b):
        assert f'<video class="preload-clip" src="{item.clip_url}" preload="none"' in html
    # With JavaScript off: each clip keeps its own controls; the shared bar and the clip keys
    # (which need the script) are hidden.
    assert html.count('<video class="clip"') == 2 and html.count(" controls loop muted") == 2
    assert '<div class="player" hidden>' in html
    assert '<p class="hint keys player-keys" hidden>' in html
    assert 'name="reason" value="clip broken"' in html

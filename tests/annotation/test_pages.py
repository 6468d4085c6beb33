import pytest
from django.urls import reverse

from annotation.models import Assignment, Campaign, Item, Judgment, Prompt
from tests.factories import UserFactory, text_campaign


@pytest.fixture
def annotator(db):
    return UserFactory(username="ann")


@pytest.fixture
def page_campaign(annotator):
    return text_campaign(
        n_prompts=2, responses=2, k=1, members=[annotator], instructions="Pick the **better** one."
    )


def judge_url(campaign, assignment):
    return reverse("annotation:judge", args=[campaign.slug, assignment.pk])


@pytest.mark.django_db
def test_login_required_and_home_lists_member_campaigns(client, annotator, page_campaign):
    assert client.get("/").status_code == 302
    text_campaign(n_prompts=1, responses=2, name="Hidden campaign")
    client.force_login(annotator)
    body = client.get("/").content.decode()
    assert page_campaign.name in body and "Hidden campaign" not in body


@pytest.mark.django_db
def test_compare_page_shows_prompt_and_both_responses(client, annotator, page_campaign):
    client.force_login(annotator)
    body = client.get(reverse("annotation:compare", args=[page_campaign.slug])).content.decode()
    assignment = Assignment.objects.get()
    pair = assignment.pair
    left, right = (pair.item_a, pair.item_b) if assignment.a_on_left else (pair.item_b, pair.item_a)
    assert body.index(left.content) < body.index(right.content)
    assert pair.item_a.prompt.messages[0]["content"] in body
    assert "<strong>better</strong>" in body  # instructions rendered from markdown
    assert "/static/django_htmx/htmx-2.min." in body and "hx-headers" in body


@pytest.mark.django_db
def test_plain_form_post_judges_and_redirects(client, annotator, page_campaign):
    client.force_login(annotator)
    client.get(reverse("annotation:compare", args=[page_campaign.slug]))
    assignment = Assignment.objects.get()
    r = client.post(judge_url(page_campaign, assignment), {"choice": "left", "duration_ms": ""})
    assert r.status_code == 302 and r["Location"].endswith(f"/c/{page_campaign.slug}/")
    judgment = Judgment.objects.get()
    assert judgment.choices == {"overall": "a" if assignment.a_on_left else "b"}
    assert judgment.duration_ms is not None


@pytest.mark.django_db
def test_htmx_post_swaps_in_the_next_pair(client, annotator, page_campaign):
    client.force_login(annotator)
    client.get(reverse("annotation:compare", args=[page_campaign.slug]))
    first = Assignment.objects.get()
    r = client.post(
        judge_url(page_campaign, first),
        {"choice": "right", "duration_ms": "4200"},
        HTTP_HX_REQUEST="true",
    )
    body = r.content.decode()
    assert r.status_code == 200
    assert body.lstrip().startswith('<section id="compare"')  # the partial, not the page
    assert "<html" not in body
    second = Assignment.objects.exclude(pk=first.pk).get()
    assert second.pair_id != first.pair_id and f"/lease/{second.pk}/judge/" in body
    assert Judgment.objects.get().duration_ms == 4200
    # last pair: the partial says there is nothing left
    r = client.post(judge_url(page_campaign, second), {"choice": "tie"}, HTTP_HX_REQUEST="true")
    assert "Nothing left for you" in r.content.decode()


@pytest.mark.django_db
def test_bad_submits_get_a_message_and_write_nothing(client, annotator, page_campaign):
    other = UserFactory()
    page_campaign.members.add(other)
    client.force_login(other)
    client.get(reverse("annotation:compare", args=[page_campaign.slug]))
    foreign = Assignment.objects.get(annotator=other)
    client.force_login(annotator)
    r = client.post(judge_url(page_campaign, foreign), {"choice": "left"})
    assert r.status_code == 403 and "belongs to another annotator" in r.content.decode()
    mine = Assignment.objects.get(annotator=annotator)
    r = client.post(judge_url(page_campaign, mine), {"choice": "sideways"}, HTTP_HX_REQUEST="true")
    assert "not a valid choice" in r.content.decode()
    assert f"/lease/{mine.pk}/judge/" in r.content.decode()  # the same pair again
    Campaign.objects.filter(pk=page_campaign.pk).update(status=Campaign.Status.CLOSED)
    r = client.post(judge_url(page_campaign, mine), {"choice": "left"})
    assert r.status_code == 409 and "closed" in r.content.decode()
    assert Judgment.objects.count() == 0


@pytest.mark.django_db
def test_skip_from_the_page(client, annotator, page_campaign):
    client.force_login(annotator)
    client.get(reverse("annotation:compare", args=[page_campaign.slug]))
    lease = Assignment.objects.get()
    r = client.post(
        reverse("annotation:skip", args=[page_campaign.slug, lease.pk]), {"reason": "unclear"}
    )
    assert r.status_code == 302
    lease.refresh_from_db()
    assert lease.status == Assignment.Status.SKIPPED


@pytest.mark.django_db
def test_responses_are_sanitised(client, annotator):
    campaign = text_campaign(n_prompts=0, responses=0, k=1, members=[annotator])
    prompt = Prompt.objects.create(
        campaign=campaign, messages=[{"role": "user", "content": "<script>alert('p')</script>hi"}]
    )
    a = Item.objects.create(
        campaign=campaign, prompt=prompt, content="<img src=x onerror=alert(1)> **bold**"
    )
    b = Item.objects.create(
        campaign=campaign,
        prompt=prompt,
        content="<script>alert('x')</script>\n\n[link](javascript:alert(2))",
    )
    campaign.pairs.create(item_a=a, item_b=b)
    client.force_login(annotator)
    body = client.get(reverse("annotation:compare", args=[campaign.slug])).content.decode()
    compare = body[body.index('id="compare"') :]
    assert "<script>alert" not in compare and "onerror" not in compare
    assert "javascript:" not in compare
    assert "<strong>bold</strong>" in compare


@pytest.mark.django_db
def test_the_page_renews_its_lease(client, annotator, page_campaign):
    client.force_login(annotator)
    body = client.get(reverse("annotation:compare", args=[page_campaign.slug])).content.decode()
    lease = Assignment.objects.get()
    url = reverse("annotation:renew", args=[page_campaign.slug, lease.pk])
    assert f'data-renew-url="{url}"' in body
    r = client.post(url, HTTP_HX_REQUEST="true")
    assert r.status_code == 200 and r.content == b""
    renewed = Assignment.objects.get()
    assert renewed.expires_at > lease.expires_at

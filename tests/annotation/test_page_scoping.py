"""The page's actions act only on a lease of the campaign their URL names."""

import pytest
from django.urls import reverse

from annotation import services
from annotation.models import Assignment, Judgment, Skip
from tests.factories import UserFactory, text_campaign


@pytest.mark.django_db
def test_renew_judge_and_skip_refuse_a_lease_of_another_campaign(client):
    user = UserFactory()
    mine = text_campaign(n_prompts=1, responses=2, members=[user])
    other = text_campaign(n_prompts=1, responses=2, members=[user])
    lease = services.assignment_lease_next(annotator=user, campaign=mine)
    expires = lease.expires_at
    client.force_login(user)
    for name, data in (("renew", {}), ("judge", {"choice": "left"}), ("skip", {})):
        url = reverse(f"annotation:{name}", args=[other.slug, lease.pk])
        r = client.post(url, data)
        assert r.status_code == 404, (name, r.status_code)
    assert Assignment.objects.get(pk=lease.pk).expires_at == expires
    assert not Judgment.objects.exists() and not Skip.objects.exists()
    # Through its own campaign's URL the same lease works.
    r = client.post(reverse("annotation:judge", args=[mine.slug, lease.pk]), {"choice": "left"})
    assert r.status_code == 302 and Judgment.objects.count() == 1

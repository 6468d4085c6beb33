"""The demo seed publishes no password outside embedded mode."""

import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command


def seed() -> dict[str, str]:
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    return dict(
        re.findall(r"^\s+\w+\s+(\S+)\s+password (\S+)\s+API token \w+$", out.getvalue(), re.M)
    )


@pytest.mark.django_db
def test_outside_embedded_mode_passwords_are_random_printed_once_and_kept(settings):
    settings.EMBEDDED_DATABASE = False  # DATABASE_URL set, as for a team's server
    first = seed()
    User = get_user_model()
    admin = User.objects.get(username="admin")
    assert not admin.check_password("admin-demo-pass")
    assert len(first["admin"]) >= 16 and admin.check_password(first["admin"])
    assert len(set(first.values())) == len(first)  # one password each
    again = seed()
    admin.refresh_from_db()
    assert admin.check_password(first["admin"]), "a re-run must not reset a password"
    assert set(again.values()) == {"(unchanged)"}


@pytest.mark.django_db
def test_the_embedded_laptop_demo_keeps_its_documented_logins(settings):
    settings.EMBEDDED_DATABASE = True
    logins = seed()
    assert logins["admin"] == "admin-demo-pass"
    assert get_user_model().objects.get(username="annotator1").check_password("annotate-demo-1")


@pytest.mark.django_db
def test_the_demo_seeds_a_pendulum_campaign_whose_clips_are_asked_for(settings):
    from annotation.models import Campaign, Dataset

    settings.EMBEDDED_DATABASE = True
    seed()
    campaign = Campaign.objects.get(slug="demo-pendulum")
    assert campaign.kind == "trajectory" and campaign.status == "active"
    assert campaign.pairs.count() == 20 and campaign.members.count() == 3
    dataset = Dataset.objects.get(name="pendulum-demo")
    assert set(dataset.episodes.values_list("policy", flat=True)) == {
        "expert",
        "noisy-expert",
        "random",
    }
    # Every segment waits for the media worker; no pair is shown before its clips are ready.
    assert set(campaign.items.values_list("clip_status", flat=True)) == {"pending"}
    assert not campaign.pairs.filter(ready=True).exists()
    seed()  # idempotent: nothing new
    assert Campaign.objects.filter(slug="demo-pendulum").get().pairs.count() == 20
    assert Dataset.objects.count() == 1

from pathlib import Path

import pytest
from rest_framework.test import APIClient

from feedback_app.preflight import check


def pytest_sessionstart(session):
    problems = check(require_servers=True)
    if problems:
        pytest.exit("Tests need PostgreSQL and Redis:\n" + "\n".join(problems), returncode=2)


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def staff(db):
    from tests.factories import UserFactory

    return UserFactory(is_staff=True, username="staff")


@pytest.fixture
def campaign(db):
    from tests.factories import text_campaign

    return text_campaign(n_prompts=4, responses=3, k=2)


@pytest.fixture(scope="session", autouse=True)
def _static_root():
    from django.conf import settings

    Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)  # whitenoise warns without it


@pytest.fixture(autouse=True)
def _plain_static_storage(settings):
    """Serve static files by their plain names, as the live server's static handler finds
    them; the hashed-manifest storage of production needs collectstatic first."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }

import pytest
from rest_framework.test import APIClient

from feedback_app.preflight import check


def pytest_sessionstart(session):
    problems = check(create_db=False)
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
def _static_manifest(django_db_blocker):
    """Pages use the manifest static storage that production uses; build it once."""
    from django.conf import settings
    from django.core.management import call_command

    assert settings.STATIC_ROOT
    call_command("collectstatic", "--noinput", verbosity=0)

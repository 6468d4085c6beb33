import pytest


@pytest.fixture(autouse=True)
def _allow_orm_beside_playwright(monkeypatch):
    """Playwright's sync API runs an event loop in the test's thread; the ORM calls in these
    tests are plain blocking test code, so Django's async-safety guard does not apply."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

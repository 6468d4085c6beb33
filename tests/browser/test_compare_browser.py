"""The compare page in headless Chromium: htmx swaps pairs without a reload, keys work, and
the same page works with JavaScript off."""

import pytest
from playwright import sync_api as playwright_sync

from annotation.models import Judgment
from tests.factories import UserFactory, text_campaign

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser():
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def log_in(page, live_server, username):
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "pw")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def wait_for_next_pair(page, action):
    page.wait_for_function(
        "action => document.querySelector('form.judge')?.getAttribute('action') !== action",
        arg=action,
    )
    return page.get_attribute("form.judge", "action")


@pytest.mark.browser
def test_judging_swaps_pairs_in_place(browser, live_server, transactional_db, tmp_path):
    user = UserFactory(username="alice")
    campaign = text_campaign(n_prompts=3, responses=2, k=1, members=[user])
    page = browser.new_page()
    log_in(page, live_server, "alice")
    page.click("text=Start judging")
    page.wait_for_selector("form.judge")
    page.evaluate("window.__sameDocument = true")
    first_action = page.get_attribute("form.judge", "action")

    page.click("button[value=left]")
    second_action = wait_for_next_pair(page, first_action)
    assert page.evaluate("window.__sameDocument") is True  # swapped by htmx, no reload
    assert page.locator(".notice").inner_text() == "Saved."
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)

    page.keyboard.press("2")  # "Right is better"
    wait_for_next_pair(page, second_action)
    page.keyboard.press("3")  # "About the same"
    page.wait_for_selector("text=Nothing left for you")
    assert page.evaluate("window.__sameDocument") is True
    assert Judgment.objects.filter(campaign=campaign).count() == 3
    assert all(j.duration_ms is not None and j.duration_ms < 60_000 for j in Judgment.objects.all())


@pytest.mark.browser
def test_the_page_works_with_javascript_off(browser, live_server, transactional_db):
    user = UserFactory(username="bob")
    campaign = text_campaign(n_prompts=2, responses=2, k=1, members=[user])
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    log_in(page, live_server, "bob")
    page.goto(f"{live_server.url}/c/{campaign.slug}/")
    page.click("button[value=tie]")
    page.wait_for_url(f"{live_server.url}/c/{campaign.slug}/")
    page.click("button[value=right]")
    page.wait_for_selector("text=Nothing left for you")
    assert Judgment.objects.filter(campaign=campaign).count() == 2
    context.close()


@pytest.mark.browser
def test_the_page_renews_its_lease_only_while_the_annotator_is_active(
    browser, live_server, transactional_db
):
    """lease_seconds=10: the page may renew every 3.3 s, but an idle tab sends nothing, so its
    lease lapses; a key or the pointer makes the next tick renew it."""
    from annotation.models import Assignment

    user = UserFactory(username="idle")
    campaign = text_campaign(n_prompts=2, responses=2, k=1, members=[user], lease_seconds=10)
    page = browser.new_page()
    log_in(page, live_server, "idle")
    renewals = []
    page.on("request", lambda r: renewals.append(r.url) if "/renew/" in r.url else None)
    page.goto(f"{live_server.url}/c/{campaign.slug}/")
    page.wait_for_selector(".lease[data-renew-every-ms='3333']", state="attached")
    expires = Assignment.objects.get().expires_at
    page.wait_for_timeout(5000)  # idle: more than one renewal period
    assert renewals == []
    page.mouse.move(200, 200)
    page.mouse.move(220, 240)
    page.wait_for_timeout(4500)
    assert len(renewals) == 1
    assert Assignment.objects.get().expires_at > expires

"""In Chromium: a hostile "clip" runs nothing when a member or staff opens it, and the pages
work under their Content-Security-Policy without a single violation.

Served by gunicorn with DEBUG off, as in production: the test live server answers /media/
from MEDIA_ROOT itself, around the app's media view."""

import contextlib
from types import SimpleNamespace

import pytest
from playwright import sync_api as playwright_sync

from annotation.models import Judgment
from tests.annotation.test_media import trajectory_campaign
from tests.annotation.test_served_content import HTML, SVG, hostile_clip
from tests.browser.test_compare_browser import ARGS, CHROMIUM, log_in
from tests.factories import UserFactory

WATCH = """
window.__violations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
"""


@pytest.fixture
def browser():
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def watched_page(browser, base_url, username):
    page = browser.new_page()
    messages = []
    page.on("console", lambda m: messages.append(m.text))
    page.add_init_script(WATCH)
    log_in(page, SimpleNamespace(url=base_url), username)
    return page, messages


def violations(page, messages):
    return page.evaluate("window.__violations") + [
        m for m in messages if "Content Security Policy" in m
    ]


@pytest.mark.browser
@pytest.mark.parametrize("username", ["member", "staff"])
def test_a_hostile_clip_runs_no_script(browser, gunicorn_server, username):
    member = UserFactory(username="member")
    UserFactory(username="staff", is_staff=True, is_superuser=True)  # owner of every campaign
    page, messages = watched_page(browser, gunicorn_server, username)
    downloads = []
    page.on("download", lambda d: downloads.append(d.url))
    for suffix, body in ((".svg", SVG), (".html", HTML)):
        url = gunicorn_server + hostile_clip(member, suffix, body).clip_url
        page.goto(f"{gunicorn_server}/")
        with contextlib.suppress(playwright_sync.Error):  # a download aborts the navigation
            page.goto(url)
        page.wait_for_timeout(500)
        assert "pwned" not in page.title()
        assert not any("pwned" in m for m in messages)
        assert downloads[-1:] == [url]
        # Even pulled into a frame of our own origin, the answer is sandboxed and inert.
        page.goto(f"{gunicorn_server}/")
        page.evaluate(
            "url => { const f = document.createElement('iframe'); f.src = url;"
            " document.body.append(f); }",
            url,
        )
        page.wait_for_timeout(500)
        assert not any("pwned" in m for m in messages)


@pytest.mark.browser
def test_compare_page_works_under_the_policy(
    browser,
    gunicorn_server,
    webm_clip,
):
    member = UserFactory(username="dana")
    campaign, _ = trajectory_campaign([member], webm_clip, n_items=3)
    items = list(campaign.items.order_by("pk"))
    campaign.pairs.create(item_a=items[1], item_b=items[2])
    page, messages = watched_page(browser, gunicorn_server, "dana")
    response = page.goto(f"{gunicorn_server}/c/{campaign.slug}/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector("form.judge")
    page.wait_for_function(
        "() => [...document.querySelectorAll('video.clip')].every(v => v.readyState >= 1)"
    )
    action = page.get_attribute("form.judge", "action")
    page.keyboard.press("1")  # "Left is better", through htmx
    page.wait_for_function(
        "a => document.querySelector('form.judge')?.getAttribute('action') !== a", arg=action
    )
    assert page.locator(".notice").inner_text() == "Saved."
    assert Judgment.objects.filter(campaign=campaign).count() == 1
    assert violations(page, messages) == []
    # and the watch works: an injected inline script is refused, and reported
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__ran = true'; document.body.append(s); }"
    )
    page.wait_for_function("() => window.__violations.length > 0")
    assert page.evaluate("window.__ran") is None


@pytest.mark.browser
def test_admin_and_api_docs_render_under_their_policies(browser, gunicorn_server):
    UserFactory(username="root", is_staff=True, is_superuser=True)
    page, messages = watched_page(browser, gunicorn_server, "root")
    page.goto(f"{gunicorn_server}/admin/annotation/item/add/")
    page.wait_for_selector("input[name=clip]")
    page.goto(f"{gunicorn_server}/api/docs/")
    page.wait_for_selector(".swagger-ui .info .title")
    assert page.locator(".opblock").count() > 0
    assert violations(page, messages) == []

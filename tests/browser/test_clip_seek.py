"""Trajectory clips seek in a real browser, served by gunicorn with DEBUG off."""

import pytest
from playwright.sync_api import sync_playwright

from tests.annotation.test_media import trajectory_campaign
from tests.browser.test_compare_browser import ARGS, CHROMIUM
from tests.factories import UserFactory

SEEK = """async () => {
  const v = document.querySelector('video.clip');
  if (v.readyState < 1) await new Promise(r => v.addEventListener('loadedmetadata', r, {once: true}));
  v.currentTime = 3.2;
  await new Promise(r => v.addEventListener('seeked', r, {once: true}));
  return {time: v.currentTime, duration: v.duration, error: v.error && v.error.code};
}"""


@pytest.mark.browser
def test_clip_seeks_in_chromium(gunicorn_server, client, webm_clip, tmp_path):
    member = UserFactory(username="carol")
    campaign, _ = trajectory_campaign([member], webm_clip)
    client.force_login(member)
    statuses = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context()
        context.add_cookies(
            [
                {
                    "name": "sessionid",
                    "value": client.cookies["sessionid"].value,
                    "url": gunicorn_server,
                }
            ]
        )
        page = context.new_page()
        page.on("response", lambda r: "/media/clips/" in r.url and statuses.append(r.status))
        page.goto(f"{gunicorn_server}/c/{campaign.slug}/")
        assert page.locator("video.clip").count() == 2
        result = page.evaluate(SEEK)
        page.screenshot(path=str(tmp_path / "trajectory.png"))
        browser.close()
    assert result["error"] is None
    assert result["duration"] == pytest.approx(4.0, abs=0.2)
    assert result["time"] == pytest.approx(3.2, abs=0.15)
    assert 206 in statuses  # the browser fetched byte ranges

"""Drift between the compare page's two clips (static/annotation/clips.js) over a minute of
looping, in headless Chromium against gunicorn with DEBUG off.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/feedback_player \\
    REDIS_URL=redis://127.0.0.1:6379/13 \\
    .venv/bin/python -m pytest -q -s -p no:cacheprovider bench/player_drift.py

It runs as a pytest module (`python -m pytest`, so that `tests` imports) so that the server is started exactly as the browser tests start
it (`gunicorn_server` in tests/conftest.py: a test database, collectstatic, one gunicorn
worker) with the same two 4-second, 10 fps test-pattern clips of different content
(tests/browser/test_player_sync.py). The page plays both clips at 1x with loop on; a timer in
the page reads both videos' currentTime in one task every 100 ms for PLAYER_DRIFT_SECONDS
(default 60) and the script prints the max, p95 and median of |a - b|. Never part of the test
run (testpaths is tests/).
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
from playwright import sync_api as playwright_sync

from tests.browser.test_compare_browser import ARGS, CHROMIUM, log_in
from tests.browser.test_player_sync import FPS, open_compare, player_campaign, player_clips
from tests.conftest import (
    _plain_static_storage,
    _process_cache_listener,
    _static_root,
    collected_static,
    gunicorn_factory,
    gunicorn_server,
    media_root,
)
from tests.factories import UserFactory

# The fixtures of the browser tests, used here as they are (bench/ has no conftest of its own).
__all__ = [
    "_plain_static_storage",
    "_process_cache_listener",
    "_static_root",
    "collected_static",
    "gunicorn_factory",
    "gunicorn_server",
    "media_root",
    "player_clips",
]

SECONDS = float(os.environ.get("PLAYER_DRIFT_SECONDS", "60"))

MEASURE = """async ([seconds, everyMs]) => {
  const [a, b] = document.querySelectorAll('video.clip');
  const gaps = [];
  let loops = 0, last = 0;
  await new Promise(done => {
    const started = performance.now();
    const timer = setInterval(() => {
      gaps.push(Math.abs(a.currentTime - b.currentTime));
      if (a.currentTime < last - 1) loops += 1;
      last = a.currentTime;
      if (performance.now() - started >= seconds * 1000) { clearInterval(timer); done(); }
    }, everyMs);
  });
  return {gaps, loops, rates: [a.playbackRate, b.playbackRate]};
}"""


@pytest.fixture(autouse=True)
def _allow_orm_beside_playwright(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.mark.timeout(SECONDS + 240)
def test_player_drift(gunicorn_server, player_clips):
    member = UserFactory(username="drift")
    campaign, _ = player_campaign([member], player_clips[:2], pairs=[(0, 1)])
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        log_in(page, SimpleNamespace(url=gunicorn_server), "drift")
        open_compare(page, gunicorn_server, campaign)
        page.keyboard.press("Space")
        page.wait_for_timeout(500)
        result = page.evaluate(MEASURE, [SECONDS, 100])
        browser.close()
    gaps = sorted(result["gaps"])
    ms = [g * 1000 for g in gaps]
    report = {
        "seconds": SECONDS,
        "samples": len(ms),
        "loops": result["loops"],
        "frame_ms": round(1000 / FPS, 1),
        "max_ms": round(ms[-1], 1),
        "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
        "median_ms": round(statistics.median(ms), 1),
        "cpus": os.cpu_count(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
    print("\nplayer drift |a - b|:", json.dumps(report))
    assert result["loops"] >= 1

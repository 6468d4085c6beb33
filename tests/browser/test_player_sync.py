"""The compare page's clip player (static/annotation/clips.js) in Chromium: one clock drives
both clips, through play, scrubbing, speed changes and frame steps; keys act; a broken clip
offers the "clip broken" skip; the next pair's clips are preloaded."""

from __future__ import annotations

import statistics
import subprocess
from types import SimpleNamespace

import pytest
from django.core.files.base import ContentFile
from playwright import sync_api as playwright_sync

from annotation.models import Campaign, ClipStatus, Item, Skip
from tests.browser.test_compare_browser import ARGS, CHROMIUM, log_in
from tests.factories import CampaignFactory, UserFactory

FPS = 10
# 1.5 frames. The players measured a few ms apart over a minute (docs/benchmarks.md); the
# margin is for a busy machine, where the controller seeks a follower back only beyond
# 0.12 s (clips.js HARD_SYNC_S), so one reading can be that far off before it corrects.
TOLERANCE_S = 1.5 / FPS


def make_clip(tmp_path_factory, source: str, seconds: float) -> bytes:
    """A test-pattern clip from the ffmpeg imageio-ffmpeg ships: H.264 in MP4 with the index
    up front when that ffmpeg has libx264, VP8 in WebM otherwise."""
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    encoders = subprocess.run(
        [ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=60
    ).stdout
    h264 = " libx264 " in encoders
    path = tmp_path_factory.mktemp("player") / (f"{source}.mp4" if h264 else f"{source}.webm")
    codec = (
        ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", str(FPS), "-movflags", "+faststart"]
        if h264
        else ["-c:v", "libvpx", "-b:v", "200k", "-g", str(FPS)]
    )
    subprocess.run(
        [
            ffmpeg,
            *("-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"),
            *("-i", f"{source}=duration={seconds}:size=160x120:rate={FPS}"),
            *codec,
            str(path),
        ],
        check=True,
        timeout=120,
    )
    return path.read_bytes()


@pytest.fixture(scope="session")
def player_clips(tmp_path_factory):
    """Two clips of different content and equal length, and a third for the next pair."""
    return (
        make_clip(tmp_path_factory, "testsrc", 4),
        make_clip(tmp_path_factory, "testsrc2", 4),
        make_clip(tmp_path_factory, "smptebars", 3),
    )


def player_campaign(members, clips, *, pairs):
    """A trajectory campaign with one rendered item per clip and the given pairs of them."""
    campaign = CampaignFactory(kind=Campaign.Kind.TRAJECTORY, judgments_per_pair=1)
    campaign.members.add(*members)
    items = []
    for n, body in enumerate(clips):
        item = Item(
            campaign=campaign,
            dataset="CartPole-v1",
            episode=f"ep{n}",
            start=0,
            length=40,
            clip_status=ClipStatus.READY,
            clip_fps=FPS,
        )
        item.clip.save(f"clip{n}.mp4", ContentFile(body), save=True)
        items.append(item)
    for a, b in pairs:
        campaign.pairs.create(item_a=items[a], item_b=items[b])
    return campaign, items


# Both players' positions, read in one task so that neither moves between the two reads.
POSITIONS = """() => [...document.querySelectorAll('video.clip')].map(v => ({
  t: v.currentTime, paused: v.paused, rate: v.playbackRate}))"""


def samples(page, n=6, every_ms=150):
    out = []
    for _ in range(n):
        out.append(page.evaluate(POSITIONS))
        page.wait_for_timeout(every_ms)
    return out


def assert_in_step(page, *, playing: bool, n=6):
    readings = samples(page, n=n)
    gaps = [abs(a["t"] - b["t"]) for a, b in readings]
    # Every reading within the tolerance; the median well within it.
    assert max(gaps) < TOLERANCE_S, gaps
    assert statistics.median(gaps) < TOLERANCE_S / 2, gaps
    if playing:
        assert readings[-1][0]["t"] != readings[0][0]["t"], "the clips do not move"
    else:
        assert all(s["paused"] for r in readings for s in r)
    return readings


def scrub_to(page, seconds: float) -> None:
    """Drag the shared scrubber: the browser sends `input` while dragging, `change` on release."""
    page.evaluate(
        """t => { const s = document.querySelector('.player .scrub'); s.value = String(t);
        s.dispatchEvent(new Event('input', {bubbles: true}));
        s.dispatchEvent(new Event('change', {bubbles: true})); }""",
        seconds,
    )


def open_compare(page, base_url, campaign):
    page.goto(f"{base_url}/c/{campaign.slug}/")
    page.wait_for_selector(".player:not([hidden])")
    page.wait_for_function(
        "() => [...document.querySelectorAll('video.clip')].every(v => v.readyState >= 2)"
    )


@pytest.fixture
def browser():
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.mark.browser
def test_both_clips_follow_one_clock(browser, gunicorn_server, player_clips):
    member = UserFactory(username="erin")
    # Pair (0, 1) is leased first (the oldest); pair (2, 3) is the one peeked for preloading.
    campaign, items = player_campaign(
        [member], [*player_clips, player_clips[0]], pairs=[(0, 1), (2, 3)]
    )
    page = browser.new_page()
    log_in(page, SimpleNamespace(url=gunicorn_server), "erin")
    open_compare(page, gunicorn_server, campaign)

    # One control bar; no native controls; the keys are listed on the page.
    assert page.evaluate("[...document.querySelectorAll('video.clip')].map(v => v.controls)") == [
        False,
        False,
    ]
    keys = page.locator(".player-keys")
    assert keys.is_visible()
    for key in ("Space", ",", ".", "[", "]", "l", "1"):
        assert key in keys.inner_text()

    # The next pair's clips are preloaded, once this pair's clips are in.
    shown = set(page.eval_on_selector_all("video.clip", "vs => vs.map(v => v.src)"))
    preload = page.locator("video.preload-clip")
    assert preload.count() == 2
    preloaded = set(page.eval_on_selector_all("video.preload-clip", "vs => vs.map(v => v.src)"))
    expected = {gunicorn_server + items[2].clip_url, gunicorn_server + items[3].clip_url}
    assert preloaded == expected and not preloaded & shown
    page.wait_for_function(
        "() => [...document.querySelectorAll('video.preload-clip')]"
        ".every(v => v.preload === 'auto' && v.readyState >= 1)"
    )

    # Play (Space), then the scrubber, then speeds 0.25x and 2x: always in step.
    page.keyboard.press("Space")
    page.wait_for_timeout(500)
    assert_in_step(page, playing=True)
    scrub_to(page, 2.5)
    page.wait_for_timeout(300)
    readings = assert_in_step(page, playing=True)
    assert 2.5 <= readings[0][0]["t"] <= 3.5 or readings[0][0]["t"] < 1.5  # may have looped

    page.select_option(".player .speed", "0.25")
    page.wait_for_timeout(300)
    readings = assert_in_step(page, playing=True)
    assert all(0.2 <= s["rate"] <= 0.3 for r in readings for s in r)
    for _ in range(4):
        page.keyboard.press("]")  # 0.25 -> 0.5 -> 1 -> 1.5 -> 2
    assert page.input_value(".player .speed") == "2"
    page.wait_for_timeout(300)
    readings = assert_in_step(page, playing=True)
    assert all(1.8 <= s["rate"] <= 2.2 for r in readings for s in r)
    page.keyboard.press("[")
    assert page.input_value(".player .speed") == "1.5"

    # Pause pauses both, at the same frame; a frame step moves both by one frame.
    page.keyboard.press("Space")
    page.wait_for_function(
        "() => [...document.querySelectorAll('video.clip')].every(v => v.paused && !v.seeking)"
    )
    (a, b), *_ = assert_in_step(page, playing=False, n=2)
    assert abs(a["t"] - b["t"]) < 0.002
    before = a["t"]
    page.keyboard.press(".")
    page.wait_for_function(
        "() => [...document.querySelectorAll('video.clip')].every(v => !v.seeking)"
    )
    a, b = page.evaluate(POSITIONS)
    assert abs(a["t"] - b["t"]) < 0.002
    assert a["t"] - before == pytest.approx(1 / FPS, abs=0.6 / FPS) or a["t"] < before  # wrap
    page.keyboard.press(",")
    page.keyboard.press(",")
    page.wait_for_function(
        "() => [...document.querySelectorAll('video.clip')].every(v => !v.seeking)"
    )
    a2, b2 = page.evaluate(POSITIONS)
    assert abs(a2["t"] - b2["t"]) < 0.002 and a2["t"] < a["t"]

    # Loop toggles with `l`; keys typed into the skip reason do nothing to the player.
    assert page.is_checked(".player .loop")
    page.keyboard.press("l")
    assert not page.is_checked(".player .loop")
    page.fill("form.skip input[name=reason]", "")
    page.focus("form.skip input[name=reason]")
    page.keyboard.type("l ,.")
    assert not page.is_checked(".player .loop")
    assert page.evaluate(POSITIONS)[0]["paused"]
    assert page.input_value("form.skip input[name=reason]") == "l ,."


@pytest.mark.browser
def test_a_broken_clip_offers_the_clip_broken_skip(browser, gunicorn_server, player_clips):
    member = UserFactory(username="finn")
    campaign, items = player_campaign(
        [member], [player_clips[0], b"\x00garbage, not a video" * 100], pairs=[(0, 1)]
    )
    page = browser.new_page()
    log_in(page, SimpleNamespace(url=gunicorn_server), "finn")
    page.goto(f"{gunicorn_server}/c/{campaign.slug}/")
    message = page.locator(".clip-broken:not([hidden])")
    message.wait_for()
    assert message.count() == 1
    assert "could not be loaded" in message.inner_text()
    assert page.locator("video.clip:not([hidden])").count() == 1  # no blank box beside it
    message.get_by_role("button", name="Clip broken — skip this pair").click()
    page.wait_for_selector("text=Nothing left for you")
    skip = Skip.objects.get(campaign=campaign)
    assert skip.reason == "clip broken" and skip.annotator == member

import re

import httpx
import pytest
from django.core.files.base import ContentFile

from annotation.models import Campaign, ClipStatus, Item
from feedback_app.ranged import Unsatisfiable, parse_range
from tests.factories import CampaignFactory, UserFactory


def trajectory_campaign(members, clip_bytes, n_items=2):
    campaign = CampaignFactory(kind=Campaign.Kind.TRAJECTORY, judgments_per_pair=1)
    for user in members:
        campaign.members.add(user)
    items = []
    for n in range(n_items):
        item = Item(
            campaign=campaign,
            dataset="CartPole-v1",
            episode=f"ep{n}",
            start=0,
            length=40,
            source="policy-best",
            # Rendered: a pair is leased only when both its clips are ready.
            clip_status=ClipStatus.READY,
        )
        item.clip.save("policy-best-gold-episode.webm", ContentFile(clip_bytes), save=True)
        items.append(item)
    campaign.pairs.create(item_a=items[0], item_b=items[1])
    return campaign, items


def test_parse_range():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=50-500", 100) == (50, 99)
    assert parse_range("bytes=0-1,5-6", 100) is None  # several ranges: whole file
    assert parse_range("items=0-1", 100) is None
    for bad in ("bytes=100-", "bytes=5-2", "bytes=-0"):
        with pytest.raises(Unsatisfiable):
            parse_range(bad, 100)


@pytest.mark.django_db
def test_clip_names_are_random_and_reveal_nothing(media_root):
    _, items = trajectory_campaign([], b"0123456789")
    for item in items:
        assert re.fullmatch(r"clips/[0-9a-f]{32}\.webm", item.clip.name)
        assert item.clip_url == f"/media/{item.clip.name}"
        assert "best" not in item.clip_url and "gold" not in item.clip_url
    assert items[0].clip.name != items[1].clip.name


@pytest.mark.django_db
def test_only_members_and_staff_fetch_clips(client, media_root, staff):
    member, outsider = UserFactory.create_batch(2)
    # a WebM EBML header, then filler: the media view types a file by its content
    data = bytes.fromhex("1a45dfa39f4286810142f7810142f2810442f381084282847765626d4287810242858102")
    data += bytes(range(256)) * 40
    _, items = trajectory_campaign([member], data)
    url = items[0].clip_url
    assert client.get(url).status_code == 302  # to the login page
    client.force_login(outsider)
    assert client.get(url).status_code == 404
    client.force_login(staff)
    assert client.get(url).status_code == 200
    client.force_login(member)
    full = client.get(url)
    assert full.status_code == 200 and full["Accept-Ranges"] == "bytes"
    assert b"".join(full.streaming_content) == data and full["Content-Type"] == "video/webm"
    part = client.get(url, HTTP_RANGE="bytes=100-199")
    assert part.status_code == 206 and part["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert b"".join(part.streaming_content) == data[100:200] and part["Content-Length"] == "100"
    tail = client.get(url, HTTP_RANGE="bytes=-5")
    assert b"".join(tail.streaming_content) == data[-5:]
    beyond = client.get(url, HTTP_RANGE=f"bytes={len(data)}-")
    assert beyond.status_code == 416 and beyond["Content-Range"] == f"bytes */{len(data)}"
    assert client.get("/media/clips/" + "0" * 32 + ".webm").status_code == 404


@pytest.mark.django_db
def test_nginx_accel_redirect(client, media_root, settings):
    member = UserFactory()
    _, items = trajectory_campaign([member], b"x" * 10)
    settings.MEDIA_ACCEL_REDIRECT_PREFIX = "/protected-media/"
    client.force_login(member)
    r = client.get(items[0].clip_url)
    assert r["X-Accel-Redirect"] == f"/protected-media/{items[0].clip.name}" and r.content == b""


def test_ranges_under_gunicorn_with_debug_off(gunicorn_server, client, media_root, webm_clip):
    member = UserFactory()
    _, items = trajectory_campaign([member], webm_clip)
    client.force_login(member)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    url = gunicorn_server + items[0].clip_url
    r = httpx.get(url, headers={"Range": "bytes=1000-1999"}, cookies=cookies)
    assert r.status_code == 206 and r.content == webm_clip[1000:2000]
    assert r.headers["content-range"] == f"bytes 1000-1999/{len(webm_clip)}"
    assert httpx.get(url).status_code == 302  # no session: no clip

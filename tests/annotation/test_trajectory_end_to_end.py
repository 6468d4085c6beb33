"""The whole data path with a real media worker: generated Pendulum rollouts, a campaign cut
from them through the API, clips rendered by the worker (clip and poster served), pairs
leased only once ready, judged, and every judgment mapped back to exact dataset rows; plus
the staff pages that drive it."""

from __future__ import annotations

import time

import numpy as np
import pytest
from celery.contrib.testing.worker import start_worker
from django.test import Client

from annotation import dataset_io, services
from annotation.models import Campaign, ClipStatus, Dataset, Item, Pair
from feedback_app.celery import app
from tests.factories import UserFactory


@pytest.fixture
def storage(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DATASETS_ROOT = tmp_path / "datasets"
    return tmp_path


@pytest.fixture
def worker(transactional_db, storage):
    app.control.purge()
    with start_worker(
        app, pool="solo", concurrency=1, perform_ping_check=False, queues=["media"]
    ) as w:
        yield w


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_generated_rollouts_to_judged_pairs_that_map_back_to_rows(worker, api, staff):
    dataset = services.dataset_generate(
        env_id="Pendulum-v1",
        policies=["expert", "random"],
        episodes=2,
        seed=0,
        name="pendulum-e2e",
        max_steps=24,
    )
    api.force_authenticate(staff)
    response = api.post(
        "/api/v1/campaigns/",
        {
            "name": "Swing",
            "slug": "swing",
            "kind": "trajectory",
            "status": "active",
            "judgments_per_pair": 1,
            "source": {
                "dataset": "pendulum-e2e",
                "segment_length": 8,
                "stride": 8,
                "pairs": 4,
                "sampling": "across_episode",
            },
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    campaign = Campaign.objects.get(slug="swing")
    items = list(Item.objects.filter(campaign=campaign))
    # Asked of the worker by the creation itself; rendered, every pair then ready.
    assert wait_for(
        lambda: not Item.objects.filter(campaign=campaign, clip_status="pending").exists()
    )
    assert set(Item.objects.filter(campaign=campaign).values_list("clip_status", flat=True)) == {
        ClipStatus.READY
    }
    assert wait_for(lambda: not Pair.objects.filter(campaign=campaign, ready=False).exists())
    clips = api.get("/api/v1/campaigns/swing/clips/").json()
    assert clips["counts"]["ready"] == len(items) and clips["pairs_ready"] == 4

    annotator = UserFactory()
    services.membership_add(campaign=campaign, user=annotator)
    browser = Client()
    browser.force_login(annotator)
    observations = dataset_io.field_open(directory=dataset.path, name="observations")
    states = dataset_io.field_open(directory=dataset.path, name="infos/state")
    judged = 0
    while True:
        api.force_authenticate(annotator)
        lease = api.post("/api/v1/campaigns/swing/next/")
        if lease.status_code == 204:
            break
        assert lease.status_code == 200, lease.content
        body = lease.json()
        for side in ("left", "right"):
            # An annotator sees a clip, nothing of where it came from or what it earned.
            assert set(body[side]) == {"clip"}
            clip = browser.get(body[side]["clip"])
            assert clip.status_code == 200 and clip["Content-Type"] == "video/mp4"
            b"".join(clip.streaming_content)
        api.post(
            f"/api/v1/assignments/{body['assignment']}/judgment/",
            {"choices": "left"},
            format="json",
        )
        api.force_authenticate(staff)
        detail = api.get(f"/api/v1/assignments/{body['assignment']}/").json()
        assert detail["judgment"] is not None
        for key in ("item_a", "item_b"):
            side = detail["pair"][key]
            episode = dataset.episodes.get(index=side["episode"])
            rows = slice(side["start"], side["start"] + side["length"])
            assert episode.start <= rows.start and rows.stop <= episode.start + episode.length
            assert side["source"] == episode.policy
            # The rows named are the ones rendered: the observation is (cos, sin, velocity)
            # of the stored state.
            theta = states[rows, 0]
            assert np.allclose(observations[rows, 0], np.cos(theta), atol=1e-5)
        judged += 1
    assert judged == 4

    # The poster frame beside each clip is served as an image to members only.
    item = Item.objects.filter(campaign=campaign).first()
    poster = browser.get(item.poster_url)
    assert poster.status_code == 200 and poster["Content-Type"] == "image/jpeg"
    assert b"".join(poster.streaming_content)[:3] == b"\xff\xd8\xff"
    outsider = Client()
    outsider.force_login(UserFactory())
    assert outsider.get(item.poster_url).status_code == 404


@pytest.fixture
def small_dataset(db, storage):
    return services.dataset_generate(
        env_id="Pendulum-v1", policies=["expert"], episodes=2, seed=0, name="tiny", max_steps=20
    )


FORM = {
    "dataset": "tiny",
    "name": "From the page",
    "slug": "paged",
    "segment_length": "10",
    "stride": "5",
    "pairs": "6",
    "sampling": "random",
    "seed": "0",
    "judgments_per_pair": "2",
    "instructions": "",
    "activate": "1",
}


@pytest.mark.django_db
def test_the_staff_page_creates_a_campaign_from_a_dataset(client, staff, small_dataset):
    client.force_login(staff)
    page = client.get("/staff/campaigns/from-dataset/?dataset=tiny")
    assert page.status_code == 200 and b'<option value="tiny" selected>' in page.content
    response = client.post("/staff/campaigns/from-dataset/", FORM)
    assert response.status_code == 302 and response["Location"] == "/staff/campaigns/paged/clips/"
    campaign = Campaign.objects.get(slug="paged")
    assert campaign.status == "active" and campaign.judgments_per_pair == 2
    assert campaign.pairs.count() == 6 and campaign.source["stride"] == 5
    clips = client.get(response["Location"])
    assert b"Rendering on the media workers" in clips.content  # pending: no worker here


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change,words",
    [
        ({"pairs": "500"}, b"source.pairs"),
        ({"segment_length": "ten"}, b"whole number"),
        ({"slug": ""}, b"slug"),
        ({"dataset": "missing"}, b"No dataset named"),
    ],
)
def test_the_staff_page_names_what_is_wrong_and_stores_nothing(
    client, staff, small_dataset, change, words
):
    client.force_login(staff)
    response = client.post("/staff/campaigns/from-dataset/", {**FORM, **change})
    assert response.status_code in (400, 404) and words in response.content
    assert b'value="From the page"' in response.content  # what was typed is kept
    assert not Campaign.objects.exists()


@pytest.mark.django_db
def test_the_clips_page_lists_failures_and_re_renders_them(client, staff, small_dataset):
    campaign = services.campaign_create_from_dataset(
        name="c",
        slug="c",
        owner=staff,
        source={"dataset": "tiny", "segment_length": 10, "pairs": 1},
    )
    failed = Item.objects.filter(campaign=campaign).first()
    Item.objects.filter(pk=failed.pk).update(clip_status="failed", clip_error="no <env> here")
    client.force_login(staff)
    page = client.get("/staff/campaigns/c/clips/")
    assert b"no &lt;env&gt; here" in page.content and b"Re-render the failed clips" in page.content
    partial = client.get("/staff/campaigns/c/clips/", HTTP_HX_REQUEST="true")
    assert partial.content.lstrip().startswith(b'<section id="clip-progress"')
    response = client.post("/staff/campaigns/c/clips/")
    assert response.status_code == 302
    failed.refresh_from_db()
    assert failed.clip_status == "pending" and failed.clip_error == ""
    annotator = UserFactory()
    services.membership_add(campaign=campaign, user=annotator)
    client.force_login(annotator)
    assert client.get("/staff/campaigns/c/clips/").status_code == 403
    assert client.get("/staff/campaigns/from-dataset/").status_code == 403


def frames_npz(path, *, rows=24, episode=12):
    """Rollouts whose images were stored when they were collected (infos/frames): row i is
    a flat colour whose red channel is 10 * i, so the clip can be checked against them."""
    timeouts = np.zeros(rows, dtype=bool)
    timeouts[episode - 1 :: episode] = True
    frames = np.zeros((rows, 32, 48, 3), dtype=np.uint8)
    frames[..., 0] = (10 * np.arange(rows, dtype=np.uint8))[:, None, None]
    frames[..., 2] = 200
    np.savez(
        path,
        observations=np.zeros((rows, 2), dtype=np.float32),
        actions=np.zeros((rows, 1), dtype=np.float32),
        rewards=np.zeros(rows, dtype=np.float32),
        terminals=np.zeros(rows, dtype=bool),
        timeouts=timeouts,
        **{"infos/frames": frames},
    )
    return path


def test_clips_come_from_frames_stored_with_the_dataset(worker, storage):
    from io import BytesIO

    from django.core.files.storage import default_storage
    from PIL import Image

    dataset = services.dataset_import(
        path=frames_npz(storage / "frames.npz"), source_format="npz", name="framed"
    )
    assert "infos/frames" in dataset.fields and dataset.env_id == ""
    campaign = services.campaign_create_from_dataset(
        name="f",
        slug="f",
        source={"dataset": "framed", "segment_length": 6, "stride": 6, "pairs": 3},
    )
    assert wait_for(lambda: not campaign.items.filter(clip_status="pending").exists())
    for item in campaign.items.all():
        assert item.clip_status == "ready", item.clip_error
        assert item.clip_frames == 6
        with default_storage.open(item.poster.name, "rb") as fh:
            red, _, blue = Image.open(BytesIO(fh.read())).convert("RGB").getpixel((24, 16))
        assert abs(red - 10 * item.start) <= 8 and abs(blue - 200) <= 8  # the first row's image
    assert not campaign.pairs.filter(ready=False).exists()


@pytest.mark.django_db
def test_stored_frames_must_be_rgb_images(storage):
    from annotation.errors import ServiceError

    path = frames_npz(storage / "frames.npz")
    data = dict(np.load(path))
    data["infos/frames"] = data["infos/frames"][..., 0].astype(np.float32)  # (N, H, W) floats
    np.savez(path, **data)
    with pytest.raises(ServiceError, match="infos/frames"):
        services.dataset_import(path=path, source_format="npz", name="bad")
    assert not Dataset.objects.exists()

"""Clip rendering: stored states replayed to H.264 clips by a real Celery worker on the media
queue, and pairs that become leasable only once both their clips are ready."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from celery.contrib.testing.worker import start_worker
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone

from annotation import rendering, services
from annotation.errors import ClipsPending
from annotation.models import Campaign, ClipStatus, Item, Judgment, Pair
from annotation.services import clips
from feedback_app.celery import app
from tests.factories import CampaignFactory, UserFactory

SEGMENT = 8  # rows per segment


def _pendulum_npz(path: Path, *, episodes: int = 2, steps: int = 20) -> Path:
    """Pendulum rollouts stored the way an import expects them: observations
    (cos, sin, velocity), torques, and the state (angle, velocity) per row."""
    rng = np.random.default_rng(0)
    n = episodes * steps
    theta = np.cumsum(rng.normal(0, 0.3, n))
    velocity = rng.normal(0, 1, n)
    observations = np.stack([np.cos(theta), np.sin(theta), velocity], axis=1).astype(np.float32)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[steps - 1 :: steps] = True
    np.savez(
        path,
        observations=observations,
        actions=rng.uniform(-2, 2, (n, 1)).astype(np.float32),
        rewards=np.zeros(n, dtype=np.float32),
        terminals=np.zeros(n, dtype=bool),
        timeouts=timeouts,
        **{"infos/state": np.stack([theta, velocity], axis=1)},
    )
    return path


def _mujoco_npz(path: Path, rows: int = 4) -> Path:
    """InvertedPendulum-v5 states (qpos: cart, pole angle; qvel likewise)."""
    qpos = np.zeros((rows, 2))
    qpos[:, 1] = np.linspace(-0.2, 0.2, rows)
    qvel = np.zeros((rows, 2))
    terminals = np.zeros(rows, dtype=bool)
    terminals[-1] = True
    np.savez(
        path,
        observations=np.concatenate([qpos, qvel], axis=1).astype(np.float32),
        actions=np.zeros((rows, 1), dtype=np.float32),
        rewards=np.ones(rows, dtype=np.float32),
        terminals=terminals,
        timeouts=np.zeros(rows, dtype=bool),
        **{"infos/qpos": qpos, "infos/qvel": qvel},
    )
    return path


@pytest.fixture
def storage(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DATASETS_ROOT = tmp_path / "datasets"
    return tmp_path


def _dataset(tmp: Path, name: str, env_id: str, maker=_pendulum_npz):
    return services.dataset_import(
        path=maker(tmp / f"{name}.npz"), source_format="npz", name=name, env_id=env_id
    )


def _campaign(datasets, *, k: int = 1, members=()):
    """A trajectory campaign with one item per dataset segment given, every pair of
    consecutive items. `datasets`: [(dataset, start)]."""
    campaign = CampaignFactory(kind=Campaign.Kind.TRAJECTORY, judgments_per_pair=k)
    items = [
        Item.objects.create(
            campaign=campaign,
            source_dataset=ds,
            dataset=ds.name,
            episode=str(start // 20),
            start=start,
            length=SEGMENT,
        )
        for ds, start in datasets
    ]
    pairs = [
        Pair.objects.create(campaign=campaign, item_a=a, item_b=b)
        for a, b in zip(items, items[1:], strict=False)
    ]
    for user in members:
        services.membership_add(campaign=campaign, user=user)
    return campaign, items, pairs


def _mp4_boxes(name: str) -> list[bytes]:
    """The top-level box types of a stored MP4, in file order."""
    with default_storage.open(name, "rb") as fh:
        data = fh.read()
    boxes, at = [], 0
    while at + 8 <= len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        boxes.append(data[at + 4 : at + 8])
        if size == 1:
            size = int.from_bytes(data[at + 8 : at + 16], "big")
        if size < 8:
            break
        at += size
    return boxes


def wait_for(predicate, timeout=40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def worker(transactional_db, storage):
    app.control.purge()  # tasks left in the test Redis database by earlier tests
    with start_worker(
        app, pool="solo", concurrency=1, perform_ping_check=False, queues=["media"]
    ) as w:
        yield w


def _settled(item_ids):
    return lambda: not Item.objects.filter(pk__in=item_ids, clip_status=ClipStatus.PENDING).exists()


def test_worker_renders_clips_and_only_ready_pairs_are_leased(worker, storage, api):
    good = _dataset(storage, "pendulum", "Pendulum-v1")
    bad = _dataset(storage, "unknown", "NoSuchEnvironment-v0")
    first, second = UserFactory.create_batch(2)
    manager = UserFactory()
    campaign, (a, b, c), (ab, bc) = _campaign(
        [(good, 0), (good, 20), (bad, 4)], members=[first, second]
    )
    services.campaign_role_set(campaign=campaign, user=manager, role="manager")
    assert not ab.ready and not bc.ready
    with pytest.raises(ClipsPending):  # pairs exist, their clips do not yet
        services.assignment_lease_next(annotator=first, campaign=campaign)

    requested = clips.campaign_clips_request(campaign=campaign)
    assert requested == [a.pk, b.pk, c.pk]
    assert wait_for(_settled(requested))

    for item in (a, b):
        item.refresh_from_db()
        assert item.clip_status == ClipStatus.READY, item.clip_error
        assert item.clip_frames == SEGMENT and item.clip_fps == 30.0
        assert item.clip.name.startswith("clips/") and item.clip.name.endswith(".mp4")
        boxes = _mp4_boxes(item.clip.name)
        assert boxes[0] == b"ftyp"
        assert boxes.index(b"moov") < boxes.index(b"mdat")  # +faststart: seekable at once
        with default_storage.open(item.poster.name, "rb") as fh:
            assert fh.read(3) == b"\xff\xd8\xff"  # JPEG
    c.refresh_from_db()
    assert c.clip_status == ClipStatus.FAILED
    assert "NoSuchEnvironment-v0" in c.clip_error
    ab.refresh_from_db(), bc.refresh_from_db()
    assert ab.ready and not bc.ready

    lease = services.assignment_lease_next(annotator=first, campaign=campaign)
    assert lease.pair_id == ab.pk
    # k = 1 and the first annotator holds the only ready pair: the failed one is never leased.
    with pytest.raises(ClipsPending):
        services.assignment_lease_next(annotator=second, campaign=campaign)

    api.force_authenticate(manager)
    body = api.get(f"/api/v1/campaigns/{campaign.slug}/clips/").json()
    assert body["counts"] == {"none": 0, "pending": 0, "ready": 2, "failed": 1}
    assert (body["pairs_ready"], body["pairs_waiting"]) == (1, 1)
    assert [f["id"] for f in body["failed"]] == [c.pk]
    assert "NoSuchEnvironment-v0" in body["failed"][0]["error"]

    # Staff fix the dataset's environment and render the failed clips again.
    bad.env_id = "Pendulum-v1"
    bad.save(update_fields=["env_id"])
    answer = api.post(f"/api/v1/campaigns/{campaign.slug}/clips/rerender/", {}, format="json")
    assert answer.status_code == 202, answer.content
    assert answer.json() == {"requested": [c.pk], "kept": []}
    assert wait_for(_settled([c.pk]))
    c.refresh_from_db(), bc.refresh_from_db()
    assert c.clip_status == ClipStatus.READY and c.clip_error == ""
    assert bc.ready
    assert services.assignment_lease_next(annotator=second, campaign=campaign).pair_id == bc.pk


def test_mujoco_clip_from_qpos_and_qvel(storage, db):
    dataset = _dataset(storage, "inverted", "InvertedPendulum-v5", maker=_mujoco_npz)
    campaign = CampaignFactory(kind=Campaign.Kind.TRAJECTORY)
    item = Item.objects.create(campaign=campaign, source_dataset=dataset, start=0, length=4)
    clips.clips_request(item_ids=[item.pk])  # in the test's transaction: nothing sent
    report = clips.clips_render(item_ids=[item.pk])
    item.refresh_from_db()
    assert report.ready == [item.pk], item.clip_error
    assert item.clip_frames == 4 and item.clip_fps == 25.0
    assert _mp4_boxes(item.clip.name)[0] == b"ftyp"


def test_classic_control_states_from_observations(tmp_path):
    """Environments whose observation determines the state render without infos/state."""
    import gymnasium as gym

    for env_id in ("Pendulum-v1", "CartPole-v1", "Acrobot-v1", "MountainCar-v0"):
        space = gym.make(env_id).observation_space
        obs = np.stack([space.sample() for _ in range(3)])
        out = rendering.segment_render(
            env_id=env_id,
            segment=rendering.Segment(observations=obs),
            clip_path=tmp_path / "c.mp4",
            poster_path=tmp_path / "p.jpg",
            size=64,
        )
        assert out.frames == 3 and (out.width, out.height) == (64, 64), env_id
    assert rendering.gym_env_id("hopper-medium-v2") == "Hopper-v5"  # a D4RL name
    with pytest.raises(rendering.RenderError, match="infos/qpos"):
        rendering.segment_render(
            env_id="Hopper-v5",
            segment=rendering.Segment(observations=np.zeros((3, 11))),
            clip_path=tmp_path / "c.mp4",
            poster_path=tmp_path / "p.jpg",
        )


def test_a_second_or_late_delivery_changes_nothing(storage, db):
    dataset = _dataset(storage, "pendulum", "Pendulum-v1")
    campaign, (a, b), (ab,) = _campaign([(dataset, 0), (dataset, 8)])
    clips.clips_request(item_ids=[a.pk, b.pk])
    first = clips.clips_render(item_ids=[a.pk, b.pk])
    assert first.ready == [a.pk, b.pk] and first.pairs_ready == 1
    names = sorted(Item.objects.values_list("clip", flat=True))
    again = clips.clips_render(item_ids=[b.pk, a.pk])
    assert again.ready == [] and again.skipped == [a.pk, b.pk] and again.pairs_ready == 0
    assert sorted(Item.objects.values_list("clip", flat=True)) == names
    assert len(list(Path(storage, "media", "clips").iterdir())) == 4  # 2 clips, 2 posters


def test_two_workers_finishing_both_sides_at_once_leave_the_pair_ready(storage, transactional_db):
    """The worst interleaving: both items' updates are in flight, uncommitted, at the same
    moment. Had each worker marked the pair inside its item's transaction, each would see
    the other side still pending and the pair would never be leased."""
    dataset = _dataset(storage, "pendulum", "Pendulum-v1")
    campaign, (a, b), (ab,) = _campaign([(dataset, 0), (dataset, 8)])
    clips.clips_request(item_ids=[a.pk, b.pk])
    both_updated = threading.Barrier(2, timeout=30)
    real = clips._item_ready

    def held_open(item_id, **kwargs):
        # The item's update, then wait for the other worker's, and only then commit.
        with transaction.atomic():
            stored = real(item_id, **kwargs)
            both_updated.wait()
        return stored

    clips._item_ready = held_open  # both threads share the module
    errors = []

    def worker(item_id):
        try:
            clips.clips_render(item_ids=[item_id])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in (a.pk, b.pk)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        clips._item_ready = real
    assert not errors
    ab.refresh_from_db()
    assert ab.ready
    assert set(Item.objects.values_list("clip_status", flat=True)) == {ClipStatus.READY}


def test_sweep_requeues_lost_renders_and_marks_missed_pairs(
    storage, db, monkeypatch, django_capture_on_commit_callbacks
):
    dataset = _dataset(storage, "pendulum", "Pendulum-v1")
    campaign, (a, b, c), (ab, bc) = _campaign([(dataset, 0), (dataset, 8), (dataset, 16)])
    sent = []
    monkeypatch.setattr(clips, "_send", lambda ids: sent.append(list(ids)))
    long_ago = timezone.now() - clips.CLIP_STALE_AFTER - timedelta(minutes=1)
    Item.objects.filter(pk=a.pk).update(clip_status=ClipStatus.PENDING, clip_requested_at=long_ago)
    Item.objects.filter(pk=b.pk).update(
        clip_status=ClipStatus.PENDING, clip_requested_at=timezone.now()
    )
    # A worker died between c's commit and its pair statement... with b ready too:
    Item.objects.filter(pk=c.pk).update(clip_status=ClipStatus.READY)
    with django_capture_on_commit_callbacks(execute=True):
        result = clips.clips_sweep()
    assert result["requeued"] == 1 and sent == [[a.pk]]
    a.refresh_from_db()
    assert a.clip_requested_at > long_ago  # stamped anew: sent once per CLIP_STALE_AFTER
    Item.objects.filter(pk=b.pk).update(clip_status=ClipStatus.READY)
    assert clips.clips_sweep() == {"requeued": 0, "pairs_ready": 1}
    bc.refresh_from_db(), ab.refresh_from_db()
    assert bc.ready and not ab.ready


def test_rerender_keeps_a_ready_clip_whose_pair_was_judged(storage, db):
    dataset = _dataset(storage, "pendulum", "Pendulum-v1")
    user = UserFactory()
    campaign, (a, b, c), (ab, bc) = _campaign([(dataset, 0), (dataset, 8), (dataset, 16)])
    clips.clips_request(item_ids=[a.pk, b.pk, c.pk])
    clips.clips_render(item_ids=[a.pk, b.pk, c.pk])
    Judgment.objects.create(
        pair=ab, annotator=user, campaign=campaign, choices={"overall": "a"}, shown_left=a
    )
    Pair.objects.filter(pk=ab.pk).update(judgment_count=1)
    result = clips.clips_rerender(campaign=campaign, item_ids=[a.pk, c.pk])
    assert result.judged == [a.pk] and result.requested == [c.pk]
    ab.refresh_from_db(), bc.refresh_from_db()
    assert ab.ready and not bc.ready  # c's pair waits for its new clip
    old = Item.objects.get(pk=c.pk).clip.name
    clips.clips_render(item_ids=[c.pk])
    bc.refresh_from_db()
    assert bc.ready and Item.objects.get(pk=c.pk).clip.name != old


def test_an_uploaded_clip_counts_as_ready(storage, transactional_db, webm_clip, rf):
    from django.contrib.admin.sites import site
    from django.core.files.uploadedfile import SimpleUploadedFile

    campaign = CampaignFactory(kind=Campaign.Kind.TRAJECTORY)
    a = Item.objects.create(campaign=campaign, clip_status=ClipStatus.READY, clip="clips/x.webm")
    b = Item.objects.create(campaign=campaign, dataset="uploaded")
    pair = Pair.objects.create(campaign=campaign, item_a=a, item_b=b)
    assert not pair.ready

    class Form:
        changed_data = ["clip"]

    b.clip = SimpleUploadedFile("mine.webm", webm_clip)
    admin = site._registry[Item]
    with transaction.atomic():
        admin.save_model(rf.post("/"), b, Form(), change=True)
    b.refresh_from_db(), pair.refresh_from_db()
    assert b.clip_status == ClipStatus.READY and pair.ready


def test_clips_endpoints_are_for_managers(storage, db, api):
    member = UserFactory()
    campaign, _, _ = _campaign([], members=[member])
    api.force_authenticate(member)
    assert api.get(f"/api/v1/campaigns/{campaign.slug}/clips/").status_code == 403
    answer = api.post(f"/api/v1/campaigns/{campaign.slug}/clips/rerender/", {}, format="json")
    assert answer.status_code == 403 and answer.json()["error"] == "forbidden"
    api.force_authenticate(UserFactory())
    assert api.get(f"/api/v1/campaigns/{campaign.slug}/clips/").status_code == 404

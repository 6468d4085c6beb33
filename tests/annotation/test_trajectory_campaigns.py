"""Trajectory campaigns cut from a stored dataset: through the API and the command, every
pair maps back to exact source rows, bad options are refused with nothing stored, and no
pair is served before both of its clips are ready (annotation/services/trajectories.py)."""

import json

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from annotation import dataset_io, services
from annotation.errors import ClipsPending, ServiceError
from annotation.models import Campaign, ClipStatus, Dataset, Episode, Item, Pair
from tests.annotation.test_datasets import write_npz
from tests.factories import UserFactory

# Four episodes of 30, 12, 45 and 5 rows (the last shorter than any segment used here).
EPISODE_LENGTHS = (30, 12, 45, 5)


def episodes_arrays() -> dict[str, np.ndarray]:
    n = sum(EPISODE_LENGTHS)
    rng = np.random.default_rng(1)
    terminals = np.zeros(n, dtype=bool)
    timeouts = np.zeros(n, dtype=bool)
    ends = np.cumsum(EPISODE_LENGTHS) - 1
    terminals[ends[:2]] = True
    timeouts[ends[2:]] = True
    return {
        # Row i's first observation is i: a side's rows can be checked by their values.
        "observations": np.column_stack([np.arange(n), rng.normal(size=n)]).astype(np.float64),
        "actions": rng.uniform(-1, 1, size=(n, 1)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


@pytest.fixture
def dataset(settings, tmp_path):
    settings.DATASETS_ROOT = tmp_path / "datasets"
    path = write_npz(tmp_path / "rollouts.npz", episodes_arrays())
    stored = services.dataset_import(path=path, source_format="npz", name="swing", env_id="")
    for episode, policy in zip(
        stored.episodes.order_by("index"), ["expert", "random", "noisy", "random"], strict=True
    ):
        Episode.objects.filter(pk=episode.pk).update(policy=policy)
    return stored


SOURCE = {"dataset": "swing", "segment_length": 10, "stride": 5, "pairs": 40, "seed": 0}


def create(api, **source):
    return api.post(
        "/api/v1/campaigns/",
        {
            "name": "Swing-up",
            "slug": "swing",
            "kind": "trajectory",
            "judgments_per_pair": 1,
            "status": "active",
            "source": {**SOURCE, **source},
        },
        format="json",
    )


def all_pairs(api, slug="swing"):
    rows, url = [], f"/api/v1/campaigns/{slug}/pairs/?limit=7"
    while url:
        page = api.get(url)
        assert page.status_code == 200, page.json()
        rows += page.json()["results"]
        url = page.json()["next"]
    return rows


@pytest.mark.django_db
def test_a_campaign_from_a_dataset_maps_every_pair_to_exact_source_rows(api, staff, dataset):
    api.force_authenticate(staff)
    response = create(api, sampling="random")
    assert response.status_code == 201, response.json()
    assert response.json()["source"] == {**SOURCE, "sampling": "random"}
    campaign = Campaign.objects.get(slug="swing")
    assert campaign.kind == Campaign.Kind.TRAJECTORY

    rows = all_pairs(api)
    assert len(rows) == 40 == len({(r["item_a"]["id"], r["item_b"]["id"]) for r in rows})
    observations = dataset_io.field_open(directory=dataset.path, name="observations")
    episodes = {e.index: e for e in dataset.episodes.all()}
    policies = {0: "expert", 1: "random", 2: "noisy", 3: "random"}
    for row in rows:
        assert row["ready"] is False  # clips not rendered yet
        for side in (row["item_a"], row["item_b"]):
            episode = episodes[side["episode"]]
            assert side["dataset"] == "swing" and side["length"] == 10
            assert episode.start <= side["start"]
            assert side["start"] + side["length"] <= episode.start + episode.length
            assert (side["start"] - episode.start) % 5 == 0  # the stride
            rows_seen = observations[side["start"] : side["start"] + side["length"], 0]
            assert rows_seen.tolist() == list(range(side["start"], side["start"] + 10))
            assert side["source"] == policies[side["episode"]]
            assert side["clip_status"] == "pending"
    # Segments are shared between pairs, and each is stored once.
    used = {r[s]["id"] for r in rows for s in ("item_a", "item_b")}
    assert Item.objects.filter(campaign=campaign).count() == len(used) < 80


@pytest.mark.django_db
@pytest.mark.parametrize("sampling", ["within_episode", "across_episode"])
def test_sampling_designs_hold_through_the_api(api, staff, dataset, sampling):
    api.force_authenticate(staff)
    assert create(api, sampling=sampling, pairs=15).status_code == 201
    for row in all_pairs(api):
        same = row["item_a"]["episode"] == row["item_b"]["episode"]
        assert same == (sampling == "within_episode")


@pytest.mark.django_db
def test_the_same_seed_cuts_the_same_campaign(api, staff, dataset):
    api.force_authenticate(staff)
    first = services.trajectory_cut(source=services.TrajectorySource.parse(SOURCE))
    again = services.trajectory_cut(source=services.TrajectorySource.parse(SOURCE))
    other = services.trajectory_cut(source=services.TrajectorySource.parse({**SOURCE, "seed": 9}))
    assert np.array_equal(first.pairs, again.pairs)
    assert not np.array_equal(first.pairs, other.pairs)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "source,status,field,words",
    [
        ({"dataset": "nope"}, 404, "source.dataset", "No dataset named 'nope'"),
        ({"segment_length": 50}, 400, "source.segment_length", "the longest has 45"),
        ({"pairs": 100_000}, 400, "source.pairs", "allow only"),
        ({"sampling": "sideways"}, 400, "source", "sampling"),
        ({"stride": 0}, 400, "source", "stride"),
    ],
)
def test_bad_sources_are_refused_naming_the_option_and_store_nothing(
    api, staff, dataset, source, status, field, words
):
    api.force_authenticate(staff)
    response = create(api, **source)
    assert response.status_code == status, response.json()
    body = response.json()
    assert body.get("field", "source").startswith(field)
    assert words in str(body)
    assert not Campaign.objects.exists() and not Item.objects.exists()


@pytest.mark.django_db
def test_a_source_on_a_text_campaign_is_refused(api, staff, dataset):
    api.force_authenticate(staff)
    response = api.post(
        "/api/v1/campaigns/",
        {"name": "T", "slug": "t", "kind": "text", "source": SOURCE},
        format="json",
    )
    assert response.status_code == 400 and response.json()["field"] == "kind"
    assert not Campaign.objects.exists()


def mark_ready(items, status=ClipStatus.READY):
    """What the render task leaves behind: the clips' state, then the pairs' readiness."""
    ids = [item.pk for item in items]
    Item.objects.filter(pk__in=ids).update(clip_status=status, clip="clips/x.mp4")
    for pair in Pair.objects.filter(ready=False):
        sides = Item.objects.filter(pk__in=[pair.item_a_id, pair.item_b_id])
        if all(s.clip_status == ClipStatus.READY for s in sides):
            Pair.objects.filter(pk=pair.pk).update(ready=True)


@pytest.mark.django_db
def test_no_pair_is_served_before_both_clips_are_ready(api, staff, dataset):
    api.force_authenticate(staff)
    assert create(api, pairs=3, sampling="across_episode").status_code == 201
    campaign = Campaign.objects.get(slug="swing")
    annotator = UserFactory()
    services.membership_add(campaign=campaign, user=annotator)
    api.force_authenticate(annotator)

    # Nothing rendered: told to wait, not that the campaign is done.
    response = api.post("/api/v1/campaigns/swing/next/")
    assert response.status_code == 503 and response.json()["error"] == "clips_pending"
    with pytest.raises(ClipsPending):
        services.assignment_lease_next(annotator=annotator, campaign=campaign)

    first, second, third = Pair.objects.filter(campaign=campaign).order_by("id")
    # One side of the first pair ready, the other failed; the second pair fully ready.
    mark_ready([first.item_a])
    mark_ready([first.item_b], status=ClipStatus.FAILED)
    mark_ready([second.item_a, second.item_b])
    served = set()
    for _ in range(3):
        response = api.post("/api/v1/campaigns/swing/next/")
        if response.status_code != 200:
            break
        lease = response.json()
        detail = api.get(f"/api/v1/assignments/{lease['assignment']}/")
        assert detail.status_code == 403 or detail.status_code == 404
        api.force_authenticate(staff)
        detail = api.get(f"/api/v1/assignments/{lease['assignment']}/").json()
        api.force_authenticate(annotator)
        served.add(detail["pair"]["id"])
        assert lease["left"]["clip"] and lease["right"]["clip"]
        submitted = api.post(
            f"/api/v1/assignments/{lease['assignment']}/judgment/",
            {"choices": "left"},
            format="json",
        )
        assert submitted.status_code == 201
    assert served == {second.pk}
    # The third pair still waits for its clips; the first has a failed one: told to wait.
    assert response.status_code == 503
    mark_ready([third.item_a, third.item_b])
    assert api.post("/api/v1/campaigns/swing/next/").status_code == 200


@pytest.mark.django_db
def test_a_lease_resolves_to_its_pair_and_sides_for_staff_only(api, staff, dataset):
    api.force_authenticate(staff)
    assert create(api, pairs=2).status_code == 201
    campaign = Campaign.objects.get(slug="swing")
    mark_ready(Item.objects.filter(campaign=campaign))
    annotator = UserFactory()
    services.membership_add(campaign=campaign, user=annotator)
    lease = services.assignment_lease_next(annotator=annotator, campaign=campaign)

    api.force_authenticate(annotator)
    assert api.get(f"/api/v1/assignments/{lease.pk}/").status_code == 404
    assert api.get("/api/v1/campaigns/swing/pairs/").status_code == 403
    api.force_authenticate(staff)
    body = api.get(f"/api/v1/assignments/{lease.pk}/").json()
    assert body["pair"]["id"] == lease.pair_id and body["annotator"] == annotator.pk
    assert body["left"] == ("item_a" if lease.a_on_left else "item_b")
    assert body["status"] == "open" and body["judgment"] is None
    item_a = Item.objects.get(pk=lease.pair.item_a_id)
    assert body["pair"]["item_a"]["start"] == item_a.start
    assert api.get("/api/v1/assignments/999999/").status_code == 404


@pytest.mark.django_db
def test_the_command_creates_the_same_campaign(dataset, capsys):
    call_command(
        "campaign_from_dataset",
        "swing",
        "--slug",
        "cmd",
        "--segment-length",
        "10",
        "--stride",
        "5",
        "--pairs",
        "40",
        "--activate",
    )
    campaign = Campaign.objects.get(slug="cmd")
    assert campaign.status == "active" and campaign.pairs.count() == 40
    assert campaign.source == {**SOURCE, "sampling": "random"}
    expected = services.trajectory_cut(source=services.TrajectorySource.parse(SOURCE))
    stored = sorted(
        (p.item_a.start, p.item_b.start) for p in campaign.pairs.select_related("item_a", "item_b")
    )
    starts = expected.segments.start
    assert stored == sorted((starts[a], starts[b]) for a, b in expected.pairs.tolist())
    with pytest.raises(CommandError, match="source.pairs"):
        call_command(
            "campaign_from_dataset",
            "swing",
            "--slug",
            "x",
            "--segment-length",
            "10",
            "--pairs",
            "100000",
        )
    assert not Campaign.objects.filter(slug="x").exists()
    assert Dataset.objects.count() == 1


@pytest.mark.django_db
def test_the_compare_page_waits_for_clips_instead_of_saying_nothing_is_left(
    client, api, staff, dataset
):
    api.force_authenticate(staff)
    assert create(api, pairs=2).status_code == 201
    campaign = Campaign.objects.get(slug="swing")
    annotator = UserFactory()
    services.membership_add(campaign=campaign, user=annotator)
    client.force_login(annotator)
    page = client.get("/c/swing/")
    assert page.status_code == 503
    assert b"being rendered" in page.content and b"Nothing left" not in page.content
    polled = client.get("/c/swing/", HTTP_HX_REQUEST="true")
    assert polled.status_code == 200 and b'hx-trigger="every 10s"' in polled.content
    mark_ready(Item.objects.filter(campaign=campaign))
    page = client.get("/c/swing/")
    assert page.status_code == 200 and page.content.count(b'<video class="clip"') == 2


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["swing\x00", "x" * 1_000_000, "\ud800"])
def test_hostile_dataset_names_are_refused_naming_the_field(api, staff, dataset, name):
    api.force_authenticate(staff)
    body = {"name": "S", "slug": "s", "kind": "trajectory", "source": {**SOURCE, "dataset": name}}
    # As a client sends it: JSON escapes a lone surrogate as \ud800.
    response = api.post("/api/v1/campaigns/", json.dumps(body), content_type="application/json")
    assert response.status_code in (400, 404), response.content[:300]
    assert "source" in response.json().get("field", "source")
    with pytest.raises(ServiceError) as refused:
        services.trajectory_cut(source=services.TrajectorySource.parse({**SOURCE, "dataset": name}))
    assert refused.value.field == "source.dataset"
    assert not Campaign.objects.exists()

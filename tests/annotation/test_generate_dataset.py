"""Generated rollouts of hand-written policies (annotation/rollouts.py) stored as datasets
(annotation/services/datasets.py `dataset_generate`), and the sweep of staging folders that
killed imports leave behind (`dataset_staging_sweep`)."""

import os
import time

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from annotation import dataset_io, rollouts, services
from annotation.errors import Conflict, ServiceError
from annotation.models import Dataset, Episode

POLICIES = ["random", "noisy-expert", "expert"]


@pytest.fixture
def root(settings, tmp_path):
    settings.DATASETS_ROOT = tmp_path / "datasets"
    return settings.DATASETS_ROOT


def returns_by_policy(made: rollouts.Rollouts) -> dict[str, float]:
    return {
        name: float(
            np.mean([r for r, p in zip(made.returns, made.policies, strict=True) if p == name])
        )
        for name in POLICIES
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quality_order_is_real(seed):
    """Fails when the controller is broken: the expert must swing up and balance."""
    made = rollouts.rollouts_generate(
        env_id="Pendulum-v1", policies=POLICIES, episodes=12, seed=seed
    )
    mean = returns_by_policy(made)
    assert mean["expert"] > mean["noisy-expert"] + 50
    assert mean["noisy-expert"] > mean["random"] + 300
    # Swung up and held: the last 50 steps of every expert episode near the top.
    theta = made.fields["infos/state"][:, 0]
    upright = np.cos(theta) > 0.95
    starts = np.cumsum([0] + [200] * (len(made.policies) - 1))
    for start, policy in zip(starts, made.policies, strict=True):
        if policy == "expert":
            assert upright[start + 150 : start + 200].all()
    assert made.metadata["mean_returns"] == pytest.approx(mean)


def test_expert_swings_up_from_rest_at_the_bottom():
    obs = np.array([-1.0, 0.0, 0.0], dtype=np.float32)  # hanging, still
    assert abs(rollouts.pendulum_expert(obs, np.random.default_rng(0))[0]) > 0


def test_same_seed_same_arrays_other_seed_not():
    def run(seed):
        return rollouts.rollouts_generate(
            env_id="Pendulum-v1", policies=POLICIES, episodes=4, seed=seed, max_steps=30
        )

    first, again, other = run(7), run(7), run(8)
    assert first.policies == again.policies
    for name, values in first.fields.items():
        np.testing.assert_array_equal(values, again.fields[name])
    assert not np.array_equal(first.fields["observations"], other.fields["observations"])


def test_state_matches_observations_and_steps_chain():
    made = rollouts.rollouts_generate(
        env_id="Pendulum-v1", policies=POLICIES, episodes=3, seed=3, max_steps=40
    )
    f = made.fields
    theta, theta_dot = f["infos/state"][:, 0], f["infos/state"][:, 1]
    np.testing.assert_allclose(f["observations"][:, 0], np.cos(theta), atol=1e-6)
    np.testing.assert_allclose(f["observations"][:, 1], np.sin(theta), atol=1e-6)
    np.testing.assert_allclose(f["observations"][:, 2], theta_dot, atol=1e-5)
    # Within an episode, the next observation is the following row's observation.
    last = f["timeouts"] | f["terminals"]
    inside = ~last[:-1]
    np.testing.assert_array_equal(
        f["next_observations"][:-1][inside], f["observations"][1:][inside]
    )
    assert last.sum() == 3 and f["timeouts"][[39, 79, 119]].all()
    assert (np.abs(f["actions"]) <= 2).all()


def test_unknown_env_policy_and_counts_refused():
    with pytest.raises(rollouts.RolloutError, match="no policies for 'CartPole-v1'"):
        rollouts.rollouts_generate(env_id="CartPole-v1", policies=["expert"], episodes=1, seed=0)
    with pytest.raises(rollouts.RolloutError, match="unknown policy 'genius'"):
        rollouts.rollouts_generate(env_id="Pendulum-v1", policies=["genius"], episodes=1, seed=0)
    with pytest.raises(rollouts.RolloutError, match="episodes"):
        rollouts.rollouts_generate(env_id="Pendulum-v1", policies=["expert"], episodes=0, seed=0)
    with pytest.raises(rollouts.RolloutError, match="noise"):
        rollouts.rollouts_generate(
            env_id="Pendulum-v1", policies=["expert"], episodes=1, seed=0, noise=float("nan")
        )


@pytest.mark.django_db
def test_generate_stores_episodes_policies_and_metadata(root):
    dataset = services.dataset_generate(
        env_id="Pendulum-v1",
        policies=POLICIES,
        episodes=5,
        seed=11,
        name="pendulum mix",
        noise=0.8,
        max_steps=25,
    )
    dataset.refresh_from_db()
    assert dataset.source_format == "generated"
    assert dataset.env_id == "Pendulum-v1"
    assert dataset.transition_count == 125 and dataset.episode_count == 5
    assert sorted(dataset.fields) == sorted(
        [
            "observations",
            "actions",
            "rewards",
            "terminals",
            "timeouts",
            "next_observations",
            "infos/state",
        ]
    )
    assert list(
        Episode.objects.filter(dataset=dataset).values_list(
            "index", "start", "length", "truncated", "policy"
        )
    ) == [
        (0, 0, 25, True, "random"),
        (1, 25, 25, True, "noisy-expert"),
        (2, 50, 25, True, "expert"),
        (3, 75, 25, True, "random"),
        (4, 100, 25, True, "noisy-expert"),
    ]
    meta = dataset.metadata
    assert meta["env"] == "Pendulum-v1" and meta["policies"] == POLICIES
    assert (meta["seed"], meta["noise"], meta["max_steps"], meta["episodes"]) == (11, 0.8, 25, 5)
    # The stored arrays are the rollouts' own.
    again = rollouts.rollouts_generate(
        env_id="Pendulum-v1", policies=POLICIES, episodes=5, seed=11, noise=0.8, max_steps=25
    )
    for name, values in again.fields.items():
        np.testing.assert_array_equal(
            dataset_io.field_open(directory=dataset.path, name=name), values
        )
    assert [p.name for p in root.iterdir()] == [dataset.directory]


@pytest.mark.django_db
def test_command_generates_and_reports(root, capsys):
    call_command(
        "generate_dataset",
        "--env",
        "Pendulum-v1",
        "--policy",
        "expert, random",
        "--episodes",
        "2",
        "--seed",
        "1",
        "--name",
        "pend",
        "--max-steps",
        "10",
    )
    out = capsys.readouterr().out
    assert "20 transitions, 2 episodes" in out and "mean return expert" in out
    assert list(Episode.objects.values_list("policy", flat=True)) == ["expert", "random"]


@pytest.mark.django_db
def test_bad_requests_store_nothing(root):
    with pytest.raises(ServiceError, match="unknown policy"):
        services.dataset_generate(
            env_id="Pendulum-v1", policies=["expert", "oracle"], episodes=2, seed=0, name="x"
        )
    with pytest.raises(CommandError, match="Nothing generated: .*episodes"):
        call_command(
            "generate_dataset", "--env", "Pendulum-v1", "--policy", "expert",
            "--episodes", "0", "--seed", "0", "--name", "x",
        )  # fmt: skip
    assert not Dataset.objects.exists() and not Episode.objects.exists()
    assert not root.exists() or list(root.iterdir()) == []


@pytest.mark.django_db
def test_size_limit_and_taken_name(root, settings):
    settings.DATASET_MAX_BYTES = 1000
    with pytest.raises(ServiceError, match="bytes of arrays; the limit is 1000"):
        services.dataset_generate(
            env_id="Pendulum-v1", policies=["random"], episodes=1, seed=0, name="big"
        )
    assert not Dataset.objects.exists() and list(root.iterdir()) == []
    settings.DATASET_MAX_BYTES = 10**9
    services.dataset_generate(
        env_id="Pendulum-v1", policies=["random"], episodes=1, seed=0, name="p", max_steps=5
    )
    with pytest.raises(Conflict):
        services.dataset_generate(
            env_id="Pendulum-v1", policies=["random"], episodes=1, seed=0, name=" p", max_steps=5
        )
    assert Dataset.objects.count() == 1


def test_staging_sweep_removes_only_old_staging_dirs(root):
    root.mkdir(parents=True)
    old = root / ".import-killed"
    (old / "sub").mkdir(parents=True)
    (old / "observations.npy").write_bytes(b"x")
    fresh = root / ".import-running"
    fresh.mkdir()
    (fresh / "observations.npy").write_bytes(b"x")
    stale_but_busy = root / ".import-busy"  # an old folder whose file is still being written
    stale_but_busy.mkdir()
    (stale_but_busy / "actions.npy").write_bytes(b"x")
    dataset_dir = root / ("a" * 32)  # a dataset's own folder, however old
    dataset_dir.mkdir()
    stray_file = root / ".import-note"  # not a directory
    stray_file.write_text("x")
    outside = root.parent / "elsewhere"
    outside.mkdir()
    link = root / ".import-link"  # a link is never followed out of the root
    link.symlink_to(outside, target_is_directory=True)
    long_ago = time.time() - 7200
    for path in (
        old,
        old / "sub",
        old / "observations.npy",
        stale_but_busy,
        dataset_dir,
        stray_file,
    ):
        os.utime(path, (long_ago, long_ago), follow_symlinks=False)
    os.utime(outside, (long_ago, long_ago))

    assert services.dataset_staging_sweep(older_than_seconds=3600) == 1

    assert sorted(p.name for p in root.iterdir()) == sorted(
        [".import-running", ".import-busy", "a" * 32, ".import-note", ".import-link"]
    )
    assert outside.exists()
    assert services.dataset_staging_sweep(older_than_seconds=3600) == 0


def test_staging_sweep_without_a_root(settings, tmp_path):
    settings.DATASETS_ROOT = tmp_path / "never-made"
    assert services.dataset_staging_sweep() == 0


def test_staging_sweep_removes_old_upload_files_and_folders_too(root):
    root.mkdir(parents=True)
    body = root / ".upload-abc"  # a request body streamed to disk by a killed upload
    body.write_bytes(b"x")
    extracted = root / ".upload-zip"  # a Minari archive's extraction
    extracted.mkdir()
    (extracted / "metadata.json").write_text("{}")
    uploading = root / ".upload-live"
    uploading.write_bytes(b"x")
    long_ago = time.time() - 7200
    for path in (body, extracted, extracted / "metadata.json"):
        os.utime(path, (long_ago, long_ago))
    assert services.dataset_staging_sweep(older_than_seconds=3600) == 2
    assert sorted(p.name for p in root.iterdir()) == [".upload-live"]

"""Datasets imported from local Minari datasets: episodes flattened to rows in episode-id
order, boundaries and infos kept, every bad input refused with nothing stored
(annotation/dataset_io.py's Minari reader, annotation/services/datasets.py)."""

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from django.core.management import CommandError, call_command
from minari import create_dataset_from_buffers
from minari.data_collector import EpisodeBuffer

from annotation import dataset_io, services
from annotation.errors import ServiceError
from annotation.models import Dataset, Episode

# Episode 0 terminates, 1 is truncated, 2 is cut off (neither flag: marked a timeout).
LENGTHS = (5, 4, 3)
DATASET_ID = "tests/pendulum-tiny-v0"


def episodes(
    *, action_space: gym.Space | None = None, obs_shape: tuple[int, ...] = (3,), seed: int = 0
) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for k, steps in enumerate(LENGTHS):
        flags = np.zeros(steps, dtype=bool)
        if isinstance(action_space, gym.spaces.Discrete):
            actions = rng.integers(0, action_space.n, size=steps)
        else:
            actions = rng.uniform(-2, 2, size=(steps, 1)).astype(np.float32)
        out.append(
            {
                "observations": rng.normal(size=(steps + 1, *obs_shape)).astype(np.float32),
                "actions": actions,
                "rewards": rng.normal(size=steps),
                "terminations": flags | (np.arange(steps) == steps - 1) & (k == 0),
                "truncations": flags | (np.arange(steps) == steps - 1) & (k == 1),
                # The collector's layout: the reset's info, then one per step.
                "state": rng.normal(size=(steps + 1, 2)),
                "qpos": rng.normal(size=(steps + 1, 4)),
            }
        )
    return out


def write_minari(
    datasets_path: Path,
    data: list[dict[str, np.ndarray]],
    *,
    dataset_id: str = DATASET_ID,
    env: str | None = "Pendulum-v1",
    observation_space: gym.Space | None = None,
    action_space: gym.Space | None = None,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A dataset written by minari's own writer under `datasets_path`; its directory."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(datasets_path))
    buffers = [
        EpisodeBuffer(
            observations=e["observations"],
            actions=e["actions"],
            rewards=e["rewards"],
            terminations=e["terminations"],
            truncations=e["truncations"],
            infos={"state": e["state"], "qpos": e["qpos"], "ignored": np.arange(len(e["state"]))},
        )
        for e in data
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # minari asks for an author email etc.
        create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=env,
            observation_space=observation_space,
            action_space=action_space,
            algorithm_name="random",
            description="a tiny test dataset",
        )
    return datasets_path / dataset_id


@pytest.fixture
def root(settings, tmp_path):
    settings.DATASETS_ROOT = tmp_path / "datasets"
    settings.MINARI_DATASETS_PATH = tmp_path / "minari"
    return settings.DATASETS_ROOT


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(dataset_io, "CHUNK_ROWS", 4)  # windows that cut across episodes


def assert_nothing_stored(root: Path) -> None:
    assert not Dataset.objects.exists()
    assert not Episode.objects.exists()
    assert not root.exists() or list(root.iterdir()) == []


def expected_rows(data: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    timeouts = [e["truncations"].copy() for e in data]
    timeouts[2][-1] = True  # the cut-off episode's end
    return {
        "observations": np.concatenate([e["observations"][:-1] for e in data]),
        "next_observations": np.concatenate([e["observations"][1:] for e in data]),
        "actions": np.concatenate([e["actions"] for e in data]),
        "rewards": np.concatenate([e["rewards"] for e in data]),
        "terminals": np.concatenate([e["terminations"] for e in data]),
        "timeouts": np.concatenate(timeouts),
        "infos/state": np.concatenate([e["state"][:-1] for e in data]),
        "infos/qpos": np.concatenate([e["qpos"][:-1] for e in data]),
    }


@pytest.mark.django_db
@pytest.mark.parametrize("given", ["id", "directory", "data-directory"])
def test_import_round_trip(root, settings, small_chunks, monkeypatch, given):
    data = episodes()
    directory = write_minari(settings.MINARI_DATASETS_PATH, data, monkeypatch=monkeypatch)
    path = {"id": DATASET_ID, "directory": directory, "data-directory": directory / "data"}

    dataset = services.dataset_import(
        path=path[given], source_format="minari", name="pendulum tiny"
    )

    dataset.refresh_from_db()
    assert dataset.source_format == "minari"
    assert dataset.env_id == "Pendulum-v1"  # from the dataset's env spec
    assert dataset.transition_count == sum(LENGTHS)
    assert dataset.episode_count == 3
    assert dataset.observation_space == {"shape": [3], "dtype": "float32"}
    assert dataset.action_space == {"shape": [1], "dtype": "float32"}
    expected = expected_rows(data)
    assert sorted(dataset.fields) == sorted(expected)
    for name, values in expected.items():
        stored = dataset_io.field_open(directory=dataset.path, name=name)
        assert stored.dtype == values.dtype, name
        np.testing.assert_array_equal(stored, values, err_msg=name)
    assert list(
        Episode.objects.filter(dataset=dataset).values_list(
            "index", "start", "length", "terminated", "truncated"
        )
    ) == [(0, 0, 5, True, False), (1, 5, 4, False, True), (2, 9, 3, False, True)]
    assert dataset.metadata["dataset_id"] == DATASET_ID
    assert dataset.metadata["source"] == "minari"
    assert dataset.metadata["algorithm_name"] == "random"
    assert dataset.metadata["total_episodes"] == 3
    assert dataset.metadata["ends_marked_timeout"] == 1
    assert dataset.metadata["observation_space"] == {
        "type": "Box",
        "shape": [3],
        "dtype": "float32",
    }
    assert [p.name for p in root.iterdir()] == [dataset.directory]


@pytest.mark.django_db
def test_command_by_id_with_env_given(root, settings, monkeypatch, capsys):
    write_minari(settings.MINARI_DATASETS_PATH, episodes(), monkeypatch=monkeypatch)
    call_command(
        "import_dataset", DATASET_ID, "--format", "minari", "--name", "p", "--env", "custom-v0"
    )
    assert "12 transitions, 3 episodes" in capsys.readouterr().out
    dataset = Dataset.objects.get()
    assert dataset.env_id == "custom-v0"
    assert dataset.metadata["env_id"] == "Pendulum-v1"


@pytest.mark.django_db
def test_no_env_spec_and_no_infos(root, settings, monkeypatch):
    data = episodes()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(settings.MINARI_DATASETS_PATH))
    buffers = [
        EpisodeBuffer(
            observations=e["observations"],
            actions=e["actions"],
            rewards=e["rewards"],
            terminations=e["terminations"],
            truncations=e["truncations"],
        )
        for e in data
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        create_dataset_from_buffers(
            "bare-v0",
            buffers,
            observation_space=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
            action_space=gym.spaces.Box(-2, 2, (1,), np.float32),
        )
    dataset = services.dataset_import(path="bare-v0", source_format="minari", name="bare")
    assert dataset.env_id == ""
    assert "infos/state" not in dataset.fields and "observations" in dataset.fields


def _nan_observation(data):
    data[1]["observations"][2, 1] = np.nan  # episode 1 starts at row 5: row 7


def _inf_reward(data):
    data[2]["rewards"][1] = np.inf  # episode 2 starts at row 9: row 10


def _nan_state(data):
    data[0]["state"][3, 0] = np.nan


BAD_VALUES = {
    "nan": (_nan_observation, ["'observations'", "row 7"]),
    "inf": (_inf_reward, ["'rewards'", "row 10"]),
    "nan-info": (_nan_state, ["'infos/state'", "row 3"]),
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_rejected_and_nothing_stored(root, settings, small_chunks, monkeypatch, case):
    change, words = BAD_VALUES[case]
    data = episodes()
    change(data)
    write_minari(settings.MINARI_DATASETS_PATH, data, monkeypatch=monkeypatch)
    with pytest.raises(ServiceError) as caught:
        services.dataset_import(path=DATASET_ID, source_format="minari", name="bad")
    for word in words:
        assert word in caught.value.message
    assert_nothing_stored(root)


@pytest.mark.django_db
def test_not_a_dataset_directory(root, tmp_path):
    folder = tmp_path / "just-a-folder"
    folder.mkdir()
    (folder / "data").mkdir()
    with pytest.raises(ServiceError) as caught:
        services.dataset_import(path=folder, source_format="minari", name="x")
    assert str(folder) in caught.value.message
    assert "not a Minari dataset directory" in caught.value.message
    assert_nothing_stored(root)


@pytest.mark.django_db
@pytest.mark.parametrize("given", ["nowhere/unknown-v3", "../escape-v0", "a b"])
def test_unknown_or_malformed_id(root, settings, given):
    with pytest.raises(ServiceError) as caught:
        services.dataset_import(path=given, source_format="minari", name="x")
    assert given in caught.value.message
    assert_nothing_stored(root)


@pytest.mark.django_db
def test_unknown_id_says_where_it_looked(root, settings):
    with pytest.raises(ServiceError) as caught:
        services.dataset_import(path="D4RL/door/human-v2", source_format="minari", name="x")
    assert str(settings.MINARI_DATASETS_PATH) in caught.value.message
    assert "nothing is downloaded" in caught.value.message


@pytest.mark.django_db
def test_discrete_action_space_refused(root, settings, monkeypatch):
    space = gym.spaces.Discrete(3)
    write_minari(
        settings.MINARI_DATASETS_PATH,
        episodes(action_space=space),
        env=None,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        action_space=space,
        monkeypatch=monkeypatch,
    )
    with pytest.raises(ServiceError, match="action space is Discrete.*only Box"):
        services.dataset_import(path=DATASET_ID, source_format="minari", name="d")
    assert_nothing_stored(root)


@pytest.mark.django_db
def test_dict_observation_space_refused(root, settings, monkeypatch):
    data = episodes()
    space = gym.spaces.Dict({"position": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)})
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(settings.MINARI_DATASETS_PATH))
    buffers = [
        EpisodeBuffer(
            observations={"position": e["observations"]},
            actions=e["actions"],
            rewards=e["rewards"],
            terminations=e["terminations"],
            truncations=e["truncations"],
        )
        for e in data
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        create_dataset_from_buffers(
            DATASET_ID,
            buffers,
            observation_space=space,
            action_space=gym.spaces.Box(-2, 2, (1,), np.float32),
        )
    with pytest.raises(ServiceError, match="observation space is Dict.*only Box"):
        services.dataset_import(path=DATASET_ID, source_format="minari", name="d")
    assert_nothing_stored(root)


@pytest.mark.django_db
@pytest.mark.parametrize("limit", ["directory", "arrays"])
def test_size_limit(root, settings, monkeypatch, limit):
    directory = write_minari(settings.MINARI_DATASETS_PATH, episodes(), monkeypatch=monkeypatch)
    if limit == "directory":  # every file of the dataset counts
        on_disk = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        settings.DATASET_MAX_BYTES = on_disk - 1
    else:  # the arrays once written: observations alone are 12 rows of 3 float32
        monkeypatch.setattr(dataset_io, "_source_size", lambda source: 0)
        settings.DATASET_MAX_BYTES = 12 * 3 * 4
    with pytest.raises(ServiceError, match="the limit is"):
        services.dataset_import(path=DATASET_ID, source_format="minari", name="big")
    assert_nothing_stored(root)


@pytest.mark.django_db
def test_flag_before_the_last_step_refused(root, settings, monkeypatch):
    data = episodes()
    data[1]["terminations"][1] = True
    write_minari(settings.MINARI_DATASETS_PATH, data, monkeypatch=monkeypatch)
    with pytest.raises(ServiceError, match="episode 1 is marked in 'terminations' at step 1"):
        services.dataset_import(path=DATASET_ID, source_format="minari", name="x")
    assert_nothing_stored(root)


@pytest.mark.django_db
def test_episode_shorter_than_its_metadata_refused(root, settings, monkeypatch):
    import h5py

    directory = write_minari(settings.MINARI_DATASETS_PATH, episodes(), monkeypatch=monkeypatch)
    with h5py.File(directory / "data" / "main_data.hdf5", "a") as f:
        f["episode_2"].attrs["total_steps"] = 7  # a claim the arrays do not back
    with pytest.raises(ServiceError, match="episode 2 has 3 steps; its metadata says 7"):
        services.dataset_import(path=DATASET_ID, source_format="minari", name="x")
    assert_nothing_stored(root)


@pytest.mark.django_db
def test_command_refuses_with_exit_status(root, tmp_path):
    with pytest.raises(CommandError, match="Nothing imported: .*not a Minari dataset") as caught:
        call_command("import_dataset", str(tmp_path), "--format", "minari", "--name", "x")
    assert caught.value.returncode == 1
    assert_nothing_stored(root)


@pytest.mark.django_db
@pytest.mark.parametrize("damage", ["episode-removed", "file-cut"])
def test_damaged_dataset_refused(root, settings, monkeypatch, damage):
    import h5py

    directory = write_minari(settings.MINARI_DATASETS_PATH, episodes(), monkeypatch=monkeypatch)
    main = directory / "data" / "main_data.hdf5"
    if damage == "episode-removed":
        with h5py.File(main, "a") as f:
            del f["episode_1"]
    else:
        main.write_bytes(main.read_bytes()[:2000])
    with pytest.raises(ServiceError, match="cannot be read"):
        services.dataset_import(path=DATASET_ID, source_format="minari", name="x")
    assert_nothing_stored(root)


@pytest.mark.django_db
@pytest.mark.parametrize("episode", [0, 1])
def test_actions_short_of_their_steps_refused(root, settings, monkeypatch, episode):
    data = episodes()
    data[episode]["actions"] = data[episode]["actions"][:-1]
    write_minari(settings.MINARI_DATASETS_PATH, data, monkeypatch=monkeypatch)
    steps = LENGTHS[episode]
    with pytest.raises(ServiceError) as caught:
        services.dataset_import(path=DATASET_ID, source_format="minari", name="x")
    assert f"episode {episode}: 'actions' has shape ({steps - 1}, 1) for {steps} steps" in (
        caught.value.message
    )
    assert_nothing_stored(root)

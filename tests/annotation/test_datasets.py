"""Datasets imported from files: field files round trip, episodes, and all-or-nothing
rejection of bad input (annotation/dataset_io.py, annotation/services/datasets.py)."""

import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from django.core.management import CommandError, call_command

from annotation import dataset_io, services
from annotation.errors import Conflict, ServiceError
from annotation.models import Dataset, Episode

N = 23
# Episodes: rows 0-6 terminate, 7-16 time out, 17-22 are cut off by the end of the file.
TERMINAL_ROW, TIMEOUT_ROW = 6, 16


def arrays(n: int = N) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    terminals = np.zeros(n, dtype=bool)
    timeouts = np.zeros(n, dtype=bool)
    terminals[TERMINAL_ROW] = True
    timeouts[TIMEOUT_ROW] = True
    return {
        "observations": rng.normal(size=(n, 4)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": rng.normal(size=(n, 4)).astype(np.float32),
        "infos/qpos": rng.normal(size=(n, 3)),
        "infos/qvel": rng.normal(size=(n, 3)),
    }


def write_hdf5(path: Path, data: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for name, values in data.items():
            f.create_dataset(name, data=values, chunks=True)
    return path


def write_npz(path: Path, data: dict[str, np.ndarray]) -> Path:
    np.savez(path, **data)
    return path


@pytest.fixture
def root(settings, tmp_path):
    settings.DATASETS_ROOT = tmp_path / "datasets"
    return settings.DATASETS_ROOT


def assert_nothing_stored(root: Path) -> None:
    assert not Dataset.objects.exists()
    assert not Episode.objects.exists()
    assert not root.exists() or list(root.iterdir()) == []


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["d4rl", "npz"])
def test_import_round_trip(root, tmp_path, fmt, monkeypatch):
    monkeypatch.setattr(dataset_io, "CHUNK_ROWS", 5)  # several chunks, boundaries inside them
    data = arrays()
    writer = write_hdf5 if fmt == "d4rl" else write_npz
    source = writer(tmp_path / f"src.{'hdf5' if fmt == 'd4rl' else 'npz'}", data)

    dataset = services.dataset_import(
        path=source, source_format=fmt, name="  hopper\tmedium ", env_id="hopper-medium-v2"
    )

    dataset.refresh_from_db()
    assert dataset.name == "hopper medium"
    assert dataset.env_id == "hopper-medium-v2"
    assert dataset.transition_count == N
    assert dataset.episode_count == 3
    assert dataset.observation_space == {"shape": [4], "dtype": "float32"}
    assert dataset.action_space == {"shape": [2], "dtype": "float32"}
    assert sorted(dataset.fields) == sorted(data)
    assert dataset.path.parent == root
    assert len(dataset.directory) == 32 and "hopper" not in dataset.directory
    assert [p.name for p in root.iterdir()] == [dataset.directory]
    for name, values in data.items():
        stored = dataset_io.field_open(directory=dataset.path, name=name)
        assert isinstance(stored, np.memmap)
        assert stored.dtype == values.dtype
        np.testing.assert_array_equal(stored, values)  # row i is the source's row i
    episodes = list(
        Episode.objects.filter(dataset=dataset).values_list(
            "index", "start", "length", "terminated", "truncated"
        )
    )
    assert episodes == [
        (0, 0, 7, True, False),
        (1, 7, 10, False, True),
        (2, 17, 6, False, True),
    ]


def test_flags_as_integers_and_last_row_boundary(tmp_path):
    data = arrays()
    data["terminals"] = data["terminals"].astype(np.float32)
    data["timeouts"] = np.zeros(N, dtype=np.int8)
    data["timeouts"][-1] = 1
    dest = tmp_path / "out"
    dest.mkdir()
    summary = dataset_io.dataset_convert(
        source=write_npz(tmp_path / "s.npz", data), fmt="npz", dest=dest, max_bytes=10**9
    )
    assert [(e.start, e.length, e.terminated, e.truncated) for e in summary.episodes] == [
        (0, 7, True, False),
        (7, 16, False, True),
    ]
    assert dataset_io.field_open(directory=dest, name="terminals").dtype == bool


def broken(change):
    def build(tmp_path: Path, fmt: str) -> Path:
        data = arrays()
        change(data)
        if fmt == "d4rl":
            return write_hdf5(tmp_path / "bad.hdf5", data)
        return write_npz(tmp_path / "bad.npz", data)

    return build


def _nan_obs(d):
    d["observations"][11, 2] = np.nan


def _inf_reward(d):
    d["rewards"][19] = np.inf


def _nan_qvel(d):
    d["infos/qvel"][3, 0] = np.nan


def _short_actions(d):
    d["actions"] = d["actions"][:-1]


def _no_timeouts(d):
    del d["timeouts"]


def _bad_flag(d):
    d["terminals"] = d["terminals"].astype(np.int64)
    d["terminals"][5] = 2


def _reward_matrix(d):
    d["rewards"] = d["rewards"].reshape(-1, 1)


BAD = {
    "nan": (_nan_obs, ["'observations'", "row 11"]),
    "inf": (_inf_reward, ["'rewards'", "row 19"]),
    "nan-info": (_nan_qvel, ["'infos/qvel'", "row 3"]),
    "length": (_short_actions, ["'actions'", "22 rows"]),
    "missing": (_no_timeouts, ["missing", "'timeouts'"]),
    "flag": (_bad_flag, ["'terminals'", "row 5"]),
    "shape": (_reward_matrix, ["'rewards'", "shape"]),
}


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["d4rl", "npz"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_values_rejected_and_nothing_stored(root, tmp_path, fmt, case, monkeypatch):
    monkeypatch.setattr(dataset_io, "CHUNK_ROWS", 4)  # the bad row is in a later chunk
    change, words = BAD[case]
    source = broken(change)(tmp_path, fmt)
    with pytest.raises(ServiceError) as caught:
        services.dataset_import(path=source, source_format=fmt, name="bad")
    for word in words:
        assert word in caught.value.message
    assert_nothing_stored(root)


@pytest.mark.django_db
def test_not_hdf5_rejected(root, tmp_path):
    source = tmp_path / "notes.hdf5"
    source.write_text("not an HDF5 file\n")
    with pytest.raises(ServiceError, match="not a readable HDF5 file"):
        services.dataset_import(path=source, source_format="d4rl", name="x")
    assert_nothing_stored(root)


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["d4rl", "npz"])
def test_truncated_file_rejected(root, tmp_path, fmt):
    data = arrays(2000)
    writer = write_hdf5 if fmt == "d4rl" else write_npz
    source = writer(tmp_path / f"full.{fmt}", data)
    blob = source.read_bytes()
    source.write_bytes(blob[: len(blob) * 2 // 3])
    with pytest.raises(ServiceError) as caught:
        services.dataset_import(path=source, source_format=fmt, name="cut")
    assert "not a readable" in caught.value.message or "truncated" in caught.value.message
    assert_nothing_stored(root)


def test_truncated_npz_member_names_the_field(tmp_path):
    # An archive whose member is shorter than its header says: read a chunk at a time, the
    # shortfall is found where it happens, named by field.
    source = write_npz(tmp_path / "s.npz", arrays())

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(tmp_path / "cut.npz", "w") as dst:
        for info in src.infolist():
            blob = src.read(info)
            dst.writestr(info.filename, blob[:-8] if info.filename == "actions.npy" else blob)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(dataset_io.DatasetError, match="'actions' is shorter.*truncated"):
        dataset_io.dataset_convert(
            source=tmp_path / "cut.npz", fmt="npz", dest=dest, max_bytes=10**9
        )


@pytest.mark.django_db
def test_size_limit(root, tmp_path, settings):
    source = write_hdf5(tmp_path / "big.hdf5", arrays())
    settings.DATASET_MAX_BYTES = source.stat().st_size - 1
    with pytest.raises(ServiceError, match="the limit is"):
        services.dataset_import(path=source, source_format="d4rl", name="big")
    assert_nothing_stored(root)


@pytest.mark.django_db
def test_duplicate_name_rejected_and_first_kept(root, tmp_path):
    source = write_hdf5(tmp_path / "a.hdf5", arrays())
    first = services.dataset_import(path=source, source_format="d4rl", name="walker")
    with pytest.raises(Conflict, match="exists already"):
        services.dataset_import(path=source, source_format="d4rl", name=" walker ")
    assert list(Dataset.objects.all()) == [first]
    assert [p.name for p in root.iterdir()] == [first.directory]


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["", "   ", "a\x00b", "x" * 201])
def test_bad_names_rejected(root, tmp_path, name):
    source = write_hdf5(tmp_path / "a.hdf5", arrays())
    with pytest.raises(ServiceError) as caught:
        services.dataset_import(path=source, source_format="d4rl", name=name)
    assert caught.value.field == "name"
    assert_nothing_stored(root)


@pytest.mark.django_db
def test_failure_after_files_written_leaves_nothing(root, tmp_path, monkeypatch):
    source = write_hdf5(tmp_path / "a.hdf5", arrays())

    def fail(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(Episode.objects, "bulk_create", fail)
    with pytest.raises(RuntimeError):
        services.dataset_import(path=source, source_format="d4rl", name="x")
    assert_nothing_stored(root)


@pytest.mark.django_db
def test_command_imports_and_reports(root, tmp_path, capsys):
    source = write_hdf5(tmp_path / "a.hdf5", arrays())
    call_command("import_dataset", str(source), "--format", "d4rl", "--name", "hopper")
    out = capsys.readouterr().out
    assert f"{N} transitions, 3 episodes" in out
    assert Dataset.objects.get().name == "hopper"


@pytest.mark.django_db
def test_command_rejects_bad_input_with_exit_status(root, tmp_path):
    data = arrays()
    data["rewards"][9] = np.nan
    source = write_npz(tmp_path / "bad.npz", data)
    with pytest.raises(CommandError, match="Nothing imported: field 'rewards'.*row 9") as caught:
        call_command("import_dataset", str(source), "--format", "npz", "--name", "bad")
    assert caught.value.returncode == 1
    assert_nothing_stored(root)


@pytest.mark.django_db
def test_command_exit_status_from_the_shell(root, tmp_path):
    """The process's exit status and message. The child reaches the test database (nothing
    is written: the file is rejected before any row)."""
    import os
    import subprocess
    import sys

    from django.db import connection

    source = tmp_path / "x.hdf5"
    source.write_bytes(b"\x89HDF\r\n")
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATASETS_ROOT": str(root),
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
    }
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "import_dataset",
            str(source),
            "--format",
            "d4rl",
            "--name",
            "x",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 1
    assert "Nothing imported" in result.stderr and "HDF5" in result.stderr


@pytest.mark.django_db
def test_admin_read_only_for_staff_with_view_permission(root, tmp_path, client):
    from django.contrib.auth.models import Permission

    from tests.factories import UserFactory

    dataset = services.dataset_import(
        path=write_hdf5(tmp_path / "a.hdf5", arrays()), source_format="d4rl", name="hopper"
    )
    viewer = UserFactory(is_staff=True, username="viewer")
    client.force_login(viewer)
    assert client.get("/admin/annotation/dataset/").status_code == 403
    viewer.user_permissions.add(
        Permission.objects.get(codename="view_dataset"),
        Permission.objects.get(codename="view_episode"),
    )
    page = client.get("/admin/annotation/dataset/")
    assert page.status_code == 200 and b"hopper" in page.content
    assert client.get(f"/admin/annotation/dataset/{dataset.pk}/change/").status_code == 200
    assert client.get("/admin/annotation/episode/").status_code == 200
    assert client.get("/admin/annotation/dataset/add/").status_code == 403
    assert client.post(f"/admin/annotation/dataset/{dataset.pk}/delete/").status_code == 403
    assert Dataset.objects.count() == 1


@pytest.mark.django_db
def test_compressed_npz(root, tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_io, "CHUNK_ROWS", 6)
    data = arrays()
    np.savez_compressed(tmp_path / "c.npz", **data)
    dataset = services.dataset_import(path=tmp_path / "c.npz", source_format="npz", name="c")
    for name, values in data.items():
        np.testing.assert_array_equal(
            dataset_io.field_open(directory=dataset.path, name=name), values
        )


@pytest.mark.django_db
def test_arrays_over_the_limit_once_uncompressed(root, tmp_path, settings):
    data = arrays(5000)
    data["observations"] = np.zeros((5000, 200), dtype=np.float32)  # compresses to little
    data["next_observations"] = data["observations"]
    np.savez_compressed(tmp_path / "z.npz", **data)
    settings.DATASET_MAX_BYTES = 1_000_000
    assert (tmp_path / "z.npz").stat().st_size < settings.DATASET_MAX_BYTES
    with pytest.raises(ServiceError, match="bytes of arrays; the limit is 1000000"):
        services.dataset_import(path=tmp_path / "z.npz", source_format="npz", name="z")
    assert_nothing_stored(root)


@pytest.mark.django_db
def test_missing_source_file(root, tmp_path):
    with pytest.raises(ServiceError, match="cannot read nowhere.hdf5"):
        services.dataset_import(path=tmp_path / "nowhere.hdf5", source_format="d4rl", name="n")
    assert_nothing_stored(root)

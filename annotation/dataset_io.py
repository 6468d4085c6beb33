"""Reading RL datasets from files and writing them as one memory-mappable `.npy` per field.

No Django here: this module knows files and arrays only; annotation/services/datasets.py puts
what it writes into place and stores the rows.

Formats (the field names are D4RL's, the same in both):

- ``d4rl``: an HDF5 file in the D4RL layout, read with h5py one chunk of rows at a time;
- ``npz``: a NumPy ``.npz`` archive whose members carry the same names, the infos included
  as ``infos/qpos`` and ``infos/qvel`` (``np.savez(path, **{"infos/qpos": qpos, ...})``),
  also read a chunk of rows at a time from the archive (never the whole member in memory);
- ``minari``: a local Minari dataset directory, read with the ``minari`` package one episode
  at a time (see ``_minari_source`` for how its episodes become rows);
- arrays already in memory (``arrays_convert``), e.g. generated rollouts.

Required fields: ``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts``;
optional: ``next_observations``, ``infos/qpos``, ``infos/qvel`` (MuJoCo states) and
``infos/state`` (a classic-control environment's state vector, for rendering) and
``infos/frames`` (one RGB image per row, uint8 ``(N, H, W, 3)``: clips are made from these
as they are, for environments that cannot be replayed). Every field has one row per
transition, in source order: row i of every written array is row i of the source file, so a
per-transition result can be written back to the source by row number.

Episodes end at a row whose ``terminals`` or ``timeouts`` is true (that row is the episode's
last). Rows after the last such boundary form a final episode marked truncated (the source
stopped mid-episode), not terminated.

The size limit holds for the source file (a Minari directory: all its files) and for the
arrays it holds once uncompressed.
Every value is checked before the caller keeps anything: lengths agree, numbers are finite,
flags are 0/1. An error names the field and, where it is about a value, the first bad row.
"""

from __future__ import annotations

import functools
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np

FORMATS = ("d4rl", "npz", "minari")
REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")
OPTIONAL = ("next_observations", "infos/qpos", "infos/qvel", "infos/state", "infos/frames")
FLAGS = ("terminals", "timeouts")
PER_ROW_SCALAR = ("rewards", "terminals", "timeouts")  # shape (N,)
CHUNK_ROWS = 65_536


class DatasetError(Exception):
    """Input that cannot be imported; the message names the field and row where it can."""


@dataclass(frozen=True)
class EpisodeSpan:
    index: int
    start: int
    length: int
    terminated: bool
    truncated: bool


@dataclass
class Summary:
    """What `dataset_convert` wrote."""

    transitions: int
    observation_space: dict[str, Any]
    action_space: dict[str, Any]
    fields: list[str]
    episodes: list[EpisodeSpan] = field(default_factory=list)
    # What the source says about itself (Minari: its metadata.json, spaces summarised).
    metadata: dict[str, Any] = field(default_factory=dict)
    env_id: str = ""  # the source's environment id, where it names one


def field_filename(name: str) -> str:
    """The file a field is written to: ``infos/qpos`` -> ``infos_qpos.npy``."""
    return name.replace("/", "_") + ".npy"


def field_open(*, directory: Path, name: str) -> np.ndarray:
    """A written field as a read-only memory map (nothing read until indexed)."""
    return np.load(directory / field_filename(name), mmap_mode="r", allow_pickle=False)


def space_of(array_shape: tuple[int, ...], dtype: np.dtype) -> dict[str, Any]:
    """One row's shape and dtype, as stored with the dataset."""
    return {"shape": list(array_shape[1:]), "dtype": str(dtype)}


# A source field: its shape, dtype and a reader of rows [start, stop).
@dataclass(frozen=True)
class _Field:
    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[int, int], np.ndarray]


@dataclass
class _Source:
    fields: dict[str, _Field]
    metadata: dict[str, Any] = field(default_factory=dict)
    env_id: str = ""


def _hdf5_reader(node: Any) -> Callable[[int, int], np.ndarray]:
    # h5py reads just the hyperslab asked for: one chunk of rows in memory.
    def read(start: int, stop: int) -> np.ndarray:
        return np.asarray(node[start:stop])

    return read


@contextmanager
def _hdf5_source(path: Path) -> Iterator[_Source]:
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path.name} is not a readable HDF5 file ({exc}).") from exc
    try:
        found: dict[str, _Field] = {}
        for name in REQUIRED + OPTIONAL:
            if name not in handle:
                continue
            node = handle[name]
            if not isinstance(node, h5py.Dataset):
                raise DatasetError(f"field '{name}' is not an array.")
            found[name] = _Field(shape=tuple(node.shape), dtype=node.dtype, read=_hdf5_reader(node))
        yield _Source(fields=found)
    finally:
        handle.close()


def _npz_member_reader(
    archive: zipfile.ZipFile, member: str
) -> tuple[tuple[int, ...], np.dtype, Callable[[int, int], np.ndarray]]:
    """Shape, dtype and a forward-only row reader of one ``.npy`` member, read from the
    archive as a stream: a chunk of rows in memory at a time."""
    with archive.open(member) as probe:
        version = np.lib.format.read_magic(probe)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(probe)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(probe)
        header_bytes = probe.tell()
    if dtype.hasobject:
        raise DatasetError(f"field '{member[:-4]}' holds Python objects, not numbers.")
    if fortran and len(shape) > 1:
        raise DatasetError(f"field '{member[:-4]}' is stored column-major; save it C-ordered.")
    row_items = int(np.prod(shape[1:], dtype=np.int64)) if shape else 1
    row_bytes = row_items * dtype.itemsize
    # The header's shape is only a claim: a member shorter than it says is cut off (or
    # forged), found here before anything is allocated for it.
    if shape and header_bytes + shape[0] * row_bytes > archive.getinfo(member).file_size:
        raise DatasetError(
            f"field '{member[:-4]}' is shorter than its header says (the file is truncated)."
        )
    state: dict[str, Any] = {"stream": None, "at": 0}

    def read(start: int, stop: int) -> np.ndarray:
        stream: IO[bytes] | None = state["stream"]
        if stream is None or start != state["at"]:  # sequential reads only; reopen otherwise
            if stream is not None:
                stream.close()
            stream = archive.open(member)
            np.lib.format.read_magic(stream)
            if version == (1, 0):
                np.lib.format.read_array_header_1_0(stream)
            else:
                np.lib.format.read_array_header_2_0(stream)
            stream.read(start * row_bytes)
            state["stream"] = stream
        want = (stop - start) * row_bytes
        data = stream.read(want)
        if len(data) != want:
            raise DatasetError(f"field '{member[:-4]}' ends early (the file is truncated).")
        state["at"] = stop
        return np.frombuffer(data, dtype=dtype).reshape((stop - start, *shape[1:]))

    return tuple(shape), dtype, read


@contextmanager
def _npz_source(path: Path) -> Iterator[_Source]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path.name} is not a readable .npz archive ({exc}).") from exc
    try:
        members = set(archive.namelist())
        found: dict[str, _Field] = {}
        for name in REQUIRED + OPTIONAL:
            if name + ".npy" not in members:
                continue
            shape, dtype, read = _npz_member_reader(archive, name + ".npy")
            found[name] = _Field(shape=shape, dtype=dtype, read=read)
        yield _Source(fields=found)
    finally:
        archive.close()


def _fields_check(fields: dict[str, _Field]) -> int:
    """The transition count, once names, shapes and dtypes are right."""
    for name in REQUIRED:
        if name not in fields:
            raise DatasetError(f"missing required field '{name}'.")
    for name, f in fields.items():
        if f.dtype.kind not in "biuf":
            raise DatasetError(f"field '{name}' has dtype {f.dtype}; expected numbers.")
        if len(f.shape) == 0:
            raise DatasetError(f"field '{name}' is a scalar; expected one row per transition.")
    n = fields["observations"].shape[0]
    if n == 0:
        raise DatasetError("field 'observations' has no rows.")
    for name, f in fields.items():
        if f.shape[0] != n:
            raise DatasetError(f"field '{name}' has {f.shape[0]} rows; 'observations' has {n}.")
        if name in PER_ROW_SCALAR and len(f.shape) != 1:
            raise DatasetError(f"field '{name}' has shape {f.shape}; expected ({n},).")
    frames = fields.get("infos/frames")
    if frames is not None and (
        frames.dtype != np.uint8 or len(frames.shape) != 4 or frames.shape[3] not in (3, 4)
    ):
        raise DatasetError(
            f"field 'infos/frames' has shape {frames.shape} and dtype {frames.dtype}; "
            "expected uint8 (N, height, width, 3) RGB images."
        )
    nexts = fields.get("next_observations")
    if nexts is not None and nexts.shape != fields["observations"].shape:
        raise DatasetError(
            f"field 'next_observations' has shape {nexts.shape}; "
            f"'observations' has {fields['observations'].shape}."
        )
    return n


def _chunk_check(name: str, chunk: np.ndarray, start: int) -> np.ndarray:
    """The chunk as stored (flags as bool), or the first bad row named."""
    if chunk.dtype.kind == "f":
        finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise DatasetError(f"field '{name}' has a NaN or infinite value at row {row}.")
    if name in FLAGS:
        ok = (chunk == 0) | (chunk == 1)
        if not ok.all():
            row = start + int(np.argmin(ok))
            raise DatasetError(
                f"field '{name}' has {chunk[row - start]!r} at row {row}; expected 0 or 1."
            )
        return chunk.astype(bool)
    return chunk


# --- Minari ------------------------------------------------------------------------------
#
# A Minari dataset (minari 0.5: ``<root>/<dataset id>/data/`` holding ``metadata.json`` and
# the episodes) stores each episode on its own: T steps carry T + 1 observations (the last
# is the one after the final step), T actions, rewards, terminations and truncations, and
# infos with one row per observation (the reset's, then one per step). Episodes are flattened
# in episode-id order to rows: ``observations`` = obs[:-1], ``next_observations`` = obs[1:],
# ``terminals`` = terminations, ``timeouts`` = truncations, and an info ``qpos``, ``qvel`` or
# ``state`` with T + 1 rows becomes ``infos/<key>`` = its first T rows (the state at each
# row's observation). An episode whose last step is neither terminated nor truncated (a
# collector stopped early) gets that last row marked as a timeout, so the rows' episode
# boundaries are exactly Minari's episodes; a flag before an episode's last step is refused.
# Only Box observation and action spaces are read: a Dict, Tuple, Discrete ... space is
# refused by name (a Discrete action would need its own column type downstream).

MINARI_INFOS = ("qpos", "qvel", "state")
# A Minari dataset id: ``(namespace/)name(-vN)``, path segments of word characters and dashes.
_MINARI_ID = re.compile(r"[-\w]+(/[-\w]+)*")


def minari_dataset_locate(*, path_or_id: str, datasets_path: Path) -> Path:
    """The ``data`` directory (holding ``metadata.json``) of a local Minari dataset: given as
    a directory (the dataset's, or its ``data`` folder), or as a dataset id under
    `datasets_path`. Nothing is downloaded."""
    given = Path(path_or_id).expanduser()
    if given.is_dir():
        for candidate in (given / "data", given):
            if (candidate / "metadata.json").is_file():
                return candidate
        raise DatasetError(
            f"{path_or_id} is not a Minari dataset directory "
            "(no metadata.json in it or in its data/ folder)."
        )
    if not _MINARI_ID.fullmatch(path_or_id):
        raise DatasetError(f"{path_or_id} is neither a directory nor a Minari dataset id.")
    data = Path(datasets_path) / path_or_id / "data"
    if not (data / "metadata.json").is_file():
        raise DatasetError(
            f"no Minari dataset {path_or_id!r} under {datasets_path} (MINARI_DATASETS_PATH); "
            "nothing is downloaded: copy it there first."
        )
    return data


def _space_summary(space: Any) -> dict[str, Any]:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype)}
    return {"type": type(space).__name__}


class _MinariRows:
    """Rows [start, stop) of every field, read forward through the episodes: at most one
    episode and one window of rows in memory."""

    def __init__(self, storage: Any, lengths: list[int]) -> None:
        self._storage = storage
        self.lengths = lengths
        self._episodes: Iterator[dict[str, Any]] = iter(storage.get_episodes(range(len(lengths))))
        self.marked_timeouts = 0
        self.skipped_infos: list[str] = []
        self._index = -1
        self._current: dict[str, np.ndarray] = {}
        self._current_start = 0
        self._current_length = 0
        self._window: tuple[int, int] = (0, 0)
        self._window_rows: dict[str, np.ndarray] = {}
        self._next()  # the first episode fixes each field's dtype and row shape
        self.dtypes = {name: a.dtype for name, a in self._current.items()}
        self.row_shapes = {name: a.shape[1:] for name, a in self._current.items()}

    def close(self) -> None:
        close = getattr(self._episodes, "close", None)
        if close is not None:
            close()

    def _next(self) -> None:
        self._current_start += self._current_length
        self._index += 1
        try:
            raw = next(self._episodes)
        except StopIteration:
            raise DatasetError(
                f"episode {self._index} is missing (the dataset is truncated)."
            ) from None
        # minari checks its file's layout with asserts: a malformed episode is bad input.
        except (KeyError, ValueError, TypeError, OSError, AssertionError) as exc:
            raise DatasetError(f"episode {self._index} cannot be read ({exc!r}).") from exc
        try:
            self._current = self._flatten(raw)
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"episode {self._index} lacks {exc}.") from exc
        self._current_length = self.lengths[self._index]

    def _flatten(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        k = self._index
        steps = self.lengths[k]
        where = f"episode {k}"
        obs = np.asarray(raw["observations"])
        rewards = np.asarray(raw["rewards"]).reshape(-1)
        if len(rewards) != steps:
            raise DatasetError(
                f"{where} has {len(rewards)} steps; its metadata says {steps} "
                "(the dataset is truncated or altered)."
            )
        if len(obs) != steps + 1:
            raise DatasetError(
                f"{where} has {len(obs)} observations for {steps} steps; expected {steps + 1}."
            )
        terminals = np.asarray(raw["terminations"]).reshape(-1).astype(bool)
        timeouts = np.asarray(raw["truncations"]).reshape(-1).astype(bool)
        for name, flags in (("terminations", terminals), ("truncations", timeouts)):
            if len(flags) != steps:
                raise DatasetError(f"{where} has {len(flags)} {name} for {steps} steps.")
            early = np.flatnonzero(flags[:-1])
            if len(early):
                raise DatasetError(
                    f"{where} is marked in '{name}' at step {int(early[0])} of {steps}, "
                    "before its last step."
                )
        if not (terminals[-1] or timeouts[-1]):
            timeouts[-1] = True  # a collector stopped mid-episode: its end is a cut, a timeout
            self.marked_timeouts += 1
        rows = {
            "observations": obs[:-1],
            "next_observations": obs[1:],
            "actions": np.asarray(raw["actions"]),
            "rewards": rewards,
            "terminals": terminals,
            "timeouts": timeouts,
        }
        infos = raw.get("infos") or {}
        for key in MINARI_INFOS:
            value = infos.get(key)
            wanted = k == 0 or f"infos/{key}" in self.dtypes
            if not wanted:
                continue
            if (
                isinstance(value, np.ndarray)
                and value.dtype.kind in "biuf"
                and value.ndim >= 1
                and len(value) == steps + 1
            ):
                rows[f"infos/{key}"] = value[:-1]
            elif k == 0:
                if value is not None:  # present, but not one row per observation: left out
                    self.skipped_infos.append(key)
            else:
                raise DatasetError(
                    f"{where} lacks info '{key}' with {steps + 1} rows, which episode 0 has."
                )
        for name, values in rows.items():
            if values.ndim == 0 or len(values) != steps:
                raise DatasetError(f"{where}: '{name}' has shape {values.shape} for {steps} steps.")
            if k == 0:
                continue
            if values.shape[1:] != self.row_shapes[name]:
                raise DatasetError(
                    f"{where}: '{name}' has shape {values.shape}; "
                    f"episode 0's rows are {self.row_shapes[name]}."
                )
            if values.dtype != self.dtypes[name]:
                if not np.can_cast(values.dtype, self.dtypes[name], "same_kind"):
                    raise DatasetError(
                        f"{where}: '{name}' has dtype {values.dtype}; "
                        f"episode 0's is {self.dtypes[name]}."
                    )
                rows[name] = values.astype(self.dtypes[name])
        return rows

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        if (start, stop) != self._window:
            if start != self._window[1]:
                raise RuntimeError("Minari rows are read forward, one window after another.")
            self._window_rows = self._assemble(start, stop)
            self._window = (start, stop)
        return self._window_rows[name]

    def _assemble(self, start: int, stop: int) -> dict[str, np.ndarray]:
        pieces: dict[str, list[np.ndarray]] = {name: [] for name in self.dtypes}
        at = start
        while at < stop:
            if at >= self._current_start + self._current_length:
                self._next()
                continue
            lo = at - self._current_start
            hi = min(stop, self._current_start + self._current_length) - self._current_start
            for name in pieces:
                pieces[name].append(self._current[name][lo:hi])
            at = self._current_start + hi
        return {
            name: parts[0] if len(parts) == 1 else np.concatenate(parts)
            for name, parts in pieces.items()
        }


def _json_safe(value: Any) -> Any:
    """Metadata as JSON: sets and tuples as lists, numpy scalars as numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        items = sorted(value, key=str) if isinstance(value, set) else value
        return [_json_safe(v) for v in items]
    if isinstance(value, np.generic):
        return value.item()
    return value


@contextmanager
def _minari_source(data_path: Path) -> Iterator[_Source]:
    import gymnasium as gym
    from minari.dataset.minari_dataset import MinariDataset
    from minari.dataset.minari_storage import MinariStorage

    try:
        raw = MinariStorage.read_raw_metadata(data_path)
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{data_path} is not a readable Minari dataset ({exc}).") from exc
    # Without stored spaces minari would build the environment to learn them: refused, so
    # an import never runs environment code.
    for key in ("observation_space", "action_space", "dataset_id"):
        if key not in raw:
            raise DatasetError(f"the Minari metadata.json in {data_path} lacks '{key}'.")
    try:
        dataset = MinariDataset(data_path)
    except (ValueError, TypeError, OSError, KeyError, AssertionError, ImportError) as exc:
        raise DatasetError(f"{data_path} is not a readable Minari dataset ({exc}).") from exc
    for role, space in (
        ("observation", dataset.observation_space),
        ("action", dataset.action_space),
    ):
        if not isinstance(space, gym.spaces.Box):
            raise DatasetError(
                f"the dataset's {role} space is {type(space).__name__} ({str(space)[:120]}); "
                "only Box spaces can be imported."
            )
    storage = dataset.storage
    count = len(dataset.episode_indices)
    if count == 0:
        raise DatasetError(f"Minari dataset {dataset.id!r} holds no episodes.")
    try:
        lengths = [int(m["total_steps"]) for m in storage.get_episode_metadata(range(count))]
    except (KeyError, ValueError, TypeError, OSError, AssertionError) as exc:
        raise DatasetError(f"the episodes of {dataset.id!r} cannot be read ({exc}).") from exc
    for k, steps in enumerate(lengths):
        if steps < 1:
            raise DatasetError(f"episode {k} has no steps.")
    rows = _MinariRows(storage, lengths)
    try:
        total = sum(lengths)
        fields = {
            name: _Field(
                shape=(total, *rows.row_shapes[name]),
                dtype=rows.dtypes[name],
                read=functools.partial(rows.read, name),
            )
            for name in rows.dtypes
        }
        metadata = {
            key: value
            for key, value in raw.items()
            if key not in ("observation_space", "action_space", "env_spec", "eval_env_spec")
        }
        metadata["observation_space"] = _space_summary(dataset.observation_space)
        metadata["action_space"] = _space_summary(dataset.action_space)
        env_id = dataset.env_spec.id if dataset.env_spec is not None else ""
        metadata["env_id"] = env_id
        metadata["source"] = "minari"
        source = _Source(fields=fields, metadata=_json_safe(metadata), env_id=env_id)
        yield source
        # Known only once every episode has been read.
        source.metadata["ends_marked_timeout"] = rows.marked_timeouts
        if rows.skipped_infos:
            source.metadata["infos_left_out"] = rows.skipped_infos
    finally:
        rows.close()


def _source_size(source: Path) -> int:
    """Bytes of the file, or of every file under the directory."""
    if not source.is_dir():
        return source.stat().st_size
    total = 0
    for folder, _dirs, files in os.walk(source):
        for name in files:
            total += (Path(folder) / name).lstat().st_size
    return total


_OPENERS: dict[str, Callable[[Path], Any]] = {
    "d4rl": _hdf5_source,
    "npz": _npz_source,
    "minari": _minari_source,
}


def dataset_convert(
    *, source: Path, fmt: str, dest: Path, max_bytes: int, chunk_rows: int | None = None
) -> Summary:
    """Read `source`, check every value, write one ``.npy`` per field into `dest` (an
    existing, empty directory) and return what was written. On DatasetError `dest` may hold
    partial files: the caller removes it."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}.")
    try:
        size = _source_size(source)
    except OSError as exc:
        raise DatasetError(f"cannot read {source.name} ({exc.strerror}).") from exc
    if size > max_bytes:
        raise DatasetError(f"{source.name} is {size} bytes; the limit is {max_bytes}.")
    with _OPENERS[fmt](source) as opened:
        return _fields_convert(
            opened, label=source.name, dest=dest, max_bytes=max_bytes, chunk_rows=chunk_rows
        )


def _slicer(values: np.ndarray) -> Callable[[int, int], np.ndarray]:
    def read(start: int, stop: int) -> np.ndarray:
        return values[start:stop]

    return read


def arrays_convert(
    *,
    arrays: dict[str, np.ndarray],
    dest: Path,
    max_bytes: int,
    label: str = "the arrays",
    chunk_rows: int | None = None,
) -> Summary:
    """`dataset_convert` for fields already in memory (named as in a file: ``observations``,
    ``infos/state`` ...), with the same checks; unknown names are refused."""
    unknown = sorted(set(arrays) - set(REQUIRED + OPTIONAL))
    if unknown:
        raise DatasetError(f"unknown field {unknown[0]!r}.")
    fields: dict[str, _Field] = {}
    for name, values in arrays.items():
        values = np.asarray(values)
        if values.dtype.hasobject:
            raise DatasetError(f"field '{name}' holds Python objects, not numbers.")
        fields[name] = _Field(
            shape=tuple(values.shape),
            dtype=values.dtype,
            read=_slicer(values),
        )
    return _fields_convert(
        _Source(fields=fields), label=label, dest=dest, max_bytes=max_bytes, chunk_rows=chunk_rows
    )


def _fields_convert(
    source: _Source, *, label: str, dest: Path, max_bytes: int, chunk_rows: int | None
) -> Summary:
    """The shared path of every format: checks, chunked copy, episode spans."""
    # Read at call time, so a test can make chunks small for every format.
    chunk_rows = chunk_rows or CHUNK_ROWS
    fields = source.fields
    n = _fields_check(fields)
    # Compressed sources can hold far more than their size: the limit holds for the
    # arrays written too, so a small file cannot fill the disk.
    out_bytes = sum(
        int(np.prod(f.shape, dtype=np.int64)) * (1 if name in FLAGS else f.dtype.itemsize)
        for name, f in fields.items()
    )
    if out_bytes > max_bytes:
        raise DatasetError(f"{label} holds {out_bytes} bytes of arrays; the limit is {max_bytes}.")
    outputs = {
        name: np.lib.format.open_memmap(
            dest / field_filename(name),
            mode="w+",
            dtype=np.dtype(bool) if name in FLAGS else f.dtype,
            shape=f.shape,
        )
        for name, f in fields.items()
    }
    episodes: list[EpisodeSpan] = []
    episode_start = 0
    try:
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            for name, f in fields.items():
                try:
                    chunk = f.read(start, stop)
                except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                    raise DatasetError(
                        f"field '{name}' cannot be read at rows {start}-{stop - 1} "
                        f"(the file may be truncated: {exc})."
                    ) from exc
                outputs[name][start:stop] = _chunk_check(name, chunk, start)
            terminals = outputs["terminals"][start:stop]
            timeouts = outputs["timeouts"][start:stop]
            for offset in np.flatnonzero(terminals | timeouts):
                end = start + int(offset) + 1
                episodes.append(
                    EpisodeSpan(
                        index=len(episodes),
                        start=episode_start,
                        length=end - episode_start,
                        terminated=bool(terminals[offset]),
                        truncated=bool(timeouts[offset]),
                    )
                )
                episode_start = end
        if episode_start < n:  # the source stopped mid-episode
            episodes.append(
                EpisodeSpan(
                    index=len(episodes),
                    start=episode_start,
                    length=n - episode_start,
                    terminated=False,
                    truncated=True,
                )
            )
    finally:
        for out in outputs.values():
            out.flush()
        del outputs
    return Summary(
        transitions=n,
        observation_space=space_of(fields["observations"].shape, fields["observations"].dtype),
        action_space=space_of(fields["actions"].shape, fields["actions"].dtype),
        fields=sorted(fields),
        episodes=episodes,
        metadata=source.metadata,
        env_id=source.env_id,
    )

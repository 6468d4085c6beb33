"""Reading RL datasets from files and writing them as one memory-mappable `.npy` per field.

No Django here: this module knows files and arrays only; annotation/services/datasets.py puts
what it writes into place and stores the rows.

Formats (the field names are D4RL's, the same in both):

- ``d4rl``: an HDF5 file in the D4RL layout, read with h5py one chunk of rows at a time;
- ``npz``: a NumPy ``.npz`` archive whose members carry the same names, the infos included
  as ``infos/qpos`` and ``infos/qvel`` (``np.savez(path, **{"infos/qpos": qpos, ...})``),
  also read a chunk of rows at a time from the archive (never the whole member in memory).

Required fields: ``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts``;
optional: ``next_observations``, ``infos/qpos``, ``infos/qvel`` (MuJoCo states) and
``infos/state`` (a classic-control environment's state vector, for rendering). Every field has one row per
transition, in source order: row i of every written array is row i of the source file, so a
per-transition result can be written back to the source by row number.

Episodes end at a row whose ``terminals`` or ``timeouts`` is true (that row is the episode's
last). Rows after the last such boundary form a final episode marked truncated (the source
stopped mid-episode), not terminated.

The size limit holds for the source file and for the arrays it holds once uncompressed.
Every value is checked before the caller keeps anything: lengths agree, numbers are finite,
flags are 0/1. An error names the field and, where it is about a value, the first bad row.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np

FORMATS = ("d4rl", "npz")
REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")
OPTIONAL = ("next_observations", "infos/qpos", "infos/qvel", "infos/state")
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


def _hdf5_reader(node: Any) -> Callable[[int, int], np.ndarray]:
    # h5py reads just the hyperslab asked for: one chunk of rows in memory.
    def read(start: int, stop: int) -> np.ndarray:
        return np.asarray(node[start:stop])

    return read


@contextmanager
def _hdf5_fields(path: Path) -> Iterator[dict[str, _Field]]:
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
        yield found
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
def _npz_fields(path: Path) -> Iterator[dict[str, _Field]]:
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
        yield found
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


def dataset_convert(
    *, source: Path, fmt: str, dest: Path, max_bytes: int, chunk_rows: int = CHUNK_ROWS
) -> Summary:
    """Read `source`, check every value, write one ``.npy`` per field into `dest` (an
    existing, empty directory) and return what was written. On DatasetError `dest` may hold
    partial files: the caller removes it."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}.")
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise DatasetError(f"cannot read {source.name} ({exc.strerror}).") from exc
    if size > max_bytes:
        raise DatasetError(f"{source.name} is {size} bytes; the limit is {max_bytes}.")
    opener = _hdf5_fields if fmt == "d4rl" else _npz_fields
    with opener(source) as fields:
        n = _fields_check(fields)
        # Compressed sources can hold far more than their size: the limit holds for the
        # arrays written too, so a small file cannot fill the disk.
        out_bytes = sum(
            int(np.prod(f.shape, dtype=np.int64)) * (1 if name in FLAGS else f.dtype.itemsize)
            for name, f in fields.items()
        )
        if out_bytes > max_bytes:
            raise DatasetError(
                f"{source.name} holds {out_bytes} bytes of arrays; the limit is {max_bytes}."
            )
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
        )

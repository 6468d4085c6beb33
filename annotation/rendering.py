"""Rendering a trajectory segment to a video clip by replaying its stored states.

No Django here: this module knows environments, arrays and files only;
annotation/services/clips.py reads the rows, calls `segment_render` and stores the result.

Nothing is simulated: each frame is the environment drawn in the state the dataset recorded
for that row, so a clip shows exactly what was logged, whatever the policy or seed.

- Classic control: from ``infos/state`` when stored, otherwise from the observation where it
  determines the state (Pendulum: angle from cos/sin plus velocity; CartPole and MountainCar:
  the observation is the state; Acrobot: both angles from cos/sin plus velocities). Pendulum
  also draws the row's action as its torque arrow.
- MuJoCo: from ``infos/qpos`` and ``infos/qvel`` with ``set_state``. Offscreen rendering needs
  an OpenGL backend: ``MUJOCO_GL=egl`` on a GPU host, ``osmesa`` (software, Debian's
  libosmesa6) elsewhere; osmesa is the default set here when nothing is configured.

Clips are H.264 in MP4 with the index (``moov``) first (``+faststart``), so a browser can seek
before the whole file arrived, in yuv420p (what browsers decode). The poster is the first
frame as a JPEG.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Read by MuJoCo when gymnasium's MuJoCo environments are first imported: set before that.
os.environ.setdefault("MUJOCO_GL", "osmesa")
# Classic control draws with pygame into an off-screen surface: no display, no sound card
# (without these SDL looks for both and complains on a headless worker).
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
if os.environ["MUJOCO_GL"] == "osmesa":
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

CLIP_SIZE = 256  # pixels, square: small enough to load fast, a multiple of 16 for H.264
CLIP_QUALITY = 6  # imageio-ffmpeg's 0-10 scale (10 best)
POSTER_QUALITY = 85
DEFAULT_FPS = 30.0


class RenderError(Exception):
    """The segment cannot be rendered from what its dataset stores (unknown environment, no
    state to replay, rows that do not fit it). Permanent: rendering it again fails again."""


@dataclass(frozen=True)
class Segment:
    """A segment's rows, as stored (row i of each array is the segment's i-th step)."""

    observations: np.ndarray
    actions: np.ndarray | None = None
    state: np.ndarray | None = None  # infos/state
    qpos: np.ndarray | None = None  # infos/qpos
    qvel: np.ndarray | None = None  # infos/qvel
    frames: np.ndarray | None = None  # infos/frames: images stored with the dataset

    def __len__(self) -> int:
        return len(self.observations)


@dataclass(frozen=True)
class Rendered:
    frames: int
    fps: float
    width: int
    height: int


# --- environments ----------------------------------------------------------------------------

_envs: dict[tuple[str, int], Any] = {}
# One render at a time per environment: a clip sets the state and draws, frame by frame, and
# a second thread of the same process (a threads pool, tests) must not interleave with it.
_env_locks: dict[tuple[str, int], threading.Lock] = {}
_envs_guard = threading.Lock()


def _env_lock(env_id: str, size: int) -> threading.Lock:
    with _envs_guard:
        return _env_locks.setdefault((env_id, size), threading.Lock())


def _classic_size(env: Any, size: int) -> None:
    """Draw classic-control environments at `size` pixels instead of their fixed screens.
    Their drawing scales with these attributes, read on every frame."""
    for attr in ("screen_dim", "SCREEN_DIM"):
        if hasattr(env, attr):
            setattr(env, attr, size)
    if hasattr(env, "screen_width"):
        env.screen_width = size
        env.screen_height = size


def env_for(env_id: str, *, size: int = CLIP_SIZE) -> Any:
    """One environment per (env id, size) and process, created on first use and kept:
    creating a MuJoCo environment and its GL context costs far more than a clip."""
    key = (env_id, size)
    with _envs_guard:
        env = _envs.get(key)
        if env is not None:
            return env
        import gymnasium as gym  # heavy; only the media worker pays for it

        try:
            spec = gym.spec(env_id)
        except Exception as exc:  # gymnasium raises several error types for unknown ids
            raise RenderError(f"Unknown environment {env_id!r}: {exc}") from exc
        kwargs: dict[str, Any] = {"render_mode": "rgb_array"}
        is_mujoco = "mujoco" in str(spec.entry_point)
        if is_mujoco:
            kwargs.update(width=size, height=size)
        try:
            env = gym.make(env_id, **kwargs)
            env.reset(seed=0)
        except Exception as exc:
            raise RenderError(f"Environment {env_id!r} cannot be created here: {exc}") from exc
        if not is_mujoco:
            _classic_size(env.unwrapped, size)
        _envs[key] = env
        return env


def envs_close() -> None:
    """Close every cached environment (tests, benchmarks)."""
    with _envs_guard:
        for env in _envs.values():
            env.close()
        _envs.clear()


# Before the interpreter tears down the modules a GL context needs to free itself.
atexit.register(envs_close)


# --- states ------------------------------------------------------------------------------------


def _rows(name: str, array: np.ndarray | None, n: int, width: int | None) -> np.ndarray:
    if array is None:
        raise RenderError(f"the dataset stores no {name}")
    rows = np.asarray(array, dtype=np.float64).reshape(len(array), -1)
    if len(rows) != n:
        raise RenderError(f"{name} has {len(rows)} rows; the segment has {n}")
    if width is not None and rows.shape[1] != width:
        raise RenderError(f"{name} has {rows.shape[1]} values per row; expected {width}")
    return rows


def _pendulum(seg: Segment) -> np.ndarray:
    if seg.state is not None:
        return _rows("infos/state", seg.state, len(seg), 2)
    obs = _rows("observations", seg.observations, len(seg), 3)
    return np.stack([np.arctan2(obs[:, 1], obs[:, 0]), obs[:, 2]], axis=1)


def _acrobot(seg: Segment) -> np.ndarray:
    if seg.state is not None:
        return _rows("infos/state", seg.state, len(seg), 4)
    obs = _rows("observations", seg.observations, len(seg), 6)
    return np.stack(
        [np.arctan2(obs[:, 1], obs[:, 0]), np.arctan2(obs[:, 3], obs[:, 2]), obs[:, 4], obs[:, 5]],
        axis=1,
    )


def _identity(width: int) -> Callable[[Segment], np.ndarray]:
    def states(seg: Segment) -> np.ndarray:
        if seg.state is not None:
            return _rows("infos/state", seg.state, len(seg), width)
        return _rows("observations", seg.observations, len(seg), width)

    return states


# Classic-control environments by id without its version: how a row's state is found.
_CLASSIC: dict[str, Callable[[Segment], np.ndarray]] = {
    "Pendulum": _pendulum,
    "Acrobot": _acrobot,
    "CartPole": _identity(4),
    "MountainCar": _identity(2),
    "MountainCarContinuous": _identity(2),
}


# D4RL ("hopper-medium-v2") and Minari ("mujoco/hopper/expert-v0") name the MuJoCo
# locomotion tasks their own way; their qpos/qvel are those of Gymnasium's v5 models.
_ALIASES = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
    "humanoid": "Humanoid-v5",
    "swimmer": "Swimmer-v5",
    "invertedpendulum": "InvertedPendulum-v5",
    "inverteddoublependulum": "InvertedDoublePendulum-v5",
    "reacher": "Reacher-v5",
    "pusher": "Pusher-v5",
}


def gym_env_id(env_id: str) -> str:
    """The Gymnasium id to render `env_id` with: itself when Gymnasium knows it, else the
    task a D4RL or Minari name stands for, else itself (and the error names it)."""
    import gymnasium as gym

    if env_id in gym.registry:
        return env_id
    parts = env_id.lower().split("/")
    name = parts[1] if len(parts) > 2 and parts[0] == "mujoco" else parts[-1].split("-")[0]
    return _ALIASES.get(name, env_id)


def _base_id(env_id: str) -> str:
    name = env_id.rsplit("/", 1)[-1]
    return name.split("-v", 1)[0]


def _frames(env_id: str, seg: Segment, size: int) -> tuple[Iterator[np.ndarray], float]:
    """The frames (lazily) and the environment's frame rate; RenderError before the first
    frame when the segment cannot be replayed."""
    if len(seg) == 0:
        raise RenderError("the segment has no rows")
    if seg.frames is not None:
        if len(seg.frames) != len(seg):
            raise RenderError(f"{len(seg.frames)} stored frames for {len(seg)} rows")
        fps = DEFAULT_FPS
        if env_id:
            try:
                fps = float(env_for(gym_env_id(env_id), size=size).metadata["render_fps"])
            except Exception:  # an id gymnasium does not know: the stored frames suffice
                fps = DEFAULT_FPS
        return iter(seg.frames), fps
    classic = _CLASSIC.get(_base_id(env_id))
    if classic is None and (seg.qpos is None or seg.qvel is None):
        # Not a known classic-control task and no MuJoCo state: fail before creating the env
        # when the id is unknown too, with the reason that matters.
        env_for(env_id, size=size)
        raise RenderError(
            f"{env_id!r} cannot be replayed from this dataset: it needs infos/qpos and "
            "infos/qvel (MuJoCo) or a classic-control state"
        )
    env = env_for(env_id, size=size)
    inner = env.unwrapped
    fps = float(env.metadata.get("render_fps") or DEFAULT_FPS)
    if not math.isfinite(fps) or fps <= 0:
        fps = DEFAULT_FPS
    if classic is not None:
        states = classic(seg)
        actions = None
        if _base_id(env_id) == "Pendulum" and seg.actions is not None:
            actions = _rows("actions", seg.actions, len(seg), None)[:, 0]

        def classic_frames() -> Iterator[np.ndarray]:
            for i, state in enumerate(states):
                inner.state = np.array(state)
                if hasattr(inner, "last_u"):
                    inner.last_u = None if actions is None else float(actions[i])
                yield env.render()

        return classic_frames(), fps
    if not hasattr(inner, "set_state"):
        raise RenderError(f"{env_id!r} is not a MuJoCo environment; qpos/qvel cannot be replayed")
    qpos = _rows("infos/qpos", seg.qpos, len(seg), int(inner.model.nq))
    qvel = _rows("infos/qvel", seg.qvel, len(seg), int(inner.model.nv))

    def mujoco_frames() -> Iterator[np.ndarray]:
        for p, v in zip(qpos, qvel, strict=True):
            inner.set_state(p, v)
            yield env.render()

    return mujoco_frames(), fps


# --- encoding ----------------------------------------------------------------------------------


def _even(frame: np.ndarray) -> np.ndarray:
    """yuv420p needs even dimensions: drop a last odd row or column."""
    h, w = frame.shape[:2]
    return frame[: h - h % 2, : w - w % 2]


def segment_render(
    *, env_id: str, segment: Segment, clip_path: Path, poster_path: Path, size: int = CLIP_SIZE
) -> Rendered:
    """Write the segment's clip (MP4) to `clip_path` and its poster (JPEG) to `poster_path`.
    Raises RenderError when it cannot be replayed from what is given."""
    if segment.frames is not None:  # drawn when the data was collected: encoded as stored
        return _encode(env_id, segment, clip_path, poster_path, size)
    env_id = gym_env_id(env_id)
    with _env_lock(env_id, size):
        return _encode(env_id, segment, clip_path, poster_path, size)


def _encode(
    env_id: str, segment: Segment, clip_path: Path, poster_path: Path, size: int
) -> Rendered:
    import imageio_ffmpeg
    from PIL import Image

    frames, fps = _frames(env_id, segment, size)
    writer = None
    count = 0
    shape: tuple[int, int] = (0, 0)
    try:
        for raw in frames:
            if raw is None:
                raise RenderError(f"{env_id!r} drew no frame")
            frame = _even(np.ascontiguousarray(raw[..., :3], dtype=np.uint8))
            if writer is None:
                shape = (frame.shape[1], frame.shape[0])
                Image.fromarray(frame).save(poster_path, "JPEG", quality=POSTER_QUALITY)
                writer = imageio_ffmpeg.write_frames(
                    str(clip_path),
                    shape,
                    fps=fps,
                    codec="libx264",
                    quality=CLIP_QUALITY,
                    pix_fmt_in="rgb24",
                    pix_fmt_out="yuv420p",
                    macro_block_size=2,
                    output_params=["-movflags", "+faststart", "-threads", "1"],
                    ffmpeg_log_level="error",
                )
                writer.send(None)
            elif (frame.shape[1], frame.shape[0]) != shape:
                raise RenderError("frames change size midway")
            writer.send(frame.tobytes())
            count += 1
    except RenderError:
        raise
    except (ValueError, TypeError, IndexError) as exc:
        # A state that does not fit the environment (wrong dtype, a shape set_state rejects).
        raise RenderError(f"{env_id!r} cannot draw these rows: {exc}") from exc
    finally:
        if writer is not None:
            writer.close()
    return Rendered(frames=count, fps=fps, width=shape[0], height=shape[1])

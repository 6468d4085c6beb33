"""Clip rendering throughput: clips per second of one render worker, and per CPU-second.

Renders --clips segments of --steps rows per run with `annotation.rendering.segment_render`
(what the media worker runs per item, without the database and storage), for Pendulum-v1
(classic control, pygame) and one MuJoCo task (Hopper-v5, MUJOCO_GL as set, osmesa by
default). States come from rollouts of random actions, stored the way a dataset stores them
(Pendulum: observations plus infos/state; MuJoCo: infos/qpos and infos/qvel).

One worker is one Python process drawing frames plus the ffmpeg process it feeds, so a clip
uses a little more than one core at once: "clips/s" is wall-clock for one worker, "clips per
CPU-s" divides by the CPU time of both (this process and its ffmpeg children), which is the
per-core throughput when every core runs a worker. The first clip per environment (creating
it, and its GL context) is not timed. Medians of --repeats runs.

    .venv/bin/python bench/render.py
    .venv/bin/python bench/render.py --envs Pendulum-v1 --steps 200 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from annotation import rendering  # noqa: E402  (after the path, and sets MUJOCO_GL)


def rollout(env_id: str, *, steps: int, seed: int) -> rendering.Segment:
    """`steps` rows of a random-action rollout, as a dataset stores them."""
    import gymnasium as gym

    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    inner: Any = env.unwrapped
    rows: dict[str, list[np.ndarray]] = {"obs": [], "act": [], "state": [], "qpos": [], "qvel": []}
    for _ in range(steps):
        action = env.action_space.sample()
        rows["obs"].append(np.asarray(obs))
        rows["act"].append(np.atleast_1d(action))
        if hasattr(inner, "data"):
            rows["qpos"].append(inner.data.qpos.copy())
            rows["qvel"].append(inner.data.qvel.copy())
        else:
            rows["state"].append(np.asarray(inner.state, dtype=np.float64).copy())
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()

    def stacked(name: str) -> np.ndarray | None:
        return np.stack(rows[name]) if rows[name] else None

    return rendering.Segment(
        observations=np.stack(rows["obs"]),
        actions=stacked("act"),
        state=stacked("state"),
        qpos=stacked("qpos"),
        qvel=stacked("qvel"),
    )


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(
    env_id: str, segments: list[rendering.Segment], size: int, folder: Path
) -> tuple[float, float]:
    """(clips per second, clips per CPU-second) over `segments`."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    for n, segment in enumerate(segments):
        out = rendering.segment_render(
            env_id=env_id,
            segment=segment,
            clip_path=folder / f"{n}.mp4",
            poster_path=folder / f"{n}.jpg",
            size=size,
        )
        assert out.frames == len(segment)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return len(segments) / wall, len(segments) / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default="Pendulum-v1,Hopper-v5")
    parser.add_argument("--steps", type=int, default=50, help="rows per segment")
    parser.add_argument("--clips", type=int, default=10, help="clips per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=rendering.CLIP_SIZE)
    args = parser.parse_args()
    print(f"MUJOCO_GL={os.environ.get('MUJOCO_GL')} cores={os.cpu_count()} size={args.size}")
    print(f"{'environment':<16} {'steps':>5} {'clips/s':>8} {'clips/CPU-s':>11} {'ms/frame':>8}")
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        folder = Path(tmp)
        for env_id in args.envs.split(","):
            segments = [rollout(env_id, steps=args.steps, seed=seed) for seed in range(args.clips)]
            run(env_id, segments[:1], args.size, folder)  # create the environment, untimed
            results = [run(env_id, segments, args.size, folder) for _ in range(args.repeats)]
            per_s = statistics.median(r[0] for r in results)
            per_cpu = statistics.median(r[1] for r in results)
            print(
                f"{env_id:<16} {args.steps:>5} {per_s:>8.2f} {per_cpu:>11.2f} "
                f"{1000 / (per_s * args.steps):>8.1f}"
            )
    rendering.envs_close()


if __name__ == "__main__":
    main()

"""Rollouts of hand-written policies in Gymnasium environments, as dataset fields.

No Django here, and nothing trained: each policy is a few lines of control theory, so a
dataset of known quality order can be made on any machine in seconds (for testing reward
models and pair selection against a ground truth that is not itself learned).

Pendulum-v1 (theta = 0 upright, thetä = 3g/(2l) sin(theta) + 3/(m l^2) u, |u| <= 2):

- ``expert``: energy pumping, then a PD balance near the top. With
  E = thetȧ^2 / 2 + 3g/(2l) cos(theta), dE/dt = thetȧ * 3u/(m l^2), so
  u = k (E_top - E) sign(thetȧ) drives E to E_top = 3g/(2l), the energy of resting upright
  (Åström and Furuta, "Swinging up a pendulum by energy control", Automatica 2000). Within
  BALANCE_ANGLE of the top, u = -(Kp theta + Kd thetȧ) holds it there: linearised,
  thetä = (15 - 3 Kp) theta - 3 Kd thetȧ, stable for Kp > 5.
- ``noisy-expert``: the expert's action plus Gaussian noise of standard deviation
  ``noise`` times the largest action, clipped to the action bounds;
- ``random``: uniform over the action box.

With the default noise (1.0: a standard deviation of half the torque range) the noisy
expert still swings up but wobbles at the top; the order expert > noisy-expert > random in
mean return holds by a wide margin (about -150, -400 and -1200 per 200-step episode), and
tests/annotation/test_generate_dataset.py checks it. (MountainCarContinuous was left out:
its action cost makes a noisy push-along-the-velocity policy score as well as the clean one,
so the order would not be real.)

Episodes are dealt round-robin across the policies: episode k runs policy k mod P from the
initial state of round k // P, so in each round every policy starts from the same state, and
the comparison of their returns is paired. Every step records the observation, action,
reward, terminated and truncated flags, the next observation and ``infos/state``: the
environment's own state vector (``env.unwrapped.state``) before the step, what a renderer
needs to redraw that frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

DEFAULT_NOISE = 1.0
POLICY_NAMES = ("expert", "noisy-expert", "random")

# Pendulum-v1's constants (gymnasium/envs/classic_control/pendulum.py), default g = 10.
_PENDULUM_G, _PENDULUM_L, _PENDULUM_M = 10.0, 1.0, 1.0
_PENDULUM_STIFFNESS = 3 * _PENDULUM_G / (2 * _PENDULUM_L)  # E of resting upright
BALANCE_ANGLE = 0.4  # rad; |u| <= 2 can hold the pole only while 6 > 15 sin(theta)
PUMP_GAIN = 1.0
BALANCE_KP, BALANCE_KD = 10.0, 2.0


class RolloutError(ValueError):
    """An environment or policy this module has no controller for, or bad counts."""


Observation = np.ndarray
Policy = Callable[[Observation, np.random.Generator], np.ndarray]


def _angle_normalise(theta: float) -> float:
    return ((theta + math.pi) % (2 * math.pi)) - math.pi


def pendulum_expert(obs: Observation, rng: np.random.Generator) -> np.ndarray:
    """Energy-pumping swing-up, PD balance near the top. Reads only the observation
    [cos(theta), sin(theta), thetȧ]."""
    cos_t, sin_t, theta_dot = float(obs[0]), float(obs[1]), float(obs[2])
    theta = math.atan2(sin_t, cos_t)
    if abs(theta) < BALANCE_ANGLE:
        u = -(BALANCE_KP * theta + BALANCE_KD * theta_dot)
    else:
        energy = 0.5 * theta_dot**2 + _PENDULUM_STIFFNESS * cos_t
        # At rest at the bottom thetȧ = 0 gives no direction to pump: push either way.
        direction = 1.0 if theta_dot >= 0 else -1.0
        u = PUMP_GAIN * (_PENDULUM_STIFFNESS - energy) * direction
    return np.array([u], dtype=np.float32)


EXPERTS: dict[str, Policy] = {
    "Pendulum-v1": pendulum_expert,
}
ENVS = tuple(EXPERTS)


def policy_make(*, env_id: str, name: str, space: gym.spaces.Box, noise: float) -> Policy:
    """The named policy for `env_id`, its actions clipped to `space`."""
    expert = EXPERTS[env_id]
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    if name == "expert":
        return lambda obs, rng: np.clip(expert(obs, rng), low, high)
    if name == "noisy-expert":
        scale = noise * np.maximum(np.abs(low), np.abs(high))

        def noisy(obs: Observation, rng: np.random.Generator) -> np.ndarray:
            action = expert(obs, rng) + scale * rng.standard_normal(low.shape)
            return np.clip(action, low, high).astype(np.float32)

        return noisy
    if name == "random":
        return lambda obs, rng: rng.uniform(low, high).astype(np.float32)
    raise RolloutError(f"unknown policy {name!r}; expected one of {', '.join(POLICY_NAMES)}.")


@dataclass
class Rollouts:
    """Fields with one row per step, in episode order, and what made each episode."""

    fields: dict[str, np.ndarray]
    policies: list[str]  # one per episode
    returns: list[float]  # one per episode
    metadata: dict[str, Any] = field(default_factory=dict)


def rollouts_generate(
    *,
    env_id: str,
    policies: list[str],
    episodes: int,
    seed: int,
    noise: float = DEFAULT_NOISE,
    max_steps: int | None = None,
) -> Rollouts:
    """Run `episodes` episodes in all, dealt round-robin across `policies`; the same `seed`
    gives the same arrays."""
    if env_id not in EXPERTS:
        raise RolloutError(f"no policies for {env_id!r}; expected one of {', '.join(ENVS)}.")
    if not policies:
        raise RolloutError("name at least one policy.")
    for name in policies:
        if name not in POLICY_NAMES:
            raise RolloutError(
                f"unknown policy {name!r}; expected one of {', '.join(POLICY_NAMES)}."
            )
    if len(set(policies)) != len(policies):
        raise RolloutError("a policy is named twice.")
    if episodes < 1:
        raise RolloutError("episodes must be at least 1.")
    if max_steps is not None and max_steps < 1:
        raise RolloutError("max_steps must be at least 1.")
    if not (noise >= 0 and math.isfinite(noise)):
        raise RolloutError("noise must be a finite number >= 0.")

    env = gym.make(env_id, max_episode_steps=max_steps) if max_steps else gym.make(env_id)
    try:
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):  # every env in EXPERTS has a Box
            raise RolloutError(f"{env_id} has a {type(space).__name__} action space.")
        made = {
            name: policy_make(env_id=env_id, name=name, space=space, noise=noise)
            for name in policies
        }
        # One stream for initial states (one per round), one per policy for its own noise:
        # adding a policy to the list does not change what the others do.
        seeds = np.random.SeedSequence(seed)
        state_seeds = seeds.spawn(1)[0].generate_state(episodes, dtype=np.uint32)
        rngs = {
            name: np.random.default_rng(child)
            for name, child in zip(POLICY_NAMES, seeds.spawn(len(POLICY_NAMES)), strict=True)
        }
        columns: dict[str, list[Any]] = {
            k: []
            for k in (
                "observations",
                "actions",
                "rewards",
                "terminals",
                "timeouts",
                "next_observations",
                "infos/state",
            )
        }
        episode_policies: list[str] = []
        returns: list[float] = []
        for k in range(episodes):
            name = policies[k % len(policies)]
            policy, rng = made[name], rngs[name]
            obs, _ = env.reset(seed=int(state_seeds[k // len(policies)]))
            total = 0.0
            while True:
                state = np.array(env.unwrapped.state, dtype=np.float64)  # type: ignore[attr-defined]
                action = policy(obs, rng)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                columns["observations"].append(obs)
                columns["actions"].append(action)
                columns["rewards"].append(reward)
                columns["terminals"].append(terminated)
                columns["timeouts"].append(truncated)
                columns["next_observations"].append(next_obs)
                columns["infos/state"].append(state)
                total += float(reward)
                obs = next_obs
                if terminated or truncated:
                    break
            episode_policies.append(name)
            returns.append(total)
    finally:
        env.close()

    fields = {
        "observations": np.asarray(columns["observations"], dtype=np.float32),
        "actions": np.asarray(columns["actions"], dtype=np.float32),
        "rewards": np.asarray(columns["rewards"], dtype=np.float32),
        "terminals": np.asarray(columns["terminals"], dtype=bool),
        "timeouts": np.asarray(columns["timeouts"], dtype=bool),
        "next_observations": np.asarray(columns["next_observations"], dtype=np.float32),
        "infos/state": np.asarray(columns["infos/state"], dtype=np.float64),
    }
    mean_returns = {
        name: float(
            np.mean([r for r, p in zip(returns, episode_policies, strict=True) if p == name])
        )
        for name in policies
        if name in episode_policies
    }
    metadata = {
        "generator": "annotation.rollouts",
        "env": env_id,
        "policies": list(policies),
        "episodes": episodes,
        "seed": seed,
        "noise": noise,
        "max_steps": max_steps,
        "gymnasium_version": gym.__version__,
        "mean_returns": mean_returns,
    }
    return Rollouts(fields=fields, policies=episode_policies, returns=returns, metadata=metadata)

"""Cutting a dataset's episodes into segments and sampling pairs of segments to compare.

No Django here: arrays in, arrays out, so the rules are tested on their own and the service
(annotation/services/trajectories.py) only stores what comes out.

Segments are windows of `length` consecutive rows that start every `stride` rows from an
episode's first row and never cross its end (a trailing window shorter than `length` is
dropped): a clip never jumps from one episode's end to the next one's reset. Segment k is identified by its position in the
order episodes x offsets, so numbering is stable for given inputs.

Pairs are unordered pairs of distinct segments, each drawn at most once, from a seeded
generator (numpy's PCG64), in one of three designs:

- ``random``: uniform over all pairs of segments;
- ``within_episode``: uniform over pairs whose two segments come from one episode (what
  changed along a trajectory);
- ``across_episode``: uniform over pairs from two different episodes (typically two
  policies or two runs).

A segment may appear in many pairs: that is what links comparisons into one Bradley-Terry
graph and lets a segment's clip be rendered once for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLINGS = ("random", "within_episode", "across_episode")
# Below this many possible pairs they are enumerated and drawn without replacement;
# above, drawn with rejection of repeats (the expected number of draws stays close to the
# number asked for as long as it is well below the number possible).
ENUMERATE_BELOW = 2_000_000
# Rejection sampling gives up (and says so) when asked for more than this share of the
# possible pairs, where repeats would make it slow.
REJECTION_MAX_SHARE = 0.5


class SegmentError(ValueError):
    """Options that cannot be met; the message says which and what is possible."""


@dataclass(frozen=True)
class Segments:
    start: np.ndarray  # int64: first row of each segment, in the dataset's row numbering
    episode: np.ndarray  # int64: position (0..E-1) of each segment's episode in the input

    def __len__(self) -> int:
        return len(self.start)


def segments_cut(
    *, episode_starts: np.ndarray, episode_lengths: np.ndarray, length: int, stride: int
) -> Segments:
    """Every window of `length` rows starting every `stride` rows inside each episode."""
    if length < 1:
        raise SegmentError("segment_length must be at least 1.")
    if stride < 1:
        raise SegmentError("stride must be at least 1.")
    starts = np.asarray(episode_starts, dtype=np.int64)
    lengths = np.asarray(episode_lengths, dtype=np.int64)
    counts = np.where(lengths >= length, (lengths - length) // stride + 1, 0)
    total = int(counts.sum())
    episode = np.repeat(np.arange(len(lengths), dtype=np.int64), counts)
    first_of_episode = np.repeat(np.cumsum(counts) - counts, counts)
    offset = (np.arange(total, dtype=np.int64) - first_of_episode) * stride
    return Segments(start=starts[episode] + offset, episode=episode)


def pairs_possible(episode: np.ndarray, sampling: str) -> int:
    """How many distinct pairs the design allows."""
    n = len(episode)
    per_episode = np.bincount(episode) if n else np.zeros(0, dtype=np.int64)
    within = int((per_episode * (per_episode - 1) // 2).sum())
    everything = n * (n - 1) // 2
    if sampling == "random":
        return everything
    if sampling == "within_episode":
        return within
    if sampling == "across_episode":
        return everything - within
    raise SegmentError(f"unknown sampling {sampling!r}; use one of {', '.join(SAMPLINGS)}.")


def pairs_sample(*, episode: np.ndarray, pairs: int, sampling: str, seed: int) -> np.ndarray:
    """`pairs` distinct unordered pairs of segment numbers, shape (pairs, 2), each row with
    the smaller number first, in the order drawn. Deterministic for a given seed."""
    episode = np.asarray(episode, dtype=np.int64)
    possible = pairs_possible(episode, sampling)
    if pairs < 1:
        raise SegmentError("pairs must be at least 1.")
    if pairs > possible:
        raise SegmentError(
            f"{pairs} pairs asked for, but {len(episode)} segments allow only {possible} "
            f"distinct {sampling.replace('_', '-')} pairs: use shorter segments, a smaller "
            "stride or fewer pairs."
        )
    rng = np.random.default_rng(seed)
    if possible <= ENUMERATE_BELOW:
        candidates = _enumerate(episode, sampling)
        chosen = rng.choice(len(candidates), size=pairs, replace=False)
        return candidates[chosen]
    if pairs > REJECTION_MAX_SHARE * possible:
        raise SegmentError(
            f"{pairs} pairs is more than half of the {possible} possible: ask for fewer."
        )
    return _rejection(episode, pairs, sampling, rng)


def _enumerate(episode: np.ndarray, sampling: str) -> np.ndarray:
    n = len(episode)
    i, j = np.triu_indices(n, k=1)
    if sampling == "within_episode":
        keep = episode[i] == episode[j]
        i, j = i[keep], j[keep]
    elif sampling == "across_episode":
        keep = episode[i] != episode[j]
        i, j = i[keep], j[keep]
    return np.stack([i, j], axis=1).astype(np.int64)


def _rejection(
    episode: np.ndarray, pairs: int, sampling: str, rng: np.random.Generator
) -> np.ndarray:
    n = len(episode)
    if sampling == "within_episode":
        # Pick an episode with probability proportional to its number of pairs, then two
        # distinct segments in it: uniform over within-episode pairs.
        per_episode = np.bincount(episode, minlength=int(episode.max()) + 1)
        weights = (per_episode * (per_episode - 1) / 2).astype(np.float64)
        weights /= weights.sum()
        first_segment = np.cumsum(per_episode) - per_episode
    seen: set[int] = set()
    out = np.empty((pairs, 2), dtype=np.int64)
    filled = 0
    for _round in range(1000):
        want = max(2 * (pairs - filled), 1024)
        if sampling == "within_episode":
            ep = rng.choice(len(per_episode), size=want, p=weights)
            size = per_episode[ep]
            a = rng.integers(0, size)
            b = rng.integers(0, size - 1)
            b = np.where(b >= a, b + 1, b)
            a, b = first_segment[ep] + a, first_segment[ep] + b
        else:
            a = rng.integers(0, n, size=want)
            b = rng.integers(0, n - 1, size=want)
            b = np.where(b >= a, b + 1, b)
            if sampling == "across_episode":
                keep = episode[a] != episode[b]
                a, b = a[keep], b[keep]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        for x, y in zip(lo.tolist(), hi.tolist(), strict=True):
            key = x * n + y
            if key in seen:
                continue
            seen.add(key)
            out[filled] = (x, y)
            filled += 1
            if filled == pairs:
                return out
    raise SegmentError("could not draw that many distinct pairs; ask for fewer.")

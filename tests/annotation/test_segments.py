"""Segments never cross an episode's end; pairs are distinct, seeded and follow the design
(annotation/segments.py)."""

import numpy as np
import pytest

from annotation import segments
from annotation.segments import SegmentError, pairs_possible, pairs_sample, segments_cut

STARTS = np.array([0, 7, 17, 40])
LENGTHS = np.array([7, 10, 23, 3])


def test_windows_start_every_stride_rows_and_stay_inside_their_episode():
    cut = segments_cut(episode_starts=STARTS, episode_lengths=LENGTHS, length=5, stride=2)
    expected = [(0, 0), (2, 0)]  # 7 rows: windows at 0 and 2 (4 would end at row 8)
    expected += [(7 + o, 1) for o in (0, 2, 4)]  # 10 rows: offsets 0, 2, 4
    expected += [(17 + o, 2) for o in range(0, 19, 2)]  # 23 rows: offsets 0 .. 18
    # the 3-row episode is shorter than a segment: none
    assert list(zip(cut.start.tolist(), cut.episode.tolist(), strict=True)) == expected
    ends = STARTS[cut.episode] + LENGTHS[cut.episode]
    assert (cut.start + 5 <= ends).all() and (cut.start >= STARTS[cut.episode]).all()


def test_stride_one_and_length_equal_to_the_episode():
    cut = segments_cut(episode_starts=[5], episode_lengths=[4], length=4, stride=1)
    assert cut.start.tolist() == [5]
    cut = segments_cut(episode_starts=[5], episode_lengths=[4], length=2, stride=1)
    assert cut.start.tolist() == [5, 6, 7]


@pytest.mark.parametrize("length,stride", [(0, 1), (3, 0)])
def test_bad_lengths_are_refused(length, stride):
    with pytest.raises(SegmentError):
        segments_cut(episode_starts=[0], episode_lengths=[10], length=length, stride=stride)


def _check(pairs, episode, sampling, n):
    assert pairs.shape == (n, 2)
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert len({tuple(p) for p in pairs.tolist()}) == n
    same = episode[pairs[:, 0]] == episode[pairs[:, 1]]
    if sampling == "within_episode":
        assert same.all()
    if sampling == "across_episode":
        assert not same.any()


@pytest.mark.parametrize("sampling", segments.SAMPLINGS)
def test_small_designs_are_drawn_without_repeats_and_follow_the_design(sampling):
    episode = np.repeat(np.arange(4), [5, 1, 8, 3])
    possible = pairs_possible(episode, sampling)
    pairs = pairs_sample(episode=episode, pairs=possible, sampling=sampling, seed=3)
    _check(pairs, episode, sampling, possible)  # every possible pair, once


@pytest.mark.parametrize("sampling", segments.SAMPLINGS)
def test_large_designs_use_rejection_and_follow_the_design(sampling, monkeypatch):
    monkeypatch.setattr(segments, "ENUMERATE_BELOW", 10)
    episode = np.repeat(np.arange(50), 40)
    pairs = pairs_sample(episode=episode, pairs=3000, sampling=sampling, seed=1)
    _check(pairs, episode, sampling, 3000)


def test_within_episode_rejection_is_uniform_over_pairs_not_episodes(monkeypatch):
    """An episode with ten times the segments has ~100 times the pairs, and gets them."""
    monkeypatch.setattr(segments, "ENUMERATE_BELOW", 10)
    episode = np.repeat([0, 1], [100, 10])  # 4950 vs 45 pairs
    pairs = pairs_sample(episode=episode, pairs=2000, sampling="within_episode", seed=0)
    share = (episode[pairs[:, 0]] == 1).mean()
    assert share < 0.03  # 45 / 4995 = 0.9 %


def test_the_same_seed_gives_the_same_pairs_and_another_seed_others():
    episode = np.repeat(np.arange(10), 10)
    one = pairs_sample(episode=episode, pairs=50, sampling="random", seed=7)
    assert np.array_equal(one, pairs_sample(episode=episode, pairs=50, sampling="random", seed=7))
    assert not np.array_equal(
        one, pairs_sample(episode=episode, pairs=50, sampling="random", seed=8)
    )


def test_more_pairs_than_possible_names_the_limit():
    episode = np.array([0, 0, 1])
    with pytest.raises(SegmentError, match="allow only 1 distinct within-episode"):
        pairs_sample(episode=episode, pairs=2, sampling="within_episode", seed=0)
    with pytest.raises(SegmentError, match="unknown sampling"):
        pairs_sample(episode=episode, pairs=1, sampling="sideways", seed=0)

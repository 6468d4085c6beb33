"""Trajectory campaigns cut from a stored dataset: segments become items, sampled pairs of
them become pairs, and every segment's clip is asked of the media workers.

The segmenting and sampling rules are annotation/segments.py's; this module checks the
options, reads the episode index and stores the result in one transaction, so a refused or
failed creation leaves no campaign, item or pair behind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from .. import segments
from ..errors import NotFound, ServiceError, shown, text_check
from ..models import Campaign, ClipStatus, Dataset, Episode, Item, Pair, pairs_prepare
from .campaigns import campaign_create
from .clips import clips_request
from .datasets import NAME_MAX

SEGMENT_LENGTH_MAX = 10_000
PAIRS_MAX = 200_000
SEED_MAX = 2**32 - 1
ROW_MAX = 2**31 - 1  # Item.start and Item.length are 32-bit columns
BATCH = 5_000  # rows per INSERT


@dataclass(frozen=True)
class TrajectorySource:
    """How a campaign is cut from a dataset; stored on the campaign as given."""

    dataset: str
    segment_length: int
    stride: int
    pairs: int
    sampling: str = "random"
    seed: int = 0

    @classmethod
    def parse(cls, raw: Any) -> TrajectorySource:
        """From the API's or the command's options, each refused with its field named."""
        if not isinstance(raw, dict):
            raise ServiceError("source must be an object.", field="source")
        unknown = sorted(set(raw) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ServiceError(
                f"source has unknown keys: {', '.join(shown(k) for k in unknown)}.",
                field=f"source.{shown(unknown[0])}",
            )
        name = raw.get("dataset")
        if not isinstance(name, str) or not name.strip():
            raise ServiceError("source.dataset must name a dataset.", field="source.dataset")
        if len(name) > NAME_MAX:
            raise ServiceError(
                f"source.dataset is over {NAME_MAX} characters.", field="source.dataset"
            )
        text_check(name, field="source.dataset")  # NUL, lone surrogates: refused, not looked up
        sampling = raw.get("sampling", "random")
        if sampling not in segments.SAMPLINGS:
            raise ServiceError(
                f"source.sampling must be one of {', '.join(segments.SAMPLINGS)}.",
                field="source.sampling",
            )
        return cls(
            dataset=name,
            segment_length=_int(raw, "segment_length", low=1, high=SEGMENT_LENGTH_MAX),
            stride=_int(raw, "stride", low=1, high=ROW_MAX, default=raw.get("segment_length")),
            pairs=_int(raw, "pairs", low=1, high=PAIRS_MAX),
            sampling=sampling,
            seed=_int(raw, "seed", low=0, high=SEED_MAX, default=0),
        )


def _int(raw: dict[str, Any], key: str, *, low: int, high: int, default: Any = None) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ServiceError(
            f"source.{key} must be an integer from {low} to {high}.", field=f"source.{key}"
        )
    return value


@dataclass(frozen=True)
class Cut:
    """What a source yields: the segments used and the pairs, as segment numbers."""

    episodes: list[Episode]
    segments: segments.Segments
    used: np.ndarray  # sorted segment numbers that appear in a pair
    pairs: np.ndarray  # (n, 2) segment numbers, smaller first


def trajectory_cut(*, source: TrajectorySource) -> Cut:
    """Segments and pairs for `source`, without storing anything."""
    try:
        dataset = Dataset.objects.get(name=source.dataset)
    except Dataset.DoesNotExist:
        raise NotFound(
            f"No dataset named {shown(source.dataset)!r}.", field="source.dataset"
        ) from None
    episodes = list(Episode.objects.filter(dataset=dataset).order_by("index"))
    starts = np.fromiter((e.start for e in episodes), dtype=np.int64, count=len(episodes))
    lengths = np.fromiter((e.length for e in episodes), dtype=np.int64, count=len(episodes))
    if dataset.transition_count > ROW_MAX:
        raise ServiceError(
            f"Dataset {shown(dataset.name)!r} has more than {ROW_MAX} rows.",
            field="source.dataset",
        )
    try:
        cut = segments.segments_cut(
            episode_starts=starts,
            episode_lengths=lengths,
            length=source.segment_length,
            stride=source.stride,
        )
    except segments.SegmentError as exc:
        raise ServiceError(str(exc), field="source.segment_length") from None
    if not len(cut):
        longest = int(lengths.max()) if len(lengths) else 0
        raise ServiceError(
            f"No episode of {shown(dataset.name)!r} is {source.segment_length} rows long "
            f"(the longest has {longest}).",
            field="source.segment_length",
        )
    try:
        pairs = segments.pairs_sample(
            episode=cut.episode, pairs=source.pairs, sampling=source.sampling, seed=source.seed
        )
    except segments.SegmentError as exc:
        raise ServiceError(str(exc), field="source.pairs") from None
    return Cut(episodes=episodes, segments=cut, used=np.unique(pairs), pairs=pairs)


def campaign_create_from_dataset(
    *,
    name: str,
    slug: str,
    source: Any,
    criteria: list[dict[str, str]] | None = None,
    owner: AbstractBaseUser | None = None,
    **fields: Any,
) -> Campaign:
    """A trajectory campaign whose items are segments of a stored dataset and whose pairs
    are sampled from them (`source`, see TrajectorySource), all stored or none. Each item
    keeps its dataset, episode index, first source row and length, and its episode's policy
    as `source`; its clip is pending until a media worker renders it, and no pair is leased
    before both of its clips are ready."""
    spec = TrajectorySource.parse(source)
    if fields.get("kind", Campaign.Kind.TRAJECTORY) != Campaign.Kind.TRAJECTORY:
        raise ServiceError('A campaign cut from a dataset has kind "trajectory".', field="kind")
    fields["kind"] = Campaign.Kind.TRAJECTORY
    cut = trajectory_cut(source=spec)
    dataset = cut.episodes[0].dataset
    with transaction.atomic():
        campaign = campaign_create(
            name=name,
            slug=slug,
            criteria=criteria,
            owner=owner,
            source=asdict(spec),
            **fields,
        )
        items = [
            Item(
                campaign=campaign,
                external_id=f"{start}:{start + spec.segment_length}",
                source=cut.episodes[episode].policy,
                dataset=dataset.name,
                source_dataset=dataset,
                episode=str(cut.episodes[episode].index),
                start=start,
                length=spec.segment_length,
                clip_status=ClipStatus.PENDING,
            )
            for start, episode in zip(
                cut.segments.start[cut.used].tolist(),
                cut.segments.episode[cut.used].tolist(),
                strict=True,
            )
        ]
        # Created in segment order, so ids rise with segment numbers and each pair's smaller
        # segment is its item_a (Pair's canonical order).
        Item.objects.bulk_create(items, batch_size=BATCH)
        item_of = dict(zip(cut.used.tolist(), (item.pk for item in items), strict=True))
        pairs = [
            Pair(campaign=campaign, item_a_id=item_of[a], item_b_id=item_of[b])
            for a, b in cut.pairs.tolist()
        ]
        Pair.objects.bulk_create(pairs_prepare(pairs), batch_size=BATCH)
        # Marks the segments pending (database time) and sends their renders once this
        # transaction commits; the sweep resends any whose message is lost.
        clips_request(item_ids=[item.pk for item in items])
    return campaign

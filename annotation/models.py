"""Campaigns, what is compared in them, and what annotators say.

Judged things are frozen: a pair or item with a judgment refuses edits and deletes, and a
judgment is never deleted (it may be retracted or excluded by status). `PROTECT` foreign keys
make the database refuse the cascade too.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Now
from django.urls import reverse

from .clip_check import validate_clip
from .pair_order import PAIR_ORDERS

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def clip_upload_to(instance: Item, filename: str) -> str:
    """A random name that says nothing about the item (no quality, model or gold hints);
    only the extension is kept, for people. The content type comes from the content
    (annotation/clip_check.py)."""
    suffix = Path(filename).suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,8}", suffix):
        suffix = ""
    return f"clips/{uuid.uuid4().hex}{suffix}"


class FrozenError(Exception):
    """Raised on an attempt to change or delete something that has been judged."""


class Choice(models.TextChoices):
    A = "a", "item A"
    B = "b", "item B"
    TIE = "tie", "tie"
    BOTH_BAD = "both_bad", "both bad"


def choices_as_shown(choices: dict[str, str], *, a_on_left: bool) -> dict[str, str]:
    """Canonical choices ("a" = the pair's first item) as the annotator saw the sides."""
    sides = {"a": "left", "b": "right"} if a_on_left else {"a": "right", "b": "left"}
    return {slug: sides.get(value, value) for slug, value in choices.items()}


class Campaign(models.Model):
    class Kind(models.TextChoices):
        TEXT = "text", "text responses"
        TRAJECTORY = "trajectory", "trajectory segments"

    class Status(models.TextChoices):
        DRAFT = "draft"
        ACTIVE = "active"
        PAUSED = "paused"
        CLOSED = "closed"

    class BothBad(models.TextChoices):
        TIE = "tie", "counts as a tie"
        EXCLUDE = "exclude", "left out of aggregation"

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.TEXT)
    instructions = models.TextField(blank=True, help_text="Markdown, shown above each pair.")
    judgments_per_pair = models.PositiveSmallIntegerField(
        default=3, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )
    lease_seconds = models.PositiveIntegerField(
        default=300, validators=[MinValueValidator(10), MaxValueValidator(86_400)]
    )
    lease_max_seconds = models.PositiveIntegerField(
        default=3600,
        validators=[MinValueValidator(10), MaxValueValidator(7 * 86_400)],
        help_text="Renewals never keep a lease alive longer than this after it was taken "
        "(or lease_seconds, if longer): an idle open tab does not hold a slot forever.",
    )
    pair_order = models.CharField(
        max_length=40,
        default="complete_first_spread",
        help_text="Which free pair an annotator gets next; see annotation/pair_order.py.",
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    both_bad_counts_as = models.CharField(
        max_length=10, choices=BothBad.choices, default=BothBad.TIE
    )
    l2_prior = models.FloatField(
        null=True,
        blank=True,
        default=None,
        # Empty: the aggregation chooses the prior's strength from the data (see
        # labeling/bradley_terry.py). Positive when set: without a prior, items never compared
        # (or compared in a separate component) have no maximum-likelihood score.
        validators=[MinValueValidator(1e-6)],
        help_text=(
            "Strength of the Gaussian prior on Bradley-Terry scores (> 0); "
            "leave empty to choose it from the judgments."
        ),
    )
    # Trajectory campaigns cut from a stored dataset: the dataset and the segmenting and pair
    # sampling options they were built with (services/trajectories.py); empty otherwise.
    source = models.JSONField(default=dict, blank=True)
    members: models.ManyToManyField[User, Membership] = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="campaigns", blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(judgments_per_pair__gte=1), name="campaign_k_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_open(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def renew_every_ms(self) -> int:
        """How often an open, active compare page renews its lease: a third of the lease, so
        one lost renewal still leaves another try before it expires."""
        return self.lease_seconds * 1000 // 3

    def clean(self) -> None:
        if self.pair_order not in PAIR_ORDERS:
            raise ValidationError(
                {"pair_order": f"Unknown pair order; use one of: {', '.join(PAIR_ORDERS)}."}
            )


class FrozenWhenJudged(models.Model):
    """Refuses save() of an existing row and delete() once a judgment rests on it. Queryset
    update() and delete() bypass model methods: services use update() on these models only
    for bookkeeping columns that are not what annotators judged (`Pair.judgment_count`, kept
    by the lease engine), never on content, and PROTECT foreign keys stop a bulk delete of
    anything judged."""

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if self.pk is not None and not self._state.adding and self.is_judged():
            raise FrozenError(f"{type(self).__name__} {self.pk} has judgments and is frozen")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        if self.is_judged():
            raise FrozenError(f"{type(self).__name__} {self.pk} has judgments and is frozen")
        return super().delete(*args, **kwargs)

    def is_judged(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError


class Criterion(FrozenWhenJudged):
    """One question asked of each pair ("overall", "helpfulness", ...)."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="criteria")
    slug = models.SlugField(max_length=50)
    label = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "slug"], name="criterion_unique_slug"),
        ]

    def __str__(self) -> str:
        return self.slug

    def is_judged(self) -> bool:
        # Judgments store choices under the criterion's slug: renaming or deleting it once
        # the campaign has a judgment would orphan them.
        return (
            self.campaign_id is not None
            and Judgment.objects.filter(campaign_id=self.campaign_id).exists()
        )


class Membership(models.Model):
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    joined_at = models.DateTimeField(auto_now_add=True)
    # The group (prompt or episode) of the member's last lease, so the next one comes from
    # another group; written under this row's lock by the lease engine.
    last_group_key = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "user"], name="membership_unique"),
        ]

    def __str__(self) -> str:
        return f"user {self.user_id} in campaign {self.campaign_id}"


class CampaignRole(models.Model):
    """Who runs a campaign: managers edit it, import into it, see its results and export
    them, and manage its annotators; owners also hand out roles and may delete it. Apart
    from Membership (who annotates), so a role neither puts its holder in the lease pool
    nor makes an annotator a manager. Superusers act as owners everywhere, without a row.
    See annotation/permissions.py."""

    class Role(models.TextChoices):
        MANAGER = "manager"
        OWNER = "owner"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="roles")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="campaign_roles"
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MANAGER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "user"], name="campaign_role_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.role} {self.user_id} of campaign {self.campaign_id}"


class Prompt(FrozenWhenJudged):
    """A conversation to respond to: a list of {"role", "content"} messages."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="prompts")
    external_id = models.CharField(max_length=200, blank=True)
    messages = models.JSONField()
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "external_id"],
                condition=~models.Q(external_id=""),
                name="prompt_unique_external_id",
            ),
        ]

    def __str__(self) -> str:
        return self.external_id or f"prompt {self.pk}"

    def is_judged(self) -> bool:
        return (
            self.pk is not None
            and Judgment.objects.filter(pair__item_a__prompt_id=self.pk).exists()
        )


class ClipStatus(models.TextChoices):
    """Where a trajectory item's clip stands. Text items have none."""

    NONE = "", "no clip"
    PENDING = "pending", "rendering"
    READY = "ready", "ready"
    FAILED = "failed", "failed"


class Item(FrozenWhenJudged):
    """One thing that is compared: a response to a prompt, or a trajectory segment."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="items")
    external_id = models.CharField(max_length=200, blank=True)
    # text kind
    prompt = models.ForeignKey(
        Prompt, on_delete=models.PROTECT, null=True, blank=True, related_name="items"
    )
    content = models.TextField(blank=True)
    source = models.CharField(max_length=200, blank=True, help_text="Model or policy name.")
    metadata = models.JSONField(default=dict, blank=True)
    # trajectory kind: `start` is the segment's first row in the imported source and
    # `episode` the episode's index when the segment was cut from a stored Dataset
    # (`source_dataset`); free text describing an uploaded clip otherwise.
    dataset = models.CharField(max_length=200, blank=True)
    episode = models.CharField(max_length=200, blank=True)
    start = models.PositiveIntegerField(null=True, blank=True)
    length = models.PositiveIntegerField(null=True, blank=True)
    source_dataset = models.ForeignKey(
        "Dataset", on_delete=models.PROTECT, null=True, blank=True, related_name="segments"
    )
    clip = models.FileField(
        upload_to=clip_upload_to, blank=True, max_length=200, validators=[validate_clip]
    )
    # Database defaults too, on the columns added with clips: rows inserted with SQL (COPY in
    # benchmarks, bulk loaders) need not name them.
    clip_status = models.CharField(
        max_length=8,
        choices=ClipStatus.choices,
        default=ClipStatus.NONE,
        db_default=ClipStatus.NONE,
        blank=True,
    )
    clip_error = models.TextField(blank=True, default="", db_default="")
    clip_frames = models.PositiveIntegerField(null=True, blank=True)
    clip_fps = models.FloatField(null=True, blank=True)
    # When the current render was asked for (database time): the sweep requeues a pending
    # clip whose task was lost, by this column alone.
    clip_requested_at = models.DateTimeField(null=True, blank=True)
    poster = models.FileField(
        upload_to=clip_upload_to, blank=True, max_length=200, default="", db_default=""
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "external_id"],
                condition=~models.Q(external_id=""),
                name="item_unique_external_id",
            ),
        ]
        # The media view finds an item by its clip's name on every request, Range requests
        # of one video included. Text items have no clip, so they stay out of the index.
        indexes = [models.Index(fields=["clip"], condition=~models.Q(clip=""), name="item_clip")]

    def __str__(self) -> str:
        return self.external_id or f"item {self.pk}"

    def is_judged(self) -> bool:
        return (
            self.pk is not None
            and Judgment.objects.filter(
                models.Q(pair__item_a_id=self.pk) | models.Q(pair__item_b_id=self.pk)
            ).exists()
        )

    @property
    def clip_url(self) -> str:
        """The clip through the access-checking media view, whatever the storage: an object
        store's own URL would skip the membership check."""
        return reverse("media", args=[self.clip.name]) if self.clip else ""

    @property
    def poster_url(self) -> str:
        """The poster frame (rendered clips), through the same media view."""
        return reverse("media", args=[self.poster.name]) if self.poster else ""


def pair_group_key(item: Item) -> int:
    """The group a pair belongs to, for spreading leases: its prompt (text), or its dataset
    and episode (trajectory) folded into a stable 63-bit number."""
    if item.prompt_id is not None:
        return int(item.prompt_id)
    digest = hashlib.blake2b(f"{item.dataset}\x00{item.episode}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") >> 1


class Pair(FrozenWhenJudged):
    """Two items of one campaign, stored with item_a.id < item_b.id.

    `judgment_count` is maintained under the pair's row lock by the submit service; it
    lets the lease query skip full pairs without counting judgments. `group_key` (the prompt
    or episode) and `spread_rank` (the pair's position among its group's pairs) are set when
    the pair is created (`pairs_prepare`), so the lease order can spread fresh pairs across
    groups while staying an index scan.
    """

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="pairs")
    item_a = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="+")
    item_b = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="+")
    judgment_count = models.PositiveIntegerField(default=0)
    # Both sides can be shown: text, or both clips ready. Only ready pairs are in the lease
    # index, so a pair whose clip is missing, rendering or failed is never leased.
    ready = models.BooleanField(default=True, db_default=True)
    group_key = models.BigIntegerField(default=0)
    spread_rank = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(item_a__lt=models.F("item_b")), name="pair_canonical_order"
            ),
            models.UniqueConstraint(fields=["item_a", "item_b"], name="pair_unique_items"),
        ]
        # Matches the default lease order's ORDER BY, so the lease query stops at the first
        # free pair instead of sorting every open pair; the columns it filters on (group_key)
        # are in the index too, not joins.
        indexes = [
            models.Index(
                fields=["campaign", "-judgment_count", "spread_rank", "id", "group_key"],
                name="pair_lease_order",
                condition=models.Q(ready=True),
            )
        ]

    def __str__(self) -> str:
        return f"pair {self.pk} ({self.item_a_id} vs {self.item_b_id})"

    def save(self, *args, **kwargs):
        if self._state.adding and self.item_a_id is not None and not self.group_key:
            pairs_prepare([self])
        super().save(*args, **kwargs)

    def clean(self) -> None:
        """For forms (the admin): put the items in canonical order and check they belong
        together. The bulk import applies the same rules."""
        if self.item_a_id is None or self.item_b_id is None:
            return
        if self.item_a_id == self.item_b_id:
            raise ValidationError("A pair needs two different items.")
        if self.item_a_id > self.item_b_id:
            self.item_a, self.item_b = self.item_b, self.item_a
        if (
            self.item_a.campaign_id != self.campaign_id
            or self.item_b.campaign_id != self.campaign_id
        ):
            raise ValidationError("Both items must belong to the pair's campaign.")
        if self.item_a.prompt_id != self.item_b.prompt_id:
            raise ValidationError("Both items of a text pair must answer the same prompt.")

    def is_judged(self) -> bool:
        return self.pk is not None and Judgment.objects.filter(pair_id=self.pk).exists()


def pairs_prepare(pairs: list[Pair]) -> list[Pair]:
    """Fill group_key and spread_rank of new pairs (before a save or bulk_create): the n-th
    pair of a group gets rank n, counting the group's pairs already stored, so ordering by
    rank hands out every group's first pair before any group's second."""
    items = Item.objects.in_bulk({p.item_a_id for p in pairs} | {p.item_b_id for p in pairs})
    campaigns = {p.campaign_id for p in pairs}
    text = set(
        Campaign.objects.filter(pk__in=campaigns, kind=Campaign.Kind.TEXT).values_list(
            "pk", flat=True
        )
    )
    for pair in pairs:
        pair.group_key = pair_group_key(items[pair.item_a_id])
        # A trajectory pair waits for both clips; `clips_mark_ready` (services) flips it.
        pair.ready = pair.campaign_id in text or (
            items[pair.item_a_id].clip_status == ClipStatus.READY
            and items[pair.item_b_id].clip_status == ClipStatus.READY
        )
    taken = Counter(
        {
            (row["campaign_id"], row["group_key"]): row["n"]
            for row in Pair.objects.filter(
                campaign_id__in=campaigns, group_key__in={p.group_key for p in pairs}
            )
            .values("campaign_id", "group_key")
            .annotate(n=models.Count("id"))
        }
    )
    for pair in pairs:
        key = (pair.campaign_id, pair.group_key)
        pair.spread_rank = taken[key]
        taken[key] += 1
    return pairs


class Assignment(models.Model):
    """A lease: the pair is held for one annotator until `expires_at` (database time)."""

    class Status(models.TextChoices):
        OPEN = "open"
        DONE = "done"  # judged
        SKIPPED = "skipped"
        RELEASED = "released"  # the annotator was removed or deactivated

    pair = models.ForeignKey(Pair, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments"
    )
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    a_on_left = models.BooleanField(help_text="Shown order, drawn at random per lease.")
    leased_at = models.DateTimeField(db_default=Now())
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(
                fields=["pair", "expires_at"],
                condition=models.Q(status="open"),
                name="assignment_open_by_pair",
            ),
            models.Index(
                fields=["annotator", "campaign", "expires_at"],
                condition=models.Q(status="open"),
                name="assignment_open_by_annotator",
            ),
        ]

    def __str__(self) -> str:
        return f"lease {self.pk} of pair {self.pair_id} to user {self.annotator_id}"

    @property
    def sides(self) -> tuple[Item, Item]:
        """(left, right): the pair's items in the order this annotator sees them."""
        pair = self.pair
        return (pair.item_a, pair.item_b) if self.a_on_left else (pair.item_b, pair.item_a)


class JudgmentQuerySet(models.QuerySet):
    def delete(self):
        raise FrozenError("judgments are never deleted; retract or exclude them instead")


class Judgment(models.Model):
    """An annotator's verdict on a pair, one choice per criterion, in canonical orientation:
    "a" always means `pair.item_a`, whichever side it was shown on."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        RETRACTED = "retracted"
        EXCLUDED = "excluded"

    pair = models.ForeignKey(Pair, on_delete=models.PROTECT, related_name="judgments")
    # Indexed by judgment_by_annotator below, which starts with it.
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="judgments", db_index=False
    )
    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="judgments")
    assignment = models.OneToOneField(
        Assignment, on_delete=models.SET_NULL, null=True, blank=True, related_name="judgment"
    )
    choices = models.JSONField(help_text='{criterion slug: "a" | "b" | "tie" | "both_bad"}')
    shown_left = models.ForeignKey(Item, on_delete=models.PROTECT, related_name="+")
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    # The database's time when the inserting statement started (STATEMENT_TIMESTAMP() on
    # PostgreSQL, which is also what Now() compiles to; not the transaction's start). The
    # judgment commits a few statements later, within the same short transaction; readers
    # that page by id wait JUDGMENT_SETTLE_SECONDS past it (selectors.judgments_page).
    created_at = models.DateTimeField(db_default=Now())

    objects = JudgmentQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["pair", "annotator"], name="judgment_once_per_pair"),
        ]
        indexes = [
            models.Index(fields=["campaign", "id"]),
            # An annotator's own count per campaign (the campaign lists), index-only; it
            # replaces the plain index on annotator, so a submit writes no more indexes.
            models.Index(fields=["annotator", "campaign"], name="judgment_by_annotator"),
        ]

    def __str__(self) -> str:
        return f"judgment {self.pk} on pair {self.pair_id}"

    def delete(self, *args, **kwargs):
        raise FrozenError("judgments are never deleted; retract or exclude them instead")


class Skip(models.Model):
    pair = models.ForeignKey(Pair, on_delete=models.PROTECT, related_name="skips")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="skips"
    )
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="skips")
    reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["pair", "annotator"], name="skip_once_per_pair"),
        ]
        indexes = [models.Index(fields=["campaign", "id"])]

    def __str__(self) -> str:
        return f"skip of pair {self.pair_id} by user {self.annotator_id}"


class Dataset(models.Model):
    """An imported RL dataset. Its arrays live in files, one memory-mappable ``.npy`` per
    field (annotation/dataset_io.py) under ``DATASETS_ROOT/<directory>``, never one row per
    step. Row i of every field file is row i of the imported source, so per-transition
    results can be written back in the source's order. The true rewards are one of those
    files: kept for evaluation, never part of what annotators are shown."""

    class Format(models.TextChoices):
        D4RL = "d4rl", "D4RL HDF5"
        MINARI = "minari", "Minari"
        NPZ = "npz", "NumPy .npz"
        GENERATED = "generated", "generated rollouts"

    name = models.CharField(max_length=200, unique=True)
    source_format = models.CharField(max_length=12, choices=Format.choices)
    env_id = models.CharField(max_length=200, blank=True, help_text="Environment id, if known.")
    observation_space = models.JSONField(help_text='One row\'s {"shape": [...], "dtype": ...}.')
    action_space = models.JSONField(help_text='One row\'s {"shape": [...], "dtype": ...}.')
    fields = models.JSONField(default=list, help_text="The field files stored.")
    metadata = models.JSONField(
        default=dict,
        blank=True,
        help_text="What the source says about itself, or how it was generated.",
    )
    transition_count = models.PositiveBigIntegerField()
    episode_count = models.PositiveIntegerField()
    # A uuid chosen by the import, never the user's text.
    directory = models.CharField(max_length=32, unique=True, editable=False)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name

    @property
    def path(self) -> Path:
        return Path(settings.DATASETS_ROOT) / self.directory


class Episode(models.Model):
    """One episode of a dataset: rows [start, start + length) of its field files."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="episodes")
    index = models.PositiveIntegerField()
    start = models.PositiveBigIntegerField()
    length = models.PositiveIntegerField()
    terminated = models.BooleanField()
    truncated = models.BooleanField()
    # The policy that produced it, where known (generated rollouts, a source that says).
    policy = models.CharField(max_length=100, blank=True, default="", db_default="")

    class Meta:
        ordering = ["dataset_id", "index"]  # the id: no join for the dataset's own ordering
        constraints = [
            models.UniqueConstraint(fields=["dataset", "index"], name="episode_index_unique")
        ]

    def __str__(self) -> str:
        return f"{self.dataset} #{self.index}"

"""What the workers compute from judgments, and the state of that computation."""

from django.conf import settings
from django.db import models
from django.db.models.functions import Now

from annotation.models import Campaign, Criterion, Item, Pair


class AggregationState(models.Model):
    """One row per campaign: what its aggregation owes, and the record of its runs.

    The row, not a Celery message, is the record of a run owed (labeling/services/aggregation.py):
    `pending` is set (False -> True, at `requested_at`, database time) by the first judgment
    committed since the last run started, which then enqueues one task; later judgments see
    it set and enqueue nothing. A run clears it *before* reading judgments, so a judgment
    committed mid-run sets it again and schedules one more run. Runs hold the campaign's run
    lock, so they never overlap, and are numbered when they start (`started_seq`) and when
    they end (`finished_seq`). The beat sweep enqueues what is owed and has no task: a flag
    older than the debounce plus a grace, a run started and never finished, judgments above
    `judgment_high_water` with no flag set.
    """

    campaign = models.OneToOneField(
        Campaign, on_delete=models.CASCADE, primary_key=True, related_name="aggregation"
    )
    pending = models.BooleanField(default=False)
    requested_at = models.DateTimeField(null=True, blank=True)
    started_seq = models.PositiveIntegerField(default=0)
    applied_seq = models.PositiveIntegerField(default=0)
    runs_completed = models.PositiveIntegerField(default=0)
    last_started_at = models.DateTimeField(null=True, blank=True)
    last_finished_at = models.DateTimeField(null=True, blank=True)
    judgments_used = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # The last run that ended, applied or failed: started_seq > finished_seq with no run
    # holding the lock is a run whose worker died midway, and the sweep has it redone.
    finished_seq = models.PositiveIntegerField(default=0)
    # The highest judgment id when the last run started. A higher one and no flag set is a
    # judgment whose after-commit request never reached the database; the sweep schedules it.
    judgment_high_water = models.PositiveBigIntegerField(default=0)
    # The last applied fit: whether the solver converged, and in how many iterations. An
    # unconverged fit is applied but recorded as such, never silently.
    fit_converged = models.BooleanField(null=True, blank=True)
    fit_iterations = models.PositiveIntegerField(default=0)
    # The prior strength (l2) each criterion's last applied fit used, {slug: l2}: the
    # campaign's l2_prior when set, else the one the evidence chose (labeling/bradley_terry.py).
    fit_l2 = models.JSONField(default=dict, blank=True)
    # Runs in a row that started and never finished (labeling.services.aggregation).
    unfinished_runs = models.PositiveSmallIntegerField(default=0)

    def __str__(self) -> str:
        return f"aggregation of campaign {self.campaign_id}"


class ItemScore(models.Model):
    """Bradley-Terry score of an item under one criterion."""

    # A run inserts a row per item and criterion (100k items: 100k rows), so each index and
    # foreign-key check costs: the item is indexed by item_score_unique, which starts with
    # it, and the campaign by item_score_page; the criterion and the campaign, implied by
    # the item, are kept by Django's cascade rather than a per-row check in the database.
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="scores", db_index=False)
    criterion = models.ForeignKey(
        Criterion, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    score = models.FloatField()
    comparisons = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "criterion"], name="item_score_unique"),
        ]
        indexes = [
            models.Index(fields=["campaign", "criterion", "-score"]),
            # The API's pages, in key order from any key on (labeling/selectors.py).
            models.Index(fields=["campaign", "item", "criterion"], name="item_score_page"),
        ]

    def __str__(self) -> str:
        return f"item {self.item_id}: {self.score:.3f}"


class PairLabel(models.Model):
    """Soft label of a pair under one criterion: the share of counted judgments preferring
    item_a (a tie is half each way), and how many judgments it rests on."""

    # As ItemScore: one row per judged pair and criterion, so the pair is indexed only by
    # pair_label_unique, and the criterion and campaign are kept by Django's cascade.
    pair = models.ForeignKey(Pair, on_delete=models.CASCADE, related_name="labels", db_index=False)
    criterion = models.ForeignKey(
        Criterion, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    prefer_a = models.FloatField()
    count = models.PositiveIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["pair", "criterion"], name="pair_label_unique"),
        ]
        indexes = [
            # The API's pages, in key order from any key on (labeling/selectors.py).
            models.Index(fields=["campaign", "pair", "criterion"], name="pair_label_page"),
        ]

    def __str__(self) -> str:
        return f"pair {self.pair_id}: {self.prefer_a:.2f} of {self.count}"


def export_upload_to(instance: "ExportSnapshot", filename: str) -> str:  # noqa: UP037
    return f"exports/{instance.token}.jsonl"


class ExportSnapshot(models.Model):
    """A campaign's judgments written to a file by a worker, for downloads that can resume
    (HTTP Range) and for datasets too big to pull in one stream. The API and the dashboard
    read this row, never Celery's result backend."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="snapshots")
    token = models.CharField(max_length=32, unique=True, editable=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    file = models.FileField(upload_to=export_upload_to, blank=True, max_length=200)
    rows = models.PositiveIntegerField(default=0)
    size = models.PositiveBigIntegerField(default=0)
    error = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Database time of the last enqueue, start and sign of life of a build: a sweep re-runs
    # snapshots whose task was lost.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"export {self.pk} of campaign {self.campaign_id} ({self.status})"


def labeling_upload_to(instance: "RewardLabeling", filename: str) -> str:  # noqa: UP037
    return f"labels/{instance.campaign_id}/{instance.pk}-{instance.method}.npy"


class RewardLabeling(models.Model):
    """One version of the per-transition reward labels of a trajectory campaign's dataset,
    computed from its pairs' soft labels by optimal reward labeling (labeling/orl.py): which
    method, on how many judgments and pairs, how much of the dataset it covers, when. The
    labels are a float32 ``.npy`` with one value per row of the imported dataset, in its
    order (uncovered rows 0, `covered` saying which): nothing is overwritten, a newer row is
    a newer version."""

    class Method(models.TextChoices):
        CLOSED_FORM = "orl", "closed form (±(2y-1) per step, averaged)"
        EXACT = "orl-exact", "exact (Bradley-Terry likelihood over rewards in [-1, 1])"

    class Status(models.TextChoices):
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="labelings")
    criterion = models.ForeignKey(Criterion, on_delete=models.CASCADE, related_name="+")
    method = models.CharField(max_length=12, choices=Method.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    error = models.TextField(blank=True)
    # What it was computed from: the aggregation run whose pair labels it read.
    aggregation_seq = models.PositiveIntegerField(default=0)
    judgments_used = models.PositiveIntegerField(default=0)
    pairs_used = models.PositiveIntegerField(default=0)
    transitions = models.PositiveBigIntegerField(default=0)
    covered = models.PositiveBigIntegerField(default=0)
    objective = models.FloatField(null=True, blank=True)
    iterations = models.PositiveIntegerField(null=True, blank=True)
    converged = models.BooleanField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    file = models.FileField(upload_to=labeling_upload_to, blank=True, max_length=200)
    created_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["campaign", "method", "-id"], name="labeling_latest")]

    def __str__(self) -> str:
        return f"{self.method} labels {self.pk} of campaign {self.campaign_id} ({self.status})"

    @property
    def coverage(self) -> float:
        return self.covered / self.transitions if self.transitions else 0.0

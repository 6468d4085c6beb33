from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from . import dataset_io
from .models import Assignment, Campaign, Dataset, Item
from .pair_order import PAIR_ORDERS
from .selectors import criteria_slugs


class CriterionInSerializer(serializers.Serializer):
    slug = serializers.SlugField(max_length=50)
    label = serializers.CharField(max_length=200, required=False, allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True)


class TrajectorySourceSerializer(serializers.Serializer):
    """A trajectory campaign cut from a stored dataset (annotation/segments.py)."""

    dataset = serializers.CharField(max_length=200, help_text="The dataset's name.")
    segment_length = serializers.IntegerField(min_value=1, max_value=10_000)
    stride = serializers.IntegerField(
        min_value=1, max_value=2**31 - 1, required=False, help_text="Default: segment_length."
    )
    pairs = serializers.IntegerField(min_value=1, max_value=200_000)
    sampling = serializers.ChoiceField(
        choices=["random", "within_episode", "across_episode"], required=False
    )
    seed = serializers.IntegerField(min_value=0, max_value=2**32 - 1, required=False)

    def get_attribute(self, instance: Any) -> Any:
        return instance.source or None  # {} on campaigns not cut from a dataset


class CampaignSerializer(serializers.ModelSerializer):
    criteria = CriterionInSerializer(many=True, required=False)
    source = TrajectorySourceSerializer(
        required=False,
        allow_null=True,
        help_text="Trajectory campaigns: cut segments and pairs from a stored dataset (with "
        '"kind": "trajectory"). Null for other campaigns.',
    )
    pair_order = serializers.ChoiceField(
        choices=[(o.name, o.label) for o in PAIR_ORDERS.values()],
        required=False,
        help_text="Which free pair an annotator gets next (annotation/pair_order.py).",
    )

    class Meta:
        model = Campaign
        fields = [
            "id",
            "name",
            "slug",
            "kind",
            "instructions",
            "judgments_per_pair",
            "lease_seconds",
            "lease_max_seconds",
            "pair_order",
            "status",
            "both_bad_counts_as",
            "l2_prior",
            "criteria",
            "source",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]
        # campaign_create answers a taken slug with 409, also when a concurrent create
        # takes it after any check here could run.
        extra_kwargs: dict[str, dict[str, Any]] = {"slug": {"validators": []}}

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["criteria"] = [
            {"slug": c.slug, "label": c.label, "description": c.description}
            for c in instance.criteria.all()
        ]
        return data

    def validate_criteria(self, value):
        slugs = [c["slug"] for c in value]
        if len(set(slugs)) != len(slugs):
            raise serializers.ValidationError("criterion slugs must be unique")
        return value


class MembersInSerializer(serializers.Serializer):
    usernames = serializers.ListField(
        child=serializers.CharField(), allow_empty=False, max_length=10_000
    )

    def validate_usernames(self, value):
        users = {u.username: u for u in get_user_model().objects.filter(username__in=value)}
        missing = [name for name in value if name not in users]
        if missing:
            raise serializers.ValidationError(f"unknown user '{missing[0]}'")
        return [users[name] for name in value]


_CHOICE = {"type": "string", "enum": ["left", "right", "tie", "both_bad"]}


@extend_schema_field(
    {"oneOf": [{"type": "object", "additionalProperties": _CHOICE, "minProperties": 1}, _CHOICE]}
)
class ChoicesField(serializers.JSONField):
    """Any JSON in, checked by judgment_submit; the schema says what it accepts."""


class JudgmentInSerializer(serializers.Serializer):
    choices = ChoicesField(
        help_text='{"criterion": "left" | "right" | "tie" | "both_bad"}, or one '
        "choice string when the campaign has a single criterion."
    )
    duration_ms = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=2**31 - 1
    )
    next = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Also lease the next pair and return it as `next`: one request per judgment.",
    )


class SkipInSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")


def item_payload(item: Item) -> dict:
    """One side as an annotator sees it: the response's text, or the segment's clip. No id,
    external id, source, dataset, episode, offsets or metadata: any of them could hint at
    which model or policy made it, or in which order it was imported."""
    if item.prompt_id is not None or item.content:
        return {"content": item.content}
    return {"clip": item.clip_url or None}


def assignment_payload(assignment: Assignment) -> dict:
    """What an annotator (person or script) sees of a lease: the lease, the prompt and the two
    sides, nothing else. Choices are given as "left"/"right" (or tie, both_bad)."""
    pair = assignment.pair
    left, right = assignment.sides
    prompt = pair.item_a.prompt  # None, without a query, when prompt_id is
    return {
        "assignment": assignment.pk,
        "expires_at": assignment.expires_at,
        "prompt": prompt.messages if prompt is not None else None,
        "left": item_payload(left),
        "right": item_payload(right),
        "criteria": criteria_slugs(campaign_id=assignment.campaign_id),
    }


# Output and row serializers: they describe the API's bodies for the OpenAPI schema
# (STYLE.md rule 15). The views build their responses with the functions above and the
# services validate the rows; these only say what goes in and comes out.


class ErrorSerializer(serializers.Serializer):
    """Every 4xx: {"error", "detail", "field"?}; a refused serializer field adds `errors`
    (DRF's detail) and a duplicate judgment `judgment_id`."""

    error = serializers.CharField(help_text="A code: invalid, not_found, conflict, throttled…")
    detail = serializers.CharField()
    field = serializers.CharField(
        required=False, help_text="Where: a body field, rows[i].field, body, path."
    )


@extend_schema_field(
    {"oneOf": [{"type": "integer"}, {"type": "string"}], "description": "An id or an external_id."}
)
class RefField(serializers.JSONField):
    pass


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant", "tool"])
    content = serializers.CharField()


class PromptRowSerializer(serializers.Serializer):
    external_id = serializers.CharField(required=False, max_length=200)
    messages = MessageSerializer(
        many=True, required=False, help_text='A chat; or give "prompt", one user message.'
    )
    prompt = serializers.CharField(required=False)


class ItemRowSerializer(serializers.Serializer):
    external_id = serializers.CharField(required=False, max_length=200)
    source = serializers.CharField(
        required=False, max_length=200, help_text="The model or policy (alias: model)."
    )
    model = serializers.CharField(required=False, max_length=200)
    metadata = serializers.DictField(required=False)
    prompt = RefField(required=False, help_text="Text campaigns: the prompt it answers.")
    content = serializers.CharField(required=False, help_text="Text campaigns: the response.")
    dataset = serializers.CharField(required=False, max_length=200, help_text="Trajectories.")
    episode = serializers.CharField(required=False, max_length=200, help_text="Trajectories.")
    start = serializers.IntegerField(required=False, min_value=0, max_value=2**31 - 1)
    length = serializers.IntegerField(required=False, min_value=1, max_value=2**31 - 1)


class PairRowSerializer(serializers.Serializer):
    item_a = RefField()
    item_b = RefField()


class BulkCreatedOutputSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    ids = serializers.ListField(child=serializers.IntegerField())


class MemberOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()


class MembersOutputSerializer(serializers.Serializer):
    members = MemberOutputSerializer(many=True)


class SideOutputSerializer(serializers.Serializer):
    """item_payload: a text side has `content`, a trajectory side `clip`."""

    content = serializers.CharField(required=False)
    clip = serializers.CharField(required=False, allow_null=True)


class AssignmentOutputSerializer(serializers.Serializer):
    """assignment_payload."""

    assignment = serializers.IntegerField()
    expires_at = serializers.DateTimeField()
    prompt = MessageSerializer(many=True, allow_null=True)
    left = SideOutputSerializer()
    right = SideOutputSerializer()
    criteria = serializers.ListField(child=serializers.CharField())


class JudgmentOutputSerializer(serializers.Serializer):
    judgment = serializers.IntegerField()
    choices = serializers.DictField(
        child=serializers.CharField(), help_text="Per criterion, as shown: left, right, tie…"
    )
    next = AssignmentOutputSerializer(
        required=False,
        allow_null=True,
        help_text='Only with "next": true: the next lease, as POST next/ answers it; null '
        "when nothing is left for you or `next_detail` says why none was taken.",
    )
    next_detail = serializers.CharField(
        required=False,
        help_text="With a null `next`: why (nothing left, the campaign paused, no longer a member).",
    )


class SkipOutputSerializer(serializers.Serializer):
    skip = serializers.IntegerField()


class RenewOutputSerializer(serializers.Serializer):
    assignment = serializers.IntegerField()
    expires_at = serializers.DateTimeField()


class ScoreOutputSerializer(serializers.Serializer):
    item = serializers.IntegerField()
    external_id = serializers.CharField(allow_blank=True)
    criterion = serializers.CharField()
    score = serializers.FloatField()
    comparisons = serializers.IntegerField()


class ScoresOutputSerializer(serializers.Serializer):
    updated_at = serializers.DateTimeField(allow_null=True)
    judgments_used = serializers.IntegerField()
    fit_converged = serializers.BooleanField(allow_null=True)
    fit_iterations = serializers.IntegerField()
    fit_l2 = serializers.DictField(
        child=serializers.FloatField(),
        help_text="Per criterion, the prior strength the fit used: the campaign's l2_prior, "
        "or chosen from the judgments by the Laplace evidence (labeling/bradley_terry.py).",
    )
    scores = ScoreOutputSerializer(many=True)
    next = serializers.URLField(allow_null=True, help_text="The next page; null on the last.")


class LabelOutputSerializer(serializers.Serializer):
    pair = serializers.IntegerField()
    item_a = serializers.IntegerField()
    item_b = serializers.IntegerField()
    criterion = serializers.CharField()
    prefer_a = serializers.FloatField()
    count = serializers.IntegerField()


class LabelsOutputSerializer(serializers.Serializer):
    labels = LabelOutputSerializer(many=True)
    next = serializers.URLField(allow_null=True, help_text="The next page; null on the last.")


class JudgmentRowOutputSerializer(serializers.Serializer):
    """selectors.judgments_page: staff get every field, annotators the unmarked ones."""

    id = serializers.IntegerField()
    pair = serializers.IntegerField(required=False, help_text="Staff only.")
    item_a = serializers.IntegerField(required=False, help_text="Staff only.")
    item_b = serializers.IntegerField(required=False, help_text="Staff only.")
    annotator = serializers.CharField(required=False, help_text="Staff only: a pseudonym.")
    choices = serializers.DictField(child=serializers.CharField())
    shown_left = serializers.IntegerField(required=False, help_text="Staff only: an item id.")
    duration_ms = serializers.IntegerField(allow_null=True)
    status = serializers.CharField()
    created_at = serializers.DateTimeField()


class JudgmentPageOutputSerializer(serializers.Serializer):
    results = JudgmentRowOutputSerializer(many=True)
    next_after = serializers.IntegerField()


class ExportSnapshotOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    campaign = serializers.CharField()
    status = serializers.ChoiceField(choices=["pending", "running", "done", "failed"])
    rows = serializers.IntegerField()
    size = serializers.IntegerField()
    error = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    download = serializers.CharField(allow_null=True)


class PairSideOutputSerializer(serializers.Serializer):
    """selectors._side: a segment cut from a stored dataset has its episode's index and its
    first row in the imported source (`start`); it covers rows start .. start+length-1."""

    id = serializers.IntegerField()
    external_id = serializers.CharField()
    source = serializers.CharField(help_text="The model or policy.")
    dataset = serializers.CharField()
    episode = serializers.JSONField(
        help_text="The episode's index (an integer) for segments "
        "cut from a stored dataset; free text otherwise."
    )
    start = serializers.IntegerField(allow_null=True)
    length = serializers.IntegerField(allow_null=True)
    clip_status = serializers.CharField()


class PairOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    ready = serializers.BooleanField(help_text="Both sides can be shown (clips rendered).")
    judgment_count = serializers.IntegerField()
    item_a = PairSideOutputSerializer()
    item_b = PairSideOutputSerializer()


class PairPageOutputSerializer(serializers.Serializer):
    results = PairOutputSerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="The next page's URL, if any.")


class AssignmentStaffOutputSerializer(serializers.Serializer):
    """selectors.assignment_staff_detail."""

    assignment = serializers.IntegerField()
    campaign = serializers.CharField()
    annotator = serializers.IntegerField()
    status = serializers.CharField()
    leased_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    left = serializers.ChoiceField(
        choices=["item_a", "item_b"], help_text="The item shown on the left."
    )
    judgment = serializers.IntegerField(allow_null=True)
    pair = PairOutputSerializer()


# --- Datasets -------------------------------------------------------------------------

# What an upload may be: the formats annotation/dataset_io.py reads (Minari as a .zip of the
# dataset's directory, once dataset_io reads Minari).
DATASET_UPLOAD_FORMATS = [
    (value, label)
    for value, label in [
        (Dataset.Format.D4RL.value, "D4RL HDF5 file"),
        (Dataset.Format.NPZ.value, "NumPy .npz archive"),
        (Dataset.Format.MINARI.value, "Minari dataset directory, as a .zip"),
    ]
    if value in dataset_io.FORMATS
]


class DatasetUploadInSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text="The dataset file, at most DATASET_MAX_BYTES bytes. Its name is used in "
        "messages only."
    )
    format = serializers.ChoiceField(choices=DATASET_UPLOAD_FORMATS)
    # The service folds whitespace and holds the name to 200 characters.
    name = serializers.CharField(max_length=1000)
    env = serializers.CharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        default="",
        help_text="The environment id, e.g. hopper-medium-v2.",
    )


class SpaceOutputSerializer(serializers.Serializer):
    shape = serializers.ListField(child=serializers.IntegerField())
    dtype = serializers.CharField()


class DatasetOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    source_format = serializers.ChoiceField(choices=Dataset.Format.choices)
    env_id = serializers.CharField(allow_blank=True)
    observation_space = SpaceOutputSerializer()
    action_space = SpaceOutputSerializer()
    fields = serializers.ListField(child=serializers.CharField())
    transition_count = serializers.IntegerField()
    episode_count = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class DatasetPageOutputSerializer(serializers.Serializer):
    results = DatasetOutputSerializer(many=True)
    next = serializers.CharField(allow_null=True, help_text="The next page; null on the last.")


class PolicyCountOutputSerializer(serializers.Serializer):
    policy = serializers.CharField()
    episodes = serializers.IntegerField()


class EpisodeSummaryOutputSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    terminated = serializers.IntegerField()
    truncated = serializers.IntegerField()
    length_min = serializers.IntegerField(allow_null=True)
    length_median = serializers.FloatField(allow_null=True)
    length_max = serializers.IntegerField(allow_null=True)
    policies = PolicyCountOutputSerializer(many=True)


class DatasetDetailOutputSerializer(DatasetOutputSerializer):
    episodes = EpisodeSummaryOutputSerializer()

from django.contrib.auth import get_user_model
from rest_framework import serializers

from .models import Assignment, Campaign, Item
from .pair_order import PAIR_ORDERS


class CriterionInSerializer(serializers.Serializer):
    slug = serializers.SlugField(max_length=50)
    label = serializers.CharField(max_length=200, required=False, allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True)


class CampaignSerializer(serializers.ModelSerializer):
    criteria = CriterionInSerializer(many=True, required=False)
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
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]
        # campaign_create answers a taken slug with 409, also when a concurrent create
        # takes it after any check here could run.
        extra_kwargs = {"slug": {"validators": []}}

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


class JudgmentInSerializer(serializers.Serializer):
    choices = serializers.JSONField(
        help_text='{"criterion": "left" | "right" | "a" | "b" | "tie" | "both_bad"}, or one '
        "choice string when the campaign has a single criterion."
    )
    duration_ms = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=2**31 - 1
    )


class SkipInSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")


def item_payload(item: Item) -> dict:
    """An item as an annotator sees it: no external id, source or metadata, which could
    hint at quality or origin."""
    payload: dict = {"id": item.pk}
    if item.prompt_id is not None or item.content:
        payload["content"] = item.content
    else:
        payload.update(
            dataset=item.dataset,
            episode=item.episode,
            start=item.start,
            length=item.length,
            clip=item.clip_url or None,
        )
    return payload


def assignment_payload(assignment: Assignment) -> dict:
    """What an annotator (person or script) sees of a lease: no model names or metadata,
    which could bias the judgment."""
    pair = assignment.pair
    left, right = assignment.sides
    return {
        "assignment": assignment.pk,
        "pair": pair.pk,
        "expires_at": assignment.expires_at,
        "prompt": pair.item_a.prompt.messages if pair.item_a.prompt_id else None,
        "left": item_payload(left),
        "right": item_payload(right),
        "item_a": pair.item_a_id,
        "item_b": pair.item_b_id,
        "criteria": [c.slug for c in assignment.campaign.criteria.all()],
    }

from django import forms
from django.contrib import admin

from .models import Assignment, Campaign, Criterion, Item, Judgment, Membership, Pair, Prompt, Skip
from .pair_order import PAIR_ORDERS


class FrozenWhenJudgedAdmin(admin.ModelAdmin):
    """Judged rows open read-only: the model would refuse the edit anyway."""

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and not (obj and obj.is_judged())

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and not (obj and obj.is_judged())


class CriterionInline(admin.TabularInline):
    model = Criterion
    extra = 0

    def _campaign_judged(self, obj) -> bool:
        return bool(obj and obj.pk and obj.judgments.exists())

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and not self._campaign_judged(obj)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and not self._campaign_judged(obj)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "kind", "status", "judgments_per_pair", "created_at"]
    list_filter = ["kind", "status"]
    prepopulated_fields = {"slug": ["name"]}

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "pair_order":  # a choice from the registry, not free text
            return forms.ChoiceField(
                choices=[(o.name, o.label) for o in PAIR_ORDERS.values()],
                initial=db_field.default,
                help_text=db_field.help_text,
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    inlines = [CriterionInline, MembershipInline]


@admin.register(Prompt)
class PromptAdmin(FrozenWhenJudgedAdmin):
    list_display = ["id", "campaign", "external_id", "created_at"]
    list_filter = ["campaign"]


@admin.register(Item)
class ItemAdmin(FrozenWhenJudgedAdmin):
    list_display = ["id", "campaign", "external_id", "source", "created_at"]
    list_filter = ["campaign"]
    raw_id_fields = ["prompt"]


@admin.register(Pair)
class PairAdmin(FrozenWhenJudgedAdmin):
    list_display = ["id", "campaign", "item_a", "item_b", "judgment_count"]
    list_filter = ["campaign"]
    raw_id_fields = ["item_a", "item_b"]
    readonly_fields = ["judgment_count"]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["id", "pair", "annotator", "status", "leased_at", "expires_at"]
    list_filter = ["status", "campaign"]
    raw_id_fields = ["pair", "annotator"]


@admin.register(Judgment)
class JudgmentAdmin(admin.ModelAdmin):
    """Judgments are evidence: read-only here, never deleted."""

    list_display = ["id", "campaign", "pair", "annotator", "choices", "status", "created_at"]
    list_filter = ["campaign", "status"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Skip)
class SkipAdmin(admin.ModelAdmin):
    list_display = ["id", "campaign", "pair", "annotator", "reason", "created_at"]
    list_filter = ["campaign"]

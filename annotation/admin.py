from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.http import HttpRequest

from . import permissions, selectors, services
from .models import (
    Assignment,
    Campaign,
    CampaignRole,
    ClipStatus,
    Criterion,
    Dataset,
    Episode,
    Item,
    Judgment,
    Membership,
    Pair,
    Prompt,
    Skip,
)
from .pair_order import PAIR_ORDERS
from .services import clips as clip_services


class ManagedCampaignFilter(admin.RelatedFieldListFilter):
    """The campaign filter of a changelist: the campaigns the user manages, by name. Django's
    own lists every campaign (names the user may not see); its related-only variant scans
    every row of the list for their campaigns."""

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> list[Any]:
        managed = permissions.campaigns_for(user=request.user, need="manage")
        return list(managed.order_by("name").values_list("pk", "name"))


CAMPAIGN_FILTER = ("campaign", ManagedCampaignFilter)


class CampaignScopedAdmin(admin.ModelAdmin):
    """Rows of campaigns the user manages or owns (annotation/permissions.py), on top of
    Django's model permissions: `is_staff` opens the site, a role opens a campaign.

    Changelists stay a fixed number of queries whatever the number of rows: what a column
    shows comes from `list_select_related` or from one query per page, never one per row.
    They count only the filtered rows (the paginator's count), not the whole table again."""

    campaign_path = "campaign__"  # how the row reaches its campaign
    show_full_result_count = False

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .filter(
                permissions.campaign_filter(
                    user=request.user, need="manage", prefix=self.campaign_path
                )
            )
        )

    def _campaign_of(self, obj):
        return obj if isinstance(obj, Campaign) else obj.campaign

    def _may(self, request, obj, need="manage") -> bool:
        return obj is None or permissions.can(
            user=request.user, campaign=self._campaign_of(obj), need=need
        )

    def has_module_permission(self, request):
        return super().has_module_permission(request) and permissions.has_role_anywhere(
            user=request.user
        )

    def has_view_permission(self, request, obj=None):
        return super().has_view_permission(request, obj) and self._may(request, obj)

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and self._may(request, obj)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and self._may(request, obj)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.related_model is Campaign:
            kwargs["queryset"] = permissions.campaigns_for(user=request.user, need="manage")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class FrozenWhenJudgedAdmin(CampaignScopedAdmin):
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


class CampaignRoleInline(admin.TabularInline):
    """Roles are handed out by owners only."""

    model = CampaignRole
    extra = 0
    raw_id_fields = ["user"]

    def _owner(self, request, obj) -> bool:
        return obj is not None and permissions.can(user=request.user, campaign=obj, need="own")

    def has_add_permission(self, request, obj=None):
        return super().has_add_permission(request, obj) and self._owner(request, obj)

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and self._owner(request, obj)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and self._owner(request, obj)


class CampaignChangeList(ChangeList):
    """Puts each listed campaign's totals on it, for the page's rows in one go."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        totals = selectors.campaign_totals(campaigns=self.result_list)
        for campaign in self.result_list:
            campaign.totals = totals[campaign.pk]


@admin.register(Campaign)
class CampaignAdmin(CampaignScopedAdmin):
    campaign_path = ""
    list_display = [
        "name",
        "slug",
        "kind",
        "status",
        "judgments_per_pair",
        "pairs",
        "judgments",
        "created_at",
    ]
    list_filter = ["kind", "status"]
    prepopulated_fields = {"slug": ["name"]}

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return CampaignChangeList

    @admin.display(description="pairs")
    def pairs(self, obj: Any) -> int:
        return int(obj.totals.pairs)

    @admin.display(description="judgments")
    def judgments(self, obj: Any) -> int:
        return int(obj.totals.judgments)

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "pair_order":  # a choice from the registry, not free text
            return forms.ChoiceField(
                choices=[(o.name, o.label) for o in PAIR_ORDERS.values()],
                initial=db_field.default,
                help_text=db_field.help_text,
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    inlines = [CriterionInline, MembershipInline, CampaignRoleInline]

    def has_module_permission(self, request):
        # Creating a campaign needs no role yet, only the global permission.
        return admin.ModelAdmin.has_module_permission(self, request)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and self._may(request, obj, "own")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change:  # the creator owns what they create
            services.campaign_role_set(
                campaign=obj, user=request.user, role=CampaignRole.Role.OWNER
            )


@admin.register(Prompt)
class PromptAdmin(FrozenWhenJudgedAdmin):
    list_display = ["id", "campaign", "external_id", "created_at"]
    list_select_related = ["campaign"]
    list_filter = [CAMPAIGN_FILTER]


@admin.register(Item)
class ItemAdmin(FrozenWhenJudgedAdmin):
    list_display = ["id", "campaign", "external_id", "source", "clip_status", "created_at"]
    list_select_related = ["campaign"]
    list_filter = [CAMPAIGN_FILTER, "clip_status"]
    raw_id_fields = ["prompt", "source_dataset"]
    readonly_fields = ["clip_status", "clip_error", "clip_frames", "clip_fps", "clip_requested_at"]
    actions = ["rerender_clips"]

    def save_model(self, request, obj, form, change):
        uploaded = "clip" in form.changed_data and bool(obj.clip)
        if uploaded:  # a clip a person chose is shown as it is: ready
            obj.clip_status = ClipStatus.READY
            obj.clip_error = ""
        super().save_model(request, obj, form, change)
        if uploaded:
            clip_services.clip_uploaded(item_id=obj.pk)

    @admin.action(description="Re-render clips")
    def rerender_clips(self, request: HttpRequest, queryset: Any) -> None:
        # The changelist shows only items of campaigns the user manages (get_queryset).
        by_campaign: dict[int, list[int]] = {}
        for item_id, campaign_id in queryset.values_list("pk", "campaign_id"):
            by_campaign.setdefault(campaign_id, []).append(item_id)
        requested, kept = 0, 0
        for campaign in Campaign.objects.filter(pk__in=by_campaign):
            result = clip_services.clips_rerender(
                campaign=campaign, item_ids=by_campaign[campaign.pk]
            )
            requested += len(result.requested)
            kept += len(result.judged)
        message = f"{requested} clip(s) will be rendered again."
        if kept:
            message += f" {kept} kept: their pairs have judgments or open leases."
        self.message_user(request, message)


@admin.register(Pair)
class PairAdmin(FrozenWhenJudgedAdmin):
    list_display = ["id", "campaign", "item_a", "item_b", "judgment_count"]
    list_select_related = ["campaign", "item_a", "item_b"]
    list_filter = [CAMPAIGN_FILTER]
    raw_id_fields = ["item_a", "item_b"]
    readonly_fields = ["judgment_count"]


@admin.register(Assignment)
class AssignmentAdmin(CampaignScopedAdmin):
    list_display = ["id", "pair", "annotator", "status", "leased_at", "expires_at"]
    list_select_related = ["pair", "annotator"]
    list_filter = ["status", CAMPAIGN_FILTER]
    raw_id_fields = ["pair", "annotator"]


class ReadOnlyMixin:
    """Rows only their service writes: the admin shows them and changes nothing."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Judgment)
class JudgmentAdmin(ReadOnlyMixin, CampaignScopedAdmin):
    """Judgments are evidence: read-only here, never deleted."""

    list_display = ["id", "campaign", "pair", "annotator", "choices", "status", "created_at"]
    list_select_related = ["campaign", "pair", "annotator"]
    list_filter = [CAMPAIGN_FILTER, "status"]


@admin.register(Skip)
class SkipAdmin(CampaignScopedAdmin):
    list_display = ["id", "campaign", "pair", "annotator", "reason", "created_at"]
    list_select_related = ["campaign", "pair", "annotator"]
    list_filter = [CAMPAIGN_FILTER]


@admin.register(Dataset)
class DatasetAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Written only by the import. Datasets belong to no campaign yet, so Django's own
    `annotation.view_dataset` permission opens them to staff."""

    list_display = [
        "name",
        "source_format",
        "env_id",
        "transition_count",
        "episode_count",
        "created_at",
    ]
    list_filter = ["source_format"]
    search_fields = ["name", "env_id"]


@admin.register(Episode)
class EpisodeAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "dataset", "index", "start", "length", "terminated", "truncated"]
    list_select_related = ["dataset"]
    list_filter = ["terminated", "truncated"]
    raw_id_fields = ["dataset"]
    show_full_result_count = False

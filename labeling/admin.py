from django.contrib import admin

from annotation.admin import CampaignScopedAdmin

from .models import AggregationState


@admin.register(AggregationState)
class AggregationStateAdmin(CampaignScopedAdmin):
    """Only the campaigns the user manages or owns, like every campaign's rows in the admin."""

    list_display = [
        "campaign",
        "pending",
        "runs_completed",
        "judgments_used",
        "fit_converged",
        "last_finished_at",
    ]
    list_select_related = ["campaign"]
    readonly_fields = [f.name for f in AggregationState._meta.fields]

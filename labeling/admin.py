from django.contrib import admin

from .models import AggregationState


@admin.register(AggregationState)
class AggregationStateAdmin(admin.ModelAdmin):
    list_display = [
        "campaign",
        "pending",
        "runs_completed",
        "judgments_used",
        "fit_converged",
        "last_finished_at",
    ]
    readonly_fields = [f.name for f in AggregationState._meta.fields]

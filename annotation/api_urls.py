from django.urls import path

from . import api, api_clips, api_datasets, api_reward_labels

urlpatterns = [
    path(
        "campaigns/<slug:slug>/exports/",
        api.ExportSnapshotCreateView.as_view(),
        name="campaign-export-snapshots",
    ),
    path("exports/<int:snapshot_id>/", api.ExportSnapshotView.as_view(), name="export-snapshot"),
    path(
        "exports/<int:snapshot_id>/download",
        api.ExportSnapshotDownloadView.as_view(),
        name="export-snapshot-download",
    ),
    path("campaigns/", api.CampaignListView.as_view(), name="campaign-list"),
    path(
        "campaigns/<slug:slug>/reward-labels/",
        api_reward_labels.RewardLabelsView.as_view(),
        name="campaign-reward-labels",
    ),
    path(
        "campaigns/<slug:slug>/reward-labels/<int:labeling_id>/download",
        api_reward_labels.RewardLabelsDownloadView.as_view(),
        name="campaign-reward-labels-download",
    ),
    path("datasets/", api_datasets.DatasetListView.as_view(), name="dataset-list"),
    path(
        "datasets/<int:dataset_id>/",
        api_datasets.DatasetDetailView.as_view(),
        name="dataset-detail",
    ),
    path(
        "campaigns/<slug:slug>/members/", api.CampaignMembersView.as_view(), name="campaign-members"
    ),
    path("campaigns/<slug:slug>/clips/", api_clips.ClipsView.as_view(), name="campaign-clips"),
    path(
        "campaigns/<slug:slug>/clips/rerender/",
        api_clips.ClipsRerenderView.as_view(),
        name="campaign-clips-rerender",
    ),
    path("campaigns/<slug:slug>/next/", api.NextPairView.as_view(), name="campaign-next"),
    path("campaigns/<slug:slug>/prompts/", api.PromptBulkView.as_view(), name="campaign-prompts"),
    path("campaigns/<slug:slug>/items/", api.ItemBulkView.as_view(), name="campaign-items"),
    path("campaigns/<slug:slug>/pairs/", api.PairBulkView.as_view(), name="campaign-pairs"),
    path("campaigns/<slug:slug>/scores/", api.ScoresView.as_view(), name="campaign-scores"),
    path("campaigns/<slug:slug>/labels/", api.LabelsView.as_view(), name="campaign-labels"),
    path(
        "campaigns/<slug:slug>/judgments/",
        api.JudgmentListView.as_view(),
        name="campaign-judgments",
    ),
    path(
        "campaigns/<slug:slug>/export/judgments.jsonl",
        api.ExportView.as_view(),
        name="campaign-export",
    ),
    path(
        "campaigns/<slug:slug>/export/skips.jsonl",
        api.SkipExportView.as_view(),
        name="campaign-export-skips",
    ),
    path(
        "assignments/<int:assignment_id>/judgment/",
        api.JudgmentSubmitView.as_view(),
        name="assignment-judgment",
    ),
    path(
        "assignments/<int:assignment_id>/", api.AssignmentView.as_view(), name="assignment-detail"
    ),
    path("assignments/<int:assignment_id>/skip/", api.SkipView.as_view(), name="assignment-skip"),
    path(
        "assignments/<int:assignment_id>/renew/", api.RenewView.as_view(), name="assignment-renew"
    ),
]

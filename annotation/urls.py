from django.urls import path

from . import staff_views, views

app_name = "annotation"

urlpatterns = [
    path("", views.home, name="home"),
    path("staff/datasets/", staff_views.datasets, name="staff-datasets"),
    path(
        "staff/campaigns/from-dataset/",
        staff_views.campaign_from_dataset,
        name="staff-campaign-from-dataset",
    ),
    path(
        "staff/campaigns/<slug:slug>/clips/",
        staff_views.campaign_clips,
        name="staff-campaign-clips",
    ),
    path("c/<slug:slug>/", views.compare, name="compare"),
    path("c/<slug:slug>/lease/<int:assignment_id>/judge/", views.judge, name="judge"),
    path("c/<slug:slug>/lease/<int:assignment_id>/skip/", views.skip, name="skip"),
    path("c/<slug:slug>/lease/<int:assignment_id>/renew/", views.renew, name="renew"),
]

from django.urls import path

from . import views

app_name = "annotation"

urlpatterns = [
    path("", views.home, name="home"),
    path("c/<slug:slug>/", views.compare, name="compare"),
    path("c/<slug:slug>/lease/<int:assignment_id>/judge/", views.judge, name="judge"),
    path("c/<slug:slug>/lease/<int:assignment_id>/skip/", views.skip, name="skip"),
    path("c/<slug:slug>/lease/<int:assignment_id>/renew/", views.renew, name="renew"),
]

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from annotation import api as annotation_api
from annotation import views as annotation_views

from . import health, login

urlpatterns = [
    path("", include("annotation.urls")),
    path("accounts/login/", login.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # One sign-in, with its limit on failed attempts, for the admin too.
    path("admin/login/", RedirectView.as_view(url="/accounts/login/", query_string=True)),
    path("admin/", admin.site.urls),
    path("api/v1/", include("annotation.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    re_path(r"^api/", annotation_api.not_found),  # after every endpoint: the API's 404
    path("healthz", health.healthz, name="healthz"),
    # No NUL in a name: PostgreSQL text cannot hold one, so the lookup would fail (a 404).
    re_path(r"^media/(?P<name>[^\x00]+)$", annotation_views.media, name="media"),
]

from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from portal.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("portal.accounts.urls")),
    path("healthz", healthz, name="healthz"),
    path("", include("portal.catalog.urls")),
    path("", include("portal.submissions.urls")),
    path("", include("portal.leaderboards.urls")),
    path("", include("portal.analytics.urls")),
    path("", include("portal.lti.urls")),
    path("", include("portal.courses.urls")),
]
if settings.OIDC_ENABLED:  # single sign-on's oidc/ routes, only where it is configured (docs/deployment.md)
    from portal.accounts.oidc import oidc_urlpatterns

    urlpatterns += oidc_urlpatterns()

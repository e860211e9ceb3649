from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from members.api import compat
from netring_site import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("members.api.urls")),
    path("api/v1/", include("probes.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api-auth/", include("rest_framework.urls")),
    path("health", views.health, name="health"),
    path("metrics", views.metrics, name="metrics"),
    # The seed registry's paths, so existing members can point here unchanged.
    path("register", compat.SeedRegisterView.as_view(), name="seed-register"),
    path("heartbeat", compat.SeedHeartbeatView.as_view(), name="seed-heartbeat"),
    path("deregister", compat.SeedDeregisterView.as_view(), name="seed-deregister"),
    path("members", compat.SeedMembersView.as_view(), name="seed-members"),
    path("", include("dashboard.urls")),
]

handler400 = "netring_site.views.bad_request"
handler404 = "netring_site.views.not_found"
handler500 = "netring_site.views.server_error"

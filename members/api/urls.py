from django.urls import path
from rest_framework.routers import DefaultRouter

from members.api import views

router = DefaultRouter()
router.register("locations", views.LocationViewSet, basename="location")
router.register("members", views.MemberViewSet, basename="member")

urlpatterns = [
    path("members/register/", views.RegisterView.as_view(), name="member-register"),
    path("members/heartbeat/", views.HeartbeatView.as_view(), name="member-heartbeat"),
    path("members/deregister/", views.DeregisterView.as_view(), name="member-deregister"),
    *router.urls,
]

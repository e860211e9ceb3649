from django.urls import path
from rest_framework.routers import DefaultRouter

from probes.api import views, views_bandwidth, views_traceroute

router = DefaultRouter()
router.register("prober/targets", views.ProberTargetViewSet, basename="prober-target")

urlpatterns = [
    path("mesh/latest/", views.LatestView.as_view(), name="mesh-latest"),
    path("mesh/matrix/", views.MatrixView.as_view(), name="mesh-matrix"),
    path("mesh/history/", views.HistoryView.as_view(), name="mesh-history"),
    path("prober/samples/", views.SampleView.as_view(), name="prober-samples"),
    path("prober/sla/", views.SlaView.as_view(), name="prober-sla"),
    path("bandwidth/latest/", views_bandwidth.BandwidthLatestView.as_view(), name="bandwidth-latest"),
    path("bandwidth/history/", views_bandwidth.BandwidthHistoryView.as_view(), name="bandwidth-history"),
    path("traceroute/latest/", views_traceroute.TraceLatestView.as_view(), name="traceroute-latest"),
    path("traceroute/history/", views_traceroute.TraceHistoryView.as_view(), name="traceroute-history"),
    path("traceroute/changes/", views_traceroute.PathChangeView.as_view(), name="traceroute-changes"),
    path("traceroute/topology/", views_traceroute.TopologyView.as_view(), name="traceroute-topology"),
    *router.urls,
]

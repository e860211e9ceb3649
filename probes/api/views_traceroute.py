"""The traceroute API: the latest path of every pair, a pair's traces with their hops, path
changes, and the topology of the current paths."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.request import Request
from rest_framework.response import Response

from probes import traceroute_services
from probes.api.serializers import (
    PathChangeSerializer,
    TopologySerializer,
    TraceLatestSerializer,
    TraceRouteSerializer,
)
from probes.api.views import bounded_range
from probes.models import PathChange, PathKind, TraceHop, TraceLatest, TraceRoute, TraceStatus


class PairFilter(django_filters.FilterSet):
    source_location = django_filters.CharFilter()
    target_location = django_filters.CharFilter()
    target_instance = django_filters.UUIDFilter()


class TraceLatestFilter(PairFilter):
    status = django_filters.ChoiceFilter(choices=TraceStatus.choices)

    class Meta:
        model = TraceLatest
        fields = ["source_location", "target_location", "target_instance", "status"]


class TraceHistoryFilter(TraceLatestFilter):
    path_kind = django_filters.ChoiceFilter(choices=[c for c in PathKind.choices if c[0]])
    since = django_filters.IsoDateTimeFilter(field_name="ts", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="ts", lookup_expr="lt")

    class Meta:
        model = TraceRoute
        fields = ["source_location", "target_location", "target_instance", "status", "path_kind", "since", "until"]


class PathChangeFilter(PairFilter):
    since = django_filters.IsoDateTimeFilter(field_name="ts", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="ts", lookup_expr="lt")

    class Meta:
        model = PathChange
        fields = ["source_location", "target_location", "target_instance", "since", "until"]


class TraceLatestView(generics.ListAPIView[TraceLatest]):
    """The latest trace of every (source location, target) with its hops and the route as known."""

    serializer_class = TraceLatestSerializer
    filterset_class = TraceLatestFilter

    def get_queryset(self) -> QuerySet[TraceLatest]:
        return TraceLatest.objects.order_by("source_location", "target_location", "target_ip")


class TraceHistoryView(generics.ListAPIView[TraceRoute]):
    """Traces of a time range with every hop (default: the last 24 hours; at most 31 days), newest
    first. Filter by ``source_location`` and ``target_instance`` for one pair's history."""

    serializer_class = TraceRouteSerializer
    filterset_class = TraceHistoryFilter

    def get_queryset(self) -> QuerySet[TraceRoute]:
        return TraceRoute.objects.order_by("-ts", "-id")

    def filter_queryset(self, queryset: QuerySet[Any, Any]) -> QuerySet[Any, Any]:
        return bounded_range(super().filter_queryset(queryset), self.request.query_params, timedelta(hours=24))

    def get_serializer(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("many") and args:
            args = (list(args[0]), *args[1:])
            attach_hops(args[0])
        return super().get_serializer(*args, **kwargs)


def attach_hops(traces: Sequence[TraceRoute]) -> None:
    """Give each trace its hops (``hop_rows``) with one query, bounded to the traces' days."""
    if not traces:
        return
    by_trace: dict[int, list[TraceHop]] = defaultdict(list)
    hops = TraceHop.objects.filter(
        trace_id__in=[t.id for t in traces],
        ts__gte=min(t.ts for t in traces),
        ts__lte=max(t.ts for t in traces),
    ).order_by("trace_id", "ttl")
    for hop in hops:
        by_trace[hop.trace_id].append(hop)
    for trace in traces:
        trace.hop_rows = by_trace.get(trace.id, [])  # type: ignore[attr-defined]


class PathChangeView(generics.ListAPIView[PathChange]):
    """Route changes, newest first: the old and the new path of a pair and where they differ."""

    serializer_class = PathChangeSerializer
    filterset_class = PathChangeFilter

    def get_queryset(self) -> QuerySet[PathChange]:
        return PathChange.objects.order_by("-ts", "-id")


class TopologyView(generics.GenericAPIView[TraceLatest]):
    """Locations and router hops as nodes, consecutive answering hops as links with the latency
    they add, built from every pair's latest path (filters as for the latest paths)."""

    serializer_class = TopologySerializer
    filterset_class = TraceLatestFilter
    pagination_class = None

    def get_queryset(self) -> QuerySet[TraceLatest]:
        return TraceLatest.objects.order_by("source_location", "target_location", "target_ip")

    @extend_schema(responses=TopologySerializer)
    def get(self, request: Request) -> Response:
        latest = self.filter_queryset(self.get_queryset()).only("source_location", "target_location", "reached", "hops")
        return Response(TopologySerializer(traceroute_services.topology(latest)).data)

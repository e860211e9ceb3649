"""The bandwidth API: the latest test of every pair and direction, and the stored history."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import django_filters
from django.db.models import QuerySet
from django.utils import timezone
from rest_framework import generics

from probes.api.serializers import BandwidthResultSerializer
from probes.api.views import bounded_range
from probes.models import BandwidthDirection, BandwidthResult, BandwidthStatus

LATEST_WITHIN = timedelta(days=2)  # older tests are not "latest": the pair stopped being tested


class BandwidthFilter(django_filters.FilterSet):
    source_location = django_filters.CharFilter()
    target_location = django_filters.CharFilter()
    target_instance = django_filters.UUIDFilter()
    direction = django_filters.ChoiceFilter(choices=BandwidthDirection.choices[:2])
    status = django_filters.ChoiceFilter(choices=BandwidthStatus.choices)

    class Meta:
        model = BandwidthResult
        fields = ["source_location", "target_location", "target_instance", "direction", "status"]


class BandwidthHistoryFilter(BandwidthFilter):
    since = django_filters.IsoDateTimeFilter(field_name="ts", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="ts", lookup_expr="lt")

    class Meta(BandwidthFilter.Meta):
        fields = [*BandwidthFilter.Meta.fields, "since", "until"]


class BandwidthLatestView(generics.ListAPIView[BandwidthResult]):
    """The latest test (ok or failed) of every (source location, target, direction) in the last
    two days; postponed and skipped tests are in the history."""

    serializer_class = BandwidthResultSerializer
    filterset_class = BandwidthFilter

    def get_queryset(self) -> QuerySet[BandwidthResult]:
        pair = ("source_location", "target_instance", "direction")
        return (
            BandwidthResult.objects.filter(
                ts__gte=timezone.now() - LATEST_WITHIN, status__in=[BandwidthStatus.OK, BandwidthStatus.FAILED]
            )
            .order_by(*pair, "-ts")
            .distinct(*pair)
        )


class BandwidthHistoryView(generics.ListAPIView[BandwidthResult]):
    """Tests of a time range (default: the last 24 hours; at most 31 days), newest first,
    postponed and skipped ones included with their reason."""

    serializer_class = BandwidthResultSerializer
    filterset_class = BandwidthHistoryFilter

    def get_queryset(self) -> QuerySet[BandwidthResult]:
        return BandwidthResult.objects.order_by("-ts", "-id")

    def filter_queryset(self, queryset: QuerySet[Any, Any]) -> QuerySet[Any, Any]:
        return bounded_range(super().filter_queryset(queryset), self.request.query_params, timedelta(hours=24))

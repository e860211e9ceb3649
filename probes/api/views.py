"""The mesh API: latest state of every pair, the location matrix, and a pair's history."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import django_filters
from django import forms
from django.db.models import Avg, Count, Max, Min, Q, QuerySet
from django.http import QueryDict
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import generics, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from probes import prober_services
from probes.api.serializers import (
    MatrixCellSerializer,
    MeshLatestSerializer,
    MeshResultSerializer,
    ProberSampleSerializer,
    ProberTargetSerializer,
    SlaQuerySerializer,
)
from probes.models import CheckKind, MeshLatest, MeshResult, ProberSample, ProberTarget

MAX_HISTORY = timedelta(days=31)
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


class StrictBooleanField(forms.Field):
    """``true``/``false`` (or 1/0). Django's boolean filters read any other word as "not given",
    so ``failures=ture`` would silently list everything; here it is a 400."""

    widget = forms.TextInput

    def to_python(self, value: object) -> bool | None:
        if value in (None, ""):
            return None
        try:
            return _BOOLEANS[str(value).strip().lower()]
        except KeyError:
            raise forms.ValidationError("expected true or false", code="invalid") from None


@extend_schema_field(OpenApiTypes.BOOL)
class StrictBooleanFilter(django_filters.BooleanFilter):
    field_class = StrictBooleanField


class MeshFilter(django_filters.FilterSet):
    source_location = django_filters.CharFilter()
    target_location = django_filters.CharFilter()
    target_instance = django_filters.UUIDFilter()
    kind = django_filters.ChoiceFilter(choices=CheckKind.choices)
    failures = StrictBooleanFilter(method="only_failures", help_text="true: failed checks only")

    def only_failures(self, queryset: QuerySet[MeshLatest], name: str, value: bool | None) -> QuerySet[MeshLatest]:
        return queryset.filter(ok=False) if value else queryset


class LatestFilter(MeshFilter):
    class Meta:
        model = MeshLatest
        fields = ["source_location", "target_location", "target_instance", "kind", "failures"]


class LatestView(generics.ListAPIView[MeshLatest]):
    """The latest result of every (source location, target, check): one indexed table."""

    serializer_class = MeshLatestSerializer
    filterset_class = LatestFilter

    def get_queryset(self) -> QuerySet[MeshLatest]:
        return MeshLatest.objects.order_by("source_location", "target_location", "target_instance", "kind", "endpoint")


class MatrixView(generics.GenericAPIView[MeshLatest]):
    """Location x location summary of the latest results: one GROUP BY, whatever the mesh size."""

    serializer_class = MatrixCellSerializer
    filterset_class = LatestFilter
    pagination_class = None

    def get_queryset(self) -> QuerySet[MeshLatest]:
        return MeshLatest.objects.all()

    def get(self, request: Request) -> Response:
        cells = (
            self.filter_queryset(self.get_queryset())
            .values("source_location", "target_location", "kind")
            .annotate(
                checks=Count("pk"),
                failed=Count("pk", filter=Q(ok=False)),
                latency_ms_avg=Avg("latency_ms"),
                latency_ms_max=Max("latency_ms"),
                loss_ratio_max=Max("loss_ratio"),
                ts=Min("ts"),
            )
            .order_by("source_location", "target_location", "kind")
        )
        return Response(MatrixCellSerializer(cells, many=True).data)


class HistoryFilter(MeshFilter):
    since = django_filters.IsoDateTimeFilter(field_name="ts", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="ts", lookup_expr="lt")
    endpoint = django_filters.CharFilter()

    class Meta:
        model = MeshResult
        fields = [
            "source_location",
            "target_location",
            "target_instance",
            "kind",
            "endpoint",
            "failures",
            "since",
            "until",
        ]


def bounded_range(queryset: QuerySet[Any, Any], params: QueryDict, default_span: timedelta) -> QuerySet[Any, Any]:
    """``since``/``until`` on ``ts``, defaulting to the last ``default_span`` and spanning at most
    ``MAX_HISTORY``, so a query of a partitioned table touches only the partitions it needs."""
    now = timezone.now()
    since = _bound(params.get("since"), now - default_span)
    until = _bound(params.get("until"), now + timedelta(minutes=1))
    if until - since > MAX_HISTORY:
        raise ValidationError({"since": [f"the range may span at most {MAX_HISTORY.days} days"]})
    return queryset.filter(ts__gte=since, ts__lt=until)


def _bound(value: str | None, default: datetime) -> datetime:
    if not value:
        return default
    parsed = django_filters.fields.IsoDateTimeField().clean(value)
    return parsed if parsed is not None else default


class HistoryView(generics.ListAPIView[MeshResult]):
    """Results of a time range (default: the last hour; at most 31 days), newest first."""

    serializer_class = MeshResultSerializer
    filterset_class = HistoryFilter

    def get_queryset(self) -> QuerySet[MeshResult]:
        return MeshResult.objects.order_by("-ts", "-id")

    def filter_queryset(self, queryset: QuerySet[Any, Any]) -> QuerySet[Any, Any]:
        return bounded_range(super().filter_queryset(queryset), self.request.query_params, timedelta(hours=1))


class ProberTargetViewSet(viewsets.ModelViewSet[ProberTarget]):
    """Targets of the 1 Hz prober; staff users add and edit them (probers reload within 10 s)."""

    serializer_class = ProberTargetSerializer
    filterset_fields = ["enabled", "group"]

    def get_queryset(self) -> QuerySet[ProberTarget]:
        return ProberTarget.objects.prefetch_related("locations").order_by("name")


class SampleFilter(django_filters.FilterSet):
    location = django_filters.CharFilter()
    source = django_filters.CharFilter()
    since = django_filters.IsoDateTimeFilter(field_name="ts", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="ts", lookup_expr="lt")
    failures = StrictBooleanFilter(method="only_failures")

    class Meta:
        model = ProberSample
        fields = ["location", "source", "since", "until", "failures"]

    def only_failures(self, queryset: QuerySet[ProberSample], name: str, value: bool | None) -> QuerySet[ProberSample]:
        return queryset.filter(ok=False) if value else queryset


class SampleView(generics.ListAPIView[ProberSample]):
    """Prober samples, newest first (default: the last 10 minutes)."""

    serializer_class = ProberSampleSerializer
    filterset_class = SampleFilter

    def get_queryset(self) -> QuerySet[ProberSample]:
        return ProberSample.objects.order_by("-ts", "source")

    def filter_queryset(self, queryset: QuerySet[Any, Any]) -> QuerySet[Any, Any]:
        queryset = super().filter_queryset(queryset)
        if "since" not in self.request.query_params:
            queryset = queryset.filter(ts__gte=timezone.now() - timedelta(minutes=10))
        return queryset


class SlaView(generics.GenericAPIView[ProberSample]):
    """Uptime, downtime events, per-source availability and phase percentiles for a range."""

    serializer_class = SlaQuerySerializer
    pagination_class = None
    filter_backends = ()

    @extend_schema(parameters=[SlaQuerySerializer])
    def get(self, request: Request) -> Response:
        query = SlaQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        q = query.validated_data
        scope = prober_services.SlaScope(q["start"], q["end"], q.get("location"), q.get("source"), q.get("group"))
        return Response(prober_services.sla_report(scope, merge_unknown_gap=q["merge_unknown_gap"]))

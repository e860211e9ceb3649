from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from members.models import Location
from probes.models import (
    BandwidthResult,
    MeshLatest,
    MeshResult,
    PathChange,
    ProberSample,
    ProberTarget,
    TraceHop,
    TraceLatest,
    TraceRoute,
)

_RESULT_FIELDS = [
    "ts",
    "round_id",
    "source_location",
    "source_instance",
    "target_location",
    "target_instance",
    "target_ip",
    "target_port",
    "kind",
    "endpoint",
    "ok",
    "latency_ms",
    "error_class",
    "error",
    "status_code",
    "dns_ms",
    "connect_ms",
    "tls_ms",
    "ttfb_ms",
    "total_ms",
    "rtt_min_ms",
    "rtt_avg_ms",
    "rtt_max_ms",
    "loss_ratio",
    "jitter_ms",
    "packets_sent",
    "packets_received",
]


class MeshLatestSerializer(serializers.ModelSerializer[MeshLatest]):
    class Meta:
        model = MeshLatest
        fields = _RESULT_FIELDS
        read_only_fields = fields


class MeshResultSerializer(serializers.ModelSerializer[MeshResult]):
    class Meta:
        model = MeshResult
        fields = _RESULT_FIELDS
        read_only_fields = fields


class MatrixCellSerializer(serializers.Serializer[Any]):
    source_location = serializers.CharField()
    target_location = serializers.CharField()
    kind = serializers.CharField()
    checks = serializers.IntegerField(help_text="latest results in this cell (targets x endpoints)")
    failed = serializers.IntegerField()
    latency_ms_avg = serializers.FloatField(allow_null=True)
    latency_ms_max = serializers.FloatField(allow_null=True)
    loss_ratio_max = serializers.FloatField(allow_null=True)
    ts = serializers.DateTimeField(help_text="start of the oldest round in the cell")


class ProberTargetSerializer(serializers.ModelSerializer[ProberTarget]):
    locations = serializers.SlugRelatedField(
        slug_field="name", many=True, queryset=Location.objects.all(), required=False
    )

    class Meta:
        model = ProberTarget
        fields = [
            "id",
            "name",
            "url",
            "enabled",
            "group",
            "locations",
            "timeout_s",
            "follow_redirects",
            "expected_status",
            "verify_tls",
            "updated_at",
        ]
        read_only_fields = ["id", "updated_at"]

    def validate_url(self, value: str) -> str:
        if not value.lower().startswith(("http://", "https://")):
            raise serializers.ValidationError("only http:// and https:// URLs are probed")
        return value


class ProberSampleSerializer(serializers.ModelSerializer[ProberSample]):
    class Meta:
        model = ProberSample
        fields = [
            "ts",
            "probe_id",
            "location",
            "source",
            "target_id",
            "ok",
            "disconnected",
            "status",
            "error_class",
            "error",
            "dns_ms",
            "connect_ms",
            "tls_ms",
            "ttfb_ms",
            "total_ms",
        ]
        read_only_fields = fields


class SlaQuerySerializer(serializers.Serializer[Any]):
    start = serializers.DateTimeField(required=False, help_text="default: 24 hours before end")
    end = serializers.DateTimeField(required=False, help_text="default: now")
    location = serializers.CharField(required=False, max_length=63)
    # A field named like Field.source: fine for DRF's metaclass, not for the stubs.
    source = serializers.CharField(required=False, max_length=2000)  # type: ignore[assignment]
    group = serializers.CharField(required=False, max_length=63)
    merge_unknown_gap = serializers.IntegerField(required=False, min_value=0, max_value=3600, default=0)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        end = attrs.get("end") or timezone.now().replace(microsecond=0)
        try:
            start = attrs.get("start") or end - timedelta(hours=24)
        except OverflowError:  # end=0001-01-01T00:00Z
            raise serializers.ValidationError({"end": "end is out of range"}) from None
        if start >= end:
            raise serializers.ValidationError({"start": "start must be before end"})
        if end - start > timedelta(days=31):
            raise serializers.ValidationError({"start": "the range may span at most 31 days"})
        attrs["start"], attrs["end"] = start, end
        return attrs


# --- Bandwidth ------------------------------------------------------------------------------


class BandwidthResultSerializer(serializers.ModelSerializer[BandwidthResult]):
    class Meta:
        model = BandwidthResult
        fields = [
            "ts",
            "round_id",
            "slot",
            "attempt",
            "source_location",
            "source_instance",
            "target_location",
            "target_instance",
            "target_ip",
            "target_port",
            "direction",
            "status",
            "mbps",
            "bytes_total",
            "bytes_measured",
            "duration_s",
            "transfer_s",
            "window_s",
            "omitted_s",
            "stable",
            "ended_by",
            "rtt_ms",
            "error_class",
            "error",
        ]
        read_only_fields = fields


# --- Traceroute -----------------------------------------------------------------------------

_HOP_FIELDS = [
    "ttl",
    "address",
    "addresses",
    "reply",
    "sent",
    "received",
    "loss",
    "rtt_min_ms",
    "rtt_avg_ms",
    "rtt_max_ms",
    "added_ms",
    "added_from_ttl",
]
_TRACE_FIELDS = [
    "ts",
    "round_id",
    "source_location",
    "source_instance",
    "target_location",
    "target_instance",
    "target_ip",
    "status",
    "reason",
    "reached",
    "hop_count",
    "bottleneck_ttl",
    "bottleneck_address",
    "bottleneck_added_ms",
    "max_hop_latency_ms",
    "fingerprint",
    "path",
    "path_kind",
    "deadline_hit",
    "duration_s",
]


class TraceHopSerializer(serializers.ModelSerializer[TraceHop]):
    """One TTL of a trace; ``address`` null is a silent hop. Serves stored rows and the hops
    kept with the latest trace of a pair alike."""

    addresses = serializers.ListField(child=serializers.IPAddressField(), read_only=True)

    class Meta:
        model = TraceHop
        fields = _HOP_FIELDS
        read_only_fields = fields


class TraceRouteSerializer(serializers.ModelSerializer[TraceRoute]):
    path = serializers.ListField(child=serializers.IPAddressField(allow_null=True), read_only=True)
    hops = TraceHopSerializer(many=True, read_only=True, source="hop_rows")

    class Meta:
        model = TraceRoute
        fields = ["id", *_TRACE_FIELDS, "hops"]
        read_only_fields = fields


class TraceLatestSerializer(serializers.ModelSerializer[TraceLatest]):
    path = serializers.ListField(child=serializers.IPAddressField(allow_null=True), read_only=True)
    hops = TraceHopSerializer(many=True, read_only=True)
    route = serializers.ListField(
        child=serializers.IPAddressField(allow_null=True),
        read_only=True,
        allow_null=True,
        help_text="the route as known: the last complete path, silent hops filled in from earlier traces",
    )

    class Meta:
        model = TraceLatest
        fields = ["trace_id", *_TRACE_FIELDS, "hops", "route", "route_fingerprint", "route_since"]
        read_only_fields = fields


class PathChangeSerializer(serializers.ModelSerializer[PathChange]):
    old_path = serializers.ListField(child=serializers.IPAddressField(allow_null=True), read_only=True)
    new_path = serializers.ListField(child=serializers.IPAddressField(allow_null=True), read_only=True)

    class Meta:
        model = PathChange
        fields = [
            "id",
            "ts",
            "source_location",
            "source_instance",
            "target_location",
            "target_instance",
            "target_ip",
            "kind",
            "first_ttl",
            "description",
            "old_fingerprint",
            "old_path",
            "old_since",
            "new_fingerprint",
            "new_path",
            "trace_id",
        ]
        read_only_fields = fields


class TopologyNodeSerializer(serializers.Serializer[Any]):
    id = serializers.CharField(help_text="'location:<name>' or 'router:<address>'")
    kind = serializers.ChoiceField(choices=["location", "router"])
    name = serializers.CharField(help_text="the location name or the router address")


class TopologyLinkSerializer(serializers.Serializer[Any]):
    # The node ids at each end; named like graph libraries expect them.
    source = serializers.CharField()  # type: ignore[assignment]
    target = serializers.CharField()
    added_ms = serializers.FloatField(
        allow_null=True, help_text="median added latency of the hop the link leads to, over the paths using it"
    )
    added_ms_max = serializers.FloatField(allow_null=True)
    silent_hops = serializers.IntegerField(help_text="silent hops between the two ends (on some path)")
    pairs = serializers.IntegerField(help_text="current paths that use this link")


class TopologySerializer(serializers.Serializer[Any]):
    nodes = TopologyNodeSerializer(many=True)
    links = TopologyLinkSerializer(many=True)

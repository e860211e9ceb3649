"""Results of the mesh checks.

``MeshResult`` is the history, range-partitioned by day on ``ts`` (see ``probes.partitions``):
its primary key in PostgreSQL is ``(ts, id)`` because a partitioned table's key must contain
the partition column; Django only needs ``id`` to be unique, which it is. ``MeshLatest`` holds
one row per (source location, target, check) and is upserted each round, so the matrix the
dashboard asks for every few seconds is an index scan of a small table, not a DISTINCT ON over
the history.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from probes import partitions
from probes.checks.http import StatusRange


class CheckKind(models.TextChoices):
    TCP = "tcp"
    HTTP = "http"
    ICMP = "icmp"


class CheckFields(models.Model):
    """The measured part, shared by history and latest rows (the one result shape)."""

    kind = models.CharField(max_length=8, choices=CheckKind.choices)
    endpoint = models.CharField(max_length=200, blank=True)
    target_ip = models.GenericIPAddressField()
    target_port = models.PositiveIntegerField(null=True)
    ok = models.BooleanField()
    latency_ms = models.FloatField(null=True)
    error_class = models.CharField(max_length=16, blank=True)
    error = models.CharField(max_length=300, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True)
    dns_ms = models.FloatField(null=True)
    connect_ms = models.FloatField(null=True)
    tls_ms = models.FloatField(null=True)
    ttfb_ms = models.FloatField(null=True)
    total_ms = models.FloatField(null=True)
    rtt_min_ms = models.FloatField(null=True)
    rtt_avg_ms = models.FloatField(null=True)
    rtt_max_ms = models.FloatField(null=True)
    loss_ratio = models.FloatField(null=True)
    jitter_ms = models.FloatField(null=True)
    packets_sent = models.PositiveSmallIntegerField(null=True)
    packets_received = models.PositiveSmallIntegerField(null=True)

    class Meta:
        abstract = True


class MeshResult(CheckFields):
    id = models.BigAutoField(primary_key=True)
    ts = models.DateTimeField(help_text="when the round started on the source")
    round_id = models.BigIntegerField(help_text="dispatch round: interval number since the epoch")
    source_location = models.CharField(max_length=63)
    source_instance = models.UUIDField()
    target_location = models.CharField(max_length=63)
    target_instance = models.UUIDField()

    class Meta:
        db_table = partitions.register("probes_meshresult")
        indexes = [
            models.Index(fields=["source_location", "target_instance", "kind", "ts"], name="mesh_pair_ts"),
            models.Index(fields=["ts"], name="mesh_ts"),
        ]

    def __str__(self) -> str:
        return f"{self.source_location} -> {self.target_instance} {self.kind}{self.endpoint} @ {self.ts}"


class MeshLatest(CheckFields):
    ts = models.DateTimeField()
    round_id = models.BigIntegerField()
    source_location = models.CharField(max_length=63)
    source_instance = models.UUIDField()
    target_location = models.CharField(max_length=63)
    target_instance = models.UUIDField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["source_location", "target_instance", "kind", "endpoint"], name="mesh_latest_pair"
            ),
        ]
        indexes = [models.Index(fields=["target_location"], name="mesh_latest_target_loc")]

    def __str__(self) -> str:
        return f"{self.source_location} -> {self.target_instance} {self.kind}{self.endpoint}"


def validate_status_range(value: str) -> None:
    try:
        StatusRange.parse(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from exc


class ProberTarget(models.Model):
    """An outside endpoint the 1 Hz prober of each location fetches every second."""

    name = models.CharField(max_length=100, unique=True)
    url = models.URLField(max_length=2000, help_text="http:// or https:// URL fetched every second")
    enabled = models.BooleanField(default=True)
    group = models.CharField(max_length=63, blank=True, default="", help_text="SLA group (e.g. 'internet'); optional")
    locations = models.ManyToManyField(
        "members.Location",
        blank=True,
        related_name="prober_targets",
        help_text="Locations that probe this target; none selected means every location.",
    )
    timeout_s = models.FloatField(default=1.5, validators=[MinValueValidator(0.1), MaxValueValidator(30)])
    follow_redirects = models.BooleanField(default=True)
    expected_status = models.CharField(
        max_length=100,
        default="200-399",
        validators=[validate_status_range],
        help_text="Statuses that count as success, e.g. 200-399 or 200,204",
    )
    verify_tls = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ProberSample(models.Model):
    """One fetch of one target in one tick (the seed's row), partitioned by day on ``ts``.

    ``(location, source, probe_id, ts)`` is unique, so replaying a spool after an outage inserts
    what is missing and skips what is there (``ON CONFLICT DO NOTHING``).
    """

    id = models.BigAutoField(primary_key=True)
    ts = models.DateTimeField(help_text="scheduled start of the tick")
    probe_id = models.BigIntegerField(help_text="the probe group: one per tick, increasing per location")
    location = models.CharField(max_length=63)
    source = models.CharField(max_length=2000, help_text="the URL fetched")
    target_id = models.IntegerField(null=True)
    ok = models.BooleanField()
    disconnected = models.BooleanField(help_text="no HTTP answer at all (DNS, connect, TLS, timeout)")
    status = models.PositiveSmallIntegerField(null=True)
    error_class = models.CharField(max_length=16, blank=True)
    error = models.CharField(max_length=300, blank=True)
    dns_ms = models.FloatField(null=True)
    connect_ms = models.FloatField(null=True)
    tls_ms = models.FloatField(null=True)
    ttfb_ms = models.FloatField(null=True)
    total_ms = models.FloatField(null=True)

    class Meta:
        db_table = partitions.register("probes_probersample")
        constraints = [
            models.UniqueConstraint(fields=["location", "source", "probe_id", "ts"], name="prober_sample_key"),
        ]
        indexes = [
            models.Index(fields=["location", "ts"], name="prober_location_ts"),
            models.Index(fields=["source", "ts"], name="prober_source_ts"),
            models.Index(fields=["ts"], name="prober_ts"),
        ]

    def __str__(self) -> str:
        return f"{self.location} {self.source} #{self.probe_id}"


# --- Bandwidth tests ----------------------------------------------------------------------------


class BandwidthStatus(models.TextChoices):
    OK = "ok"
    FAILED = "failed"  # the test ran and produced no rate (error_class and error say why)
    POSTPONED = "postponed"  # a member was busy; the test was queued again
    SKIPPED = "skipped"  # still busy at the end of its interval (or out of retries): not run


class BandwidthDirection(models.TextChoices):
    DOWNLOAD = "download"  # the target sends, the source receives
    UPLOAD = "upload"  # the source sends, the target receives
    BOTH = ""  # a postponed or skipped test: neither direction ran


class BandwidthResult(models.Model):
    """One direction of one bandwidth test (or a test that was postponed or skipped), by day on ``ts``.

    ``mbps`` is goodput: application payload bits per second (10^6) over the steady window,
    after the warm-up (slow start, a shaper's burst) is left out; it is never 0 for a failed
    test but NULL with the reason.
    """

    id = models.BigAutoField(primary_key=True)
    ts = models.DateTimeField(help_text="when this direction's transfer started (postponed: when it was refused)")
    round_id = models.BigIntegerField(help_text="dispatch round: interval number since the epoch")
    slot = models.PositiveIntegerField(help_text="slot of the round's pairing schedule")
    attempt = models.PositiveSmallIntegerField(default=0, help_text="0 = on schedule; n = after n postponements")
    source_location = models.CharField(max_length=63)
    source_instance = models.UUIDField(help_text="the edge worker that ran the test")
    target_location = models.CharField(max_length=63)
    target_instance = models.UUIDField()
    target_ip = models.GenericIPAddressField()
    target_port = models.PositiveIntegerField()
    direction = models.CharField(max_length=8, choices=BandwidthDirection.choices, blank=True)
    status = models.CharField(max_length=10, choices=BandwidthStatus.choices)
    mbps = models.FloatField(null=True, help_text="goodput over the steady window, Mbit/s (10^6)")
    bytes_total = models.BigIntegerField(default=0)
    bytes_measured = models.BigIntegerField(default=0, help_text="payload bytes inside the window")
    duration_s = models.FloatField(null=True, help_text="configured duration of the transfer")
    transfer_s = models.FloatField(null=True, help_text="first to last payload byte")
    window_s = models.FloatField(null=True)
    omitted_s = models.FloatField(null=True, help_text="warm-up left out of the rate")
    stable = models.BooleanField(default=False, help_text="a steady rate was found early in the transfer")
    ended_by = models.CharField(max_length=10, blank=True)
    rtt_ms = models.FloatField(null=True, help_text="TCP connect time")
    error_class = models.CharField(max_length=16, blank=True)
    error = models.CharField(max_length=300, blank=True)

    class Meta:
        db_table = partitions.register("probes_bandwidthresult")
        indexes = [
            models.Index(fields=["source_location", "target_instance", "direction", "ts"], name="bw_pair_ts"),
            models.Index(fields=["target_location", "ts"], name="bw_target_loc_ts"),
            models.Index(fields=["ts"], name="bw_ts"),
        ]

    def __str__(self) -> str:
        return f"{self.source_location} -> {self.target_instance} {self.direction or self.status} @ {self.ts}"


# --- Traceroute ---------------------------------------------------------------------------------


class TraceStatus(models.TextChoices):
    OK = "ok"  # the destination answered
    UNREACHED = "unreached"  # traced, but the destination never answered
    UNAVAILABLE = "unavailable"  # could not trace at all here (no raw socket privilege)
    ERROR = "error"


class PathKind(models.TextChoices):
    UNKNOWN = ""  # not compared: the trace did not reach the destination
    FIRST = "first"  # the pair's first complete path
    SAME = "same"
    SILENCE = "silence"  # same route; only which routers answered differs: not a path change
    REROUTED = "rerouted"  # a path change: a PathChange row exists


class TraceFields(models.Model):
    """What one trace found, shared by the history and the latest row of a pair."""

    source_location = models.CharField(max_length=63)
    source_instance = models.UUIDField()
    target_location = models.CharField(max_length=63)
    target_instance = models.UUIDField()
    target_ip = models.GenericIPAddressField()
    status = models.CharField(max_length=12, choices=TraceStatus.choices)
    reason = models.CharField(max_length=300, blank=True)
    reached = models.BooleanField(default=False)
    hop_count = models.PositiveSmallIntegerField(null=True, help_text="rows traced; the distance when reached")
    bottleneck_ttl = models.PositiveSmallIntegerField(null=True)
    bottleneck_address = models.GenericIPAddressField(null=True)
    bottleneck_added_ms = models.FloatField(null=True, help_text="the largest latency one hop adds")
    max_hop_latency_ms = models.FloatField(null=True, help_text="the largest average RTT of any hop")
    fingerprint = models.CharField(max_length=64, blank=True)
    path = models.JSONField(default=list, help_text="hop addresses in TTL order, null for a silent hop")
    path_kind = models.CharField(max_length=8, choices=PathKind.choices, blank=True)
    deadline_hit = models.BooleanField(default=False)
    duration_s = models.FloatField(null=True)

    class Meta:
        abstract = True


class TraceRoute(TraceFields):
    """One traceroute from a location to a member, partitioned by day on ``ts``; hops in TraceHop."""

    id = models.BigAutoField(primary_key=True)
    ts = models.DateTimeField(help_text="when the trace started")
    round_id = models.BigIntegerField()

    class Meta:
        db_table = partitions.register("probes_traceroute")
        indexes = [
            models.Index(fields=["source_location", "target_instance", "ts"], name="trace_pair_ts"),
            models.Index(fields=["ts"], name="trace_ts"),
        ]

    def __str__(self) -> str:
        return f"{self.source_location} -> {self.target_ip} {self.status} @ {self.ts}"


class TraceHop(models.Model):
    """One TTL of one trace, silent hops included (``address`` NULL); same ``ts`` as its trace."""

    id = models.BigAutoField(primary_key=True)
    ts = models.DateTimeField(help_text="the trace's ts (the partition key)")
    trace_id = models.BigIntegerField(help_text="TraceRoute.id (no foreign key into a partitioned table)")
    ttl = models.PositiveSmallIntegerField()
    address = models.GenericIPAddressField(null=True, help_text="NULL: nobody answered at this TTL")
    addresses = models.JSONField(default=list, help_text="every responder at this TTL, most frequent first")
    reply = models.CharField(max_length=16, blank=True)
    sent = models.PositiveSmallIntegerField()
    received = models.PositiveSmallIntegerField()
    loss = models.FloatField()
    rtt_min_ms = models.FloatField(null=True)
    rtt_avg_ms = models.FloatField(null=True)
    rtt_max_ms = models.FloatField(null=True)
    added_ms = models.FloatField(null=True, help_text="avg RTT minus the previous answering hop's")
    added_from_ttl = models.PositiveSmallIntegerField(null=True)

    class Meta:
        db_table = partitions.register("probes_tracehop")
        indexes = [models.Index(fields=["trace_id", "ttl"], name="trace_hop_trace")]

    def __str__(self) -> str:
        return f"trace {self.trace_id} hop {self.ttl} {self.address or '*'}"


class TraceLatest(TraceFields):
    """The latest trace of each (source location, target) with its hops, and the route as known.

    ``route`` is the reference path changes are detected against: the last complete path, with
    hops that went silent since filled in from earlier traces (a router that skips answering
    has not moved). ``route_since`` is when that route was first seen.
    """

    ts = models.DateTimeField()
    round_id = models.BigIntegerField()
    trace_id = models.BigIntegerField()
    hops = models.JSONField(default=list, help_text="the hops of the latest trace, as TraceHop fields")
    route = models.JSONField(null=True, help_text="the route as known, null before the first complete trace")
    route_fingerprint = models.CharField(max_length=64, blank=True)
    route_since = models.DateTimeField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source_location", "target_instance"], name="trace_latest_pair"),
        ]
        indexes = [models.Index(fields=["target_location"], name="trace_latest_target_loc")]

    def __str__(self) -> str:
        return f"{self.source_location} -> {self.target_ip}"


class PathChange(models.Model):
    """The route from a location to a member changed between two complete traces."""

    ts = models.DateTimeField(help_text="when the trace that saw the new path started")
    source_location = models.CharField(max_length=63)
    source_instance = models.UUIDField()
    target_location = models.CharField(max_length=63)
    target_instance = models.UUIDField()
    target_ip = models.GenericIPAddressField()
    old_fingerprint = models.CharField(max_length=64)
    old_path = models.JSONField(help_text="the route as known before (silent hops filled in from earlier traces)")
    old_since = models.DateTimeField(null=True, help_text="when the old route was first seen")
    new_fingerprint = models.CharField(max_length=64)
    new_path = models.JSONField()
    kind = models.CharField(max_length=8, choices=PathKind.choices, default=PathKind.REROUTED)
    first_ttl = models.PositiveSmallIntegerField(null=True, help_text="first TTL where the paths differ")
    description = models.CharField(max_length=500)
    trace_id = models.BigIntegerField(help_text="the TraceRoute that saw the new path")

    class Meta:
        indexes = [
            models.Index(fields=["source_location", "target_instance", "ts"], name="path_change_pair_ts"),
            models.Index(fields=["ts"], name="path_change_ts"),
        ]

    def __str__(self) -> str:
        return f"{self.source_location} -> {self.target_ip} @ {self.ts}: {self.description}"

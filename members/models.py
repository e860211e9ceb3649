"""Locations and the members that run in them."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Case, Count, ExpressionWrapper, F, Q, Value, When
from django.db.models.functions import Greatest
from django.utils import timezone

from members.status import Status, Thresholds, member_status
from netring_site.config import LOCATION_NAME

location_name_validator = RegexValidator(
    rf"^{LOCATION_NAME}$",
    "A location name is 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit.",
)


def thresholds() -> Thresholds:
    return Thresholds(settings.NETRING_STALE_AFTER, settings.NETRING_OFFLINE_AFTER)


class LocationQuerySet(models.QuerySet["Location"]):
    def with_member_counts(self, now: datetime | None = None) -> LocationQuerySet:
        """Annotate ``members_online``, ``members_present`` (online or stale) and ``members_missing``
        (expected but not present), in the same query as the locations."""
        now = now or timezone.now()
        limits = thresholds()
        alive = Q(members__deregistered_at__isnull=True)
        return self.annotate(
            members_online=Count(
                "members", filter=alive & Q(members__last_seen__gt=now - timedelta(seconds=limits.stale_after))
            ),
            members_present=Count(
                "members", filter=alive & Q(members__last_seen__gt=now - timedelta(seconds=limits.offline_after))
            ),
        ).annotate(
            members_missing=Greatest(
                ExpressionWrapper(F("expected_members") - F("members_present"), output_field=models.IntegerField()),
                Value(0),
            )
        )


class Location(models.Model):
    class Criticality(models.TextChoices):
        LOW = "low"
        NORMAL = "normal"
        HIGH = "high"
        CRITICAL = "critical"

    name = models.CharField(max_length=63, unique=True, validators=[location_name_validator])
    description = models.CharField(max_length=200, blank=True)
    expected_members = models.PositiveIntegerField(
        default=0, help_text="How many members should run here; fewer online or stale ones are 'missing'."
    )
    criticality = models.CharField(max_length=10, choices=Criticality.choices, default=Criticality.NORMAL)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = LocationQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class MemberQuerySet(models.QuerySet["Member"]):
    def with_status(self, now: datetime | None = None) -> MemberQuerySet:
        """Annotate ``status`` in SQL, so lists filter and count by status without Python loops."""
        now = now or timezone.now()
        limits = thresholds()
        return self.annotate(
            status=Case(
                When(deregistered_at__isnull=False, then=Value(Status.DEREGISTERED.value)),
                When(last_seen__gt=now - timedelta(seconds=limits.stale_after), then=Value(Status.ONLINE.value)),
                When(last_seen__gt=now - timedelta(seconds=limits.offline_after), then=Value(Status.STALE.value)),
                default=Value(Status.OFFLINE.value),
                output_field=models.CharField(),
            )
        )

    def active(self, now: datetime | None = None) -> MemberQuerySet:
        """Members worth probing: online or stale."""
        now = now or timezone.now()
        return self.filter(
            deregistered_at__isnull=True, last_seen__gt=now - timedelta(seconds=thresholds().offline_after)
        )

    def in_status(self, status: str, now: datetime | None = None) -> MemberQuerySet:
        return self.with_status(now).filter(status=status)  # type: ignore[misc]  # an annotation, unseen by the stubs


class Member(models.Model):
    class Kind(models.TextChoices):
        EDGE = "edge", "Celery edge worker"
        API = "api", "API member (probed only)"

    instance_id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    location = models.ForeignKey(Location, on_delete=models.PROTECT, related_name="members")
    ip = models.GenericIPAddressField(unpack_ipv4=True)
    port = models.PositiveIntegerField(default=8757, validators=[MinValueValidator(1), MaxValueValidator(65535)])
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.API)
    hostname = models.CharField(max_length=253, blank=True)
    version = models.CharField(max_length=64, blank=True)
    # SHA-256 of the member's secret: a database leak does not leak working tokens.
    token_hash = models.CharField(max_length=64, blank=True, editable=False)
    # Registered without the enrollment token (NETRING_OPEN_ENROLLMENT): only such a member may
    # be heartbeaten or deregistered by its instance id alone, as the seed's members do; one
    # that enrolled with the token is reached with its own token only, open enrollment or not.
    enrolled_openly = models.BooleanField(default=False, editable=False)
    registered_at = models.DateTimeField(default=timezone.now)
    # Not indexed, on purpose: a heartbeat changes only this column, and with no index on it
    # PostgreSQL updates the row in place (a HOT update, no index writes), which is what lets
    # the registry take thousands of heartbeats a second. Status queries scan the members
    # (tens of thousands of rows at most), which costs milliseconds.
    last_seen = models.DateTimeField(default=timezone.now)
    deregistered_at = models.DateTimeField(null=True, blank=True)

    objects = MemberQuerySet.as_manager()

    class Meta:
        ordering = ["location__name", "ip", "port"]
        constraints = [
            models.CheckConstraint(condition=Q(port__gte=1) & Q(port__lte=65535), name="member_port_range"),
        ]

    def __str__(self) -> str:
        return f"{self.location.name}/{self.ip}:{self.port}"

    def status_at(self, now: datetime | None = None) -> Status:
        return member_status(self.last_seen, self.deregistered_at, now or timezone.now(), thresholds())

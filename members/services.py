"""Registry operations: register, heartbeat, deregister, housekeeping.

Views, the admin and tasks call these; they hold no HTTP or Celery concerns.
"""

from __future__ import annotations

import enum
import ipaddress
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from members import tokens
from members.models import Location, Member
from members.status import Status


class RegistrationRefused(Exception):
    """The registration is well-formed but policy refuses it (network, location)."""


@dataclass(frozen=True)
class Registration:
    member: Member
    token: tokens.MemberToken
    created: bool


def address_allowed(ip: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """True when no networks are configured or ``ip`` lies in one of them."""
    if not networks:
        return True
    address = ipaddress.ip_address(ip)
    return any(address in network for network in networks)


def register(
    *,
    location: str,
    ip: str,
    port: int,
    instance_id: uuid.UUID | None = None,
    kind: str = Member.Kind.API,
    hostname: str = "",
    version: str = "",
    enrolled_openly: bool = False,
) -> Registration:
    """Create a member, or take back an existing instance id (a restart) with a fresh token.

    Re-registration revokes the previous token: only the process that registered last can
    heartbeat, so two processes that share an instance id by mistake show up as a flapping
    member instead of silently masking each other.
    """
    if not address_allowed(ip, settings.NETRING_ALLOWED_MEMBER_NETWORKS):
        raise RegistrationRefused(f"address {ip} is outside NETRING_ALLOWED_MEMBER_NETWORKS")
    now = timezone.now()
    with transaction.atomic():
        place = Location.objects.filter(name=location).first()
        if place is None:
            if not settings.NETRING_AUTO_CREATE_LOCATIONS:
                raise RegistrationRefused(f"unknown location {location!r} (NETRING_AUTO_CREATE_LOCATIONS is off)")
            place, _ = Location.objects.get_or_create(name=location)
        instance_id = instance_id or uuid.uuid4()
        token = tokens.new_token(instance_id)
        member, created = Member.objects.select_for_update().get_or_create(
            instance_id=instance_id,
            defaults={
                "location": place,
                "ip": ip,
                "port": port,
                "kind": kind,
                "hostname": hostname,
                "version": version,
                "token_hash": token.hash,
                "enrolled_openly": enrolled_openly,
                "registered_at": now,
                "last_seen": now,
            },
        )
        if not created:
            member.location = place
            member.ip, member.port, member.kind = ip, port, kind
            member.hostname, member.version = hostname, version
            member.token_hash, member.enrolled_openly = token.hash, enrolled_openly
            member.registered_at = member.last_seen = now
            member.deregistered_at = None
            member.save()
    return Registration(member, token, created)


class Beat(enum.Enum):
    OK = "ok"
    UNKNOWN = "unknown"  # no such member: purged or never registered, so register again
    DEREGISTERED = "deregistered"  # revoked by a deregistration: register again
    BAD_TOKEN = "bad_token"  # noqa: S105 - an outcome: the member exists but the secret is wrong


def heartbeat(token: tokens.MemberToken) -> Beat:
    """Record a heartbeat: one primary-key UPDATE that is also the authentication.

    The hot path of the registry (``make bench``: heartbeat). Written as SQL because the ORM's
    query building cost more CPU than PostgreSQL's work; the statement is what the ORM would send.
    """
    with connection.cursor() as cursor:
        # One query string is one implicit transaction: SET LOCAL holds for this UPDATE only.
        cursor.execute(_HEARTBEAT_SQL, [timezone.now(), token.instance_id, token.hash])
        updated = cursor.rowcount
    if updated:
        return Beat.OK
    return _why_not(token.instance_id)


# The table name is the model's own; every value is a parameter. A heartbeat is liveness, not
# a result: its commit does not wait for the WAL flush (a PostgreSQL crash can forget the last
# fraction of a second of heartbeats, never corrupt anything), which halves its cost.
_HEARTBEAT_SQL = (
    "SET LOCAL synchronous_commit TO OFF; "  # noqa: S608
    f'UPDATE "{Member._meta.db_table}" SET "last_seen" = %s '
    'WHERE "instance_id" = %s AND "token_hash" = %s AND "deregistered_at" IS NULL'
)


def heartbeat_by_id(instance_id: uuid.UUID) -> Beat:
    """Tokenless heartbeat of seed members, allowed only under NETRING_OPEN_ENROLLMENT and only
    for members that enrolled openly themselves (others answer BAD_TOKEN)."""
    updated = Member.objects.filter(instance_id=instance_id, enrolled_openly=True, deregistered_at__isnull=True).update(
        last_seen=timezone.now()
    )
    return Beat.OK if updated else _why_not(instance_id)


def _why_not(instance_id: uuid.UUID) -> Beat:
    member = Member.objects.filter(instance_id=instance_id).only("deregistered_at").first()
    if member is None:
        return Beat.UNKNOWN
    if member.deregistered_at is not None:
        return Beat.DEREGISTERED
    return Beat.BAD_TOKEN


def authenticate(token: tokens.MemberToken) -> Member | None:
    member = (
        Member.objects.select_related("location")
        .filter(instance_id=token.instance_id, deregistered_at__isnull=True)
        .first()
    )
    if member is None or not member.token_hash or not tokens.same(member.token_hash, token.hash):
        return None
    return member


def deregister(member: Member) -> None:
    """Graceful shutdown: shown as deregistered (not down), the token is revoked."""
    deregister_all(Member.objects.filter(pk=member.pk))


def deregister_all(members: QuerySet[Member]) -> int:
    """Deregister every member of ``members`` not deregistered yet; how many were."""
    return members.filter(deregistered_at__isnull=True).update(deregistered_at=timezone.now(), token_hash="")


def deregister_with_token(token: tokens.MemberToken) -> Beat:
    """The member's own graceful shutdown: one conditional UPDATE that is also the authentication."""
    if deregister_all(Member.objects.filter(instance_id=token.instance_id, token_hash=token.hash)):
        return Beat.OK
    return _why_not(token.instance_id)


def deregister_by_id(instance_id: uuid.UUID) -> Beat:
    """Tokenless deregistration of seed members: as :func:`heartbeat_by_id`, openly enrolled only."""
    if deregister_all(Member.objects.filter(instance_id=instance_id, enrolled_openly=True)):
        return Beat.OK
    return _why_not(instance_id)


def purge(members: QuerySet[Member]) -> int:
    """Delete members now; live ones are told to register again at their next heartbeat."""
    return Member.objects.filter(pk__in=members.values("pk")).delete()[0]


def rotate_token(member: Member) -> tokens.MemberToken:
    token = tokens.new_token(member.instance_id)
    Member.objects.filter(pk=member.pk).update(token_hash=token.hash)
    return token


@dataclass(frozen=True)
class Housekeeping:
    purged_deregistered: int
    purged_offline: int


def housekeeping(now: datetime | None = None) -> Housekeeping:
    """Purge members deregistered, or offline, for longer than their retention."""
    now = now or timezone.now()
    deregistered = Member.objects.filter(
        deregistered_at__lt=now - timedelta(seconds=settings.NETRING_DEREGISTERED_RETENTION)
    ).delete()[0]
    offline = 0
    if settings.NETRING_OFFLINE_RETENTION:
        cutoff = now - timedelta(seconds=settings.NETRING_OFFLINE_AFTER + settings.NETRING_OFFLINE_RETENTION)
        offline = Member.objects.filter(deregistered_at__isnull=True, last_seen__lt=cutoff).delete()[0]
    return Housekeeping(deregistered, offline)


@dataclass(frozen=True)
class LocationSummary:
    location: Location
    counts: dict[str, int]

    @property
    def present(self) -> int:
        return self.counts.get(Status.ONLINE, 0) + self.counts.get(Status.STALE, 0)

    @property
    def missing(self) -> int:
        return max(0, self.location.expected_members - self.present)


def location_summaries(now: datetime | None = None) -> list[LocationSummary]:
    """Members per status for every location in two queries, whatever the fleet size."""
    now = now or timezone.now()
    rows = Member.objects.with_status(now).values("location_id", "status")  # type: ignore[misc]  # annotated
    rows = rows.annotate(n=Count("pk")).order_by()
    counts: dict[int, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(row["location_id"], {})[row["status"]] = row["n"]
    return [LocationSummary(loc, counts.get(loc.pk, {})) for loc in Location.objects.all()]

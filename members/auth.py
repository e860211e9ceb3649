"""Who may call the API: members with their own token, users, and the enrollment token."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from members import services, tokens
from members.models import Member


@dataclass
class MemberPrincipal:
    """``request.user`` for a request authenticated with a member token."""

    member: Member
    is_authenticated: bool = True
    is_active: bool = True
    is_staff: bool = False
    is_superuser: bool = False
    is_anonymous: bool = False

    @property
    def pk(self) -> str:
        return str(self.member.pk)

    def __str__(self) -> str:
        return f"member {self.member.pk}"


def bearer(request: Request | Any) -> str:
    """The credential of an ``Authorization: Token <x>`` (or ``Bearer <x>``) header, or ""."""
    return credential(str(request.META.get("HTTP_AUTHORIZATION", "")))


def credential(header: str) -> str:
    """The credential in an ``Authorization`` header's value; the heartbeat fast path reads the
    WSGI environ with it, so both paths take the same tokens."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() not in ("token", "bearer"):
        return ""
    return value.strip()


class MemberTokenAuthentication(authentication.BaseAuthentication):
    """Authenticates ``Authorization: Token nrm_...``; leaves other tokens to the next class."""

    def authenticate(self, request: Request) -> tuple[MemberPrincipal, str] | None:
        raw = bearer(request)
        token = tokens.parse(raw) if raw.startswith(tokens.PREFIX + "_") else None
        if token is None:
            return None
        member = services.authenticate(token)
        if member is None:
            raise exceptions.AuthenticationFailed("invalid or revoked member token: register again")
        return MemberPrincipal(member), raw

    def authenticate_header(self, request: Request) -> str:
        return "Token"


class UserTokenAuthentication(authentication.TokenAuthentication):
    """DRF's user tokens (Grafana, scripts), refusing keys no token can have before the query.

    A key with a NUL byte would otherwise reach PostgreSQL, which refuses it with an error
    (a 500) instead of finding nothing.
    """

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        if len(key) > 40 or "\x00" in key:
            raise exceptions.AuthenticationFailed("Invalid token.")
        return super().authenticate_credentials(key)


class MemberTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """How the OpenAPI schema describes member tokens."""

    target_class = MemberTokenAuthentication
    name = "memberToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "The member's own token from its registration: `Token nrm_...`",
        }


def is_member(request: Request) -> bool:
    return isinstance(request.user, MemberPrincipal)


def client_ip(request: Request | Any) -> str:
    """The client's address: the peer's, or behind a trusted proxy the one the proxies saw.

    ``X-Forwarded-For`` counts only when the peer is one of ``NETRING_TRUSTED_PROXIES``:
    anyone else could write any address into it. Each proxy appends the address it received
    the request from, so the list is read from the right, past the trusted proxies; the first
    other address is the client (addresses further left are whatever the client claimed). A
    header that is not a list of addresses gives "" (unknown): registration then needs an
    explicit ``ip`` and open enrollment refuses, rather than trusting the proxy's own address.
    """
    peer = str(request.META.get("REMOTE_ADDR", ""))
    proxies = settings.NETRING_TRUSTED_PROXIES
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    if not proxies or forwarded is None or not _within(peer, proxies):
        return peer
    hops = [hop.strip() for hop in str(forwarded).split(",")]
    for hop in reversed(hops):
        if not _within(hop, proxies):
            return hop if _is_address(hop) else ""
    return hops[0]  # every hop is a proxy: the request started at the first one


def _within(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        parsed = ipaddress.ip_address(parse_ip(address))
    except ValueError:
        return False
    return any(parsed in network for network in networks)


def _is_address(value: str) -> bool:
    try:
        parse_ip(value)
    except ValueError:
        return False
    return True


def has_enrollment_token(request: Request | Any) -> bool:
    expected = settings.NETRING_ENROLLMENT_TOKEN
    return bool(expected) and tokens.same(bearer(request), expected)


def open_enrollment_allows(request: Request | Any) -> bool:
    """Open enrollment (seed compatibility): no token, from NETRING_OPEN_ENROLLMENT_NETWORKS."""
    if not settings.NETRING_OPEN_ENROLLMENT:
        return False
    try:
        return services.address_allowed(client_ip(request), settings.NETRING_OPEN_ENROLLMENT_NETWORKS)
    except ValueError:
        return False


def may_enroll(request: Request | Any) -> bool:
    return has_enrollment_token(request) or open_enrollment_allows(request)


class ReadForUsersAndMembers(permissions.BasePermission):
    """Reads: logged-in users, user tokens, member tokens (members discover each other), or
    anyone when NETRING_PUBLIC_READ is on. Writes: staff users only."""

    message = "authentication required: log in, or send 'Authorization: Token <token>'"

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return bool(settings.NETRING_PUBLIC_READ or (request.user and request.user.is_authenticated))
        return bool(request.user and request.user.is_staff)


def parse_ip(value: str) -> str:
    """Normalise an address, IPv4-mapped IPv6 to IPv4; ValueError when it is not one.

    A scoped IPv6 address (``fe80::1%eth0``) is refused: its zone means nothing to other hosts
    and PostgreSQL's ``inet`` cannot store it.
    """
    address = ipaddress.ip_address(value)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"{value!r} has a zone index")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)

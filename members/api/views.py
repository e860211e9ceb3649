"""The registry API under /api/v1/: thin views over ``members.services``."""

from __future__ import annotations

import uuid

import django_filters
from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.exceptions import NotAuthenticated, PermissionDenied, ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from members import auth, services, tokens
from members.api.serializers import (
    InstanceSerializer,
    LocationSerializer,
    MemberSerializer,
    RegisteredSerializer,
    RegisterSerializer,
)
from members.models import Location, Member
from members.status import Status
from netring_site.config import LOCATION_NAME
from netring_site.parsers import JSONParser


class LocationViewSet(viewsets.ModelViewSet[Location]):
    """Locations with their member counts; staff users create and edit them."""

    serializer_class = LocationSerializer
    lookup_field = "name"
    lookup_value_regex = LOCATION_NAME
    filterset_fields = ["criticality"]

    def get_queryset(self) -> QuerySet[Location]:
        # Aggregates drop Meta.ordering: order explicitly so pages are stable.
        return Location.objects.with_member_counts().order_by("name")


class MemberFilter(django_filters.FilterSet):
    location = django_filters.CharFilter(field_name="location__name")
    status = django_filters.ChoiceFilter(choices=[(s.value, s.value) for s in Status])
    kind = django_filters.ChoiceFilter(choices=Member.Kind.choices)

    class Meta:
        model = Member
        fields = ["location", "status", "kind"]


UUID_PATTERN = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


class MemberViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet[Member]
):
    """Members with their derived status. Staff users may purge one (DELETE)."""

    serializer_class = MemberSerializer
    filterset_class = MemberFilter
    lookup_field = "instance_id"
    lookup_value_regex = UUID_PATTERN  # anything else is a 404, not a query that fails

    def get_queryset(self) -> QuerySet[Member]:
        return Member.objects.with_status().select_related("location")


def member_target(request: Request, *, open_enrollment: bool = False) -> tuple[tokens.MemberToken | None, uuid.UUID]:
    """The member a heartbeat or deregistration is for: the one its token names.

    A body is optional; when it names an ``instance_id`` (the seed's clients always do), it
    must be the token's, so a member acts only on itself. Without a token (``open_enrollment``,
    the seed's paths under NETRING_OPEN_ENROLLMENT only) the body's ``instance_id`` is the member.
    """
    raw = auth.bearer(request)
    token = tokens.parse(raw) if raw else None
    if raw and token is None:
        raise NotAuthenticated("malformed member token: register again to get one")
    if token is None and not (open_enrollment and auth.open_enrollment_allows(request)):
        raise NotAuthenticated("send the member token: 'Authorization: Token nrm_...'")
    body = InstanceSerializer(data=request.data, context={"required": token is None})
    body.is_valid(raise_exception=True)
    instance_id = body.validated_data.get("instance_id")
    if token is None:
        return None, instance_id
    if instance_id is not None and instance_id != token.instance_id:
        raise ValidationError({"instance_id": ["does not match the member token"]})
    return token, token.instance_id


def own_token(request: Request) -> tokens.MemberToken:
    """The member token of a v1 request, which always needs one."""
    token, _ = member_target(request)
    if token is None:  # member_target lets a request without a token through only for open enrollment
        raise NotAuthenticated("send the member token: 'Authorization: Token nrm_...'")
    return token


_BEAT_ANSWERS = {
    services.Beat.UNKNOWN: (status.HTTP_404_NOT_FOUND, "unknown member: register again"),
    services.Beat.DEREGISTERED: (status.HTTP_410_GONE, "member was deregistered: register again"),
    services.Beat.BAD_TOKEN: (status.HTTP_401_UNAUTHORIZED, "invalid member token"),
}


def beat_data(instance_id: uuid.UUID, done: str = "ok") -> dict[str, object]:
    """The body of an accepted heartbeat or deregistration; members.fastpath renders the same."""
    return {"status": done, "instance_id": str(instance_id), "heartbeat_interval": settings.NETRING_HEARTBEAT_INTERVAL}


def beat_response(beat: services.Beat, instance_id: uuid.UUID, done: str = "ok") -> Response:
    if beat is services.Beat.OK:
        return Response(beat_data(instance_id, done))
    code, message = _BEAT_ANSWERS[beat]
    # "action" tells a member what to do, so one that the registry forgot comes back by itself.
    action = "register" if beat is not services.Beat.BAD_TOKEN else "check token"
    return Response(
        {"detail": message, "error": message, "action": action, "instance_id": str(instance_id)}, status=code
    )


class MemberWriteView(APIView):
    """Base of the endpoints members write to: JSON bodies, credentials checked by the view.

    The view checks the enrollment or member token itself (registration and heartbeat are not
    user sessions, so no CSRF either); a missing credential is a 401 with a Token challenge.
    """

    authentication_classes = ()
    permission_classes = (AllowAny,)
    parser_classes = (JSONParser,)

    def get_authenticate_header(self, request: Request) -> str:
        return "Token"


class RegisterView(MemberWriteView):
    """Register a member (or re-register an instance id). Needs the enrollment token."""

    @extend_schema(request=RegisterSerializer, responses={201: RegisteredSerializer, 200: RegisteredSerializer})
    def post(self, request: Request) -> Response:
        registration = register_from(request)
        body = RegisteredSerializer(registration.member).data
        return Response(
            {
                **body,
                "status": Status.ONLINE.value,
                "token": str(registration.token),
                "heartbeat_interval": settings.NETRING_HEARTBEAT_INTERVAL,
            },
            status=status.HTTP_201_CREATED if registration.created else status.HTTP_200_OK,
        )


def register_from(request: Request) -> services.Registration:
    """Shared by the v1 and the seed-compatible endpoint: check enrollment, validate, register."""
    if not auth.may_enroll(request):
        if auth.bearer(request):
            raise PermissionDenied("invalid enrollment token")
        raise NotAuthenticated("registration needs the enrollment token: 'Authorization: Token <token>'")
    serializer = RegisterSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    ip = data.get("ip") or _client_address(request)
    try:
        return services.register(
            instance_id=data.get("instance_id"),
            location=data["location"],
            ip=ip,
            port=data["port"],
            kind=data["kind"],
            hostname=data["hostname"],
            version=data["version"],
            enrolled_openly=not auth.has_enrollment_token(request),
        )
    except services.RegistrationRefused as exc:
        raise PermissionDenied(str(exc)) from exc


def _client_address(request: Request) -> str:
    try:
        return auth.parse_ip(auth.client_ip(request))
    except ValueError:
        # A Unix-socket front end passes no client address: the member must name its own.
        raise ValidationError({"ip": ["This field is required: the client address is unknown."]}) from None


class HeartbeatView(MemberWriteView):
    """One cheap write: the token check and the update are a single indexed UPDATE.

    Accepted heartbeats are mostly answered before Django by ``members.fastpath``, which must
    give this view's answer byte for byte (members/tests/test_fastpath.py compares them): a
    change to what this view checks or answers needs the same change there.
    """

    renderer_classes = (JSONRenderer,)

    @extend_schema(
        request=InstanceSerializer,
        responses={
            200: OpenApiResponse(description="recorded"),
            401: OpenApiResponse(description="no, malformed or wrong member token"),
            404: OpenApiResponse(description="unknown member: register again"),
            410: OpenApiResponse(description="deregistered: register again"),
        },
    )
    def post(self, request: Request) -> Response:
        token = own_token(request)
        return beat_response(services.heartbeat(token), token.instance_id)


class DeregisterView(MemberWriteView):
    """Graceful shutdown of the calling member; it shows as deregistered, not down."""

    @extend_schema(
        request=InstanceSerializer,
        responses={
            200: OpenApiResponse(description="deregistered"),
            401: OpenApiResponse(description="no, malformed or wrong member token"),
            404: OpenApiResponse(description="unknown member"),
            410: OpenApiResponse(description="deregistered already"),
        },
    )
    def post(self, request: Request) -> Response:
        token = own_token(request)
        return beat_response(services.deregister_with_token(token), token.instance_id, done="deregistered")

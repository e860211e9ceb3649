"""The seed registry's endpoints, at the seed's paths with the seed's payloads.

Existing Netring members point ``NETRING_REGISTRY_URL`` here unchanged. They still need the
enrollment token (or NETRING_OPEN_ENROLLMENT for a migration period); a member that received a
token in the registration answer should send it with heartbeats.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view, inline_serializer
from rest_framework import serializers
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from members import services
from members.api.serializers import InstanceSerializer, MemberSerializer, RegisterSerializer
from members.api.views import MemberWriteView, beat_response, member_target, register_from
from members.models import Member


def _epoch(value: object) -> int | None:
    return int(value.timestamp()) if value is not None else None  # type: ignore[attr-defined]


SEED_BEAT_RESPONSES = {
    200: OpenApiResponse(description="recorded"),
    400: OpenApiResponse(description="instance_id missing, malformed, or not the token's"),
    401: OpenApiResponse(description="no, malformed or wrong member token"),
    404: OpenApiResponse(description="unknown member: register again"),
    410: OpenApiResponse(description="deregistered: register again"),
}


class SeedRegisterView(MemberWriteView):
    @extend_schema(
        request=RegisterSerializer,
        operation_id="seed_register",
        responses=inline_serializer(
            "SeedRegistered",
            {
                "status": serializers.CharField(),
                "instance_id": serializers.UUIDField(),
                "token": serializers.CharField(),
            },
        ),
    )
    def post(self, request: Request) -> Response:
        registration = register_from(request)
        return Response(
            {"status": "registered", "instance_id": str(registration.member.pk), "token": str(registration.token)}
        )


class SeedHeartbeatView(MemberWriteView):
    @extend_schema(request=InstanceSerializer, operation_id="seed_heartbeat", responses=SEED_BEAT_RESPONSES)
    def post(self, request: Request) -> Response:
        token, instance_id = member_target(request, open_enrollment=True)
        beat = services.heartbeat(token) if token else services.heartbeat_by_id(instance_id)
        return beat_response(beat, instance_id)


class SeedDeregisterView(MemberWriteView):
    @extend_schema(request=InstanceSerializer, operation_id="seed_deregister", responses=SEED_BEAT_RESPONSES)
    def post(self, request: Request) -> Response:
        token, instance_id = member_target(request, open_enrollment=True)
        beat = services.deregister_with_token(token) if token else services.deregister_by_id(instance_id)
        return beat_response(beat, instance_id, done="deregistered")


@extend_schema_view(get=extend_schema(operation_id="seed_members"))
class SeedMembersView(ListAPIView[Member]):
    """``GET /members``: the active members in the seed's shape (epoch seconds)."""

    serializer_class = MemberSerializer
    pagination_class = None
    filter_backends = ()

    def get_queryset(self) -> QuerySet[Member]:
        return Member.objects.active().with_status().select_related("location")

    def list(self, request: Request, *args: object, **kwargs: object) -> Response:
        members = [
            {**item, "last_seen": _epoch(member.last_seen), "registered_at": _epoch(member.registered_at)}
            for member, item in ((m, MemberSerializer(m).data) for m in self.get_queryset())
        ]
        return Response({"members": members})

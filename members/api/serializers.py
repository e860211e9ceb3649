from __future__ import annotations

import uuid
from typing import Any

from rest_framework import serializers

from members.auth import parse_ip
from members.models import Location, Member, location_name_validator

HOSTNAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"


class LocationSerializer(serializers.ModelSerializer[Location]):
    members_online = serializers.IntegerField(read_only=True, required=False)
    members_present = serializers.IntegerField(read_only=True, required=False)
    members_missing = serializers.IntegerField(read_only=True, required=False)

    class Meta:
        model = Location
        fields = [
            "name",
            "description",
            "expected_members",
            "criticality",
            "created_at",
            "members_online",
            "members_present",
            "members_missing",
        ]
        read_only_fields = ["created_at"]


class MemberSerializer(serializers.ModelSerializer[Member]):
    location = serializers.SlugRelatedField[Location](slug_field="name", read_only=True)
    status = serializers.CharField(read_only=True)

    class Meta:
        model = Member
        fields = [
            "instance_id",
            "location",
            "ip",
            "port",
            "kind",
            "hostname",
            "version",
            "status",
            "registered_at",
            "last_seen",
            "deregistered_at",
        ]
        read_only_fields = fields


class IPField(serializers.CharField):
    default_error_messages = {"invalid": "'{value}' is not an IPv4 or IPv6 address."}

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        try:
            return parse_ip(value)
        except ValueError:
            self.fail("invalid", value=value[:64])
            raise  # unreachable: fail() raises


class InstanceIdField(serializers.UUIDField):
    """A UUID given as a string; DRF's field would also take an integer (and so ``true``)."""

    def to_internal_value(self, data: Any) -> uuid.UUID:
        if not isinstance(data, str):
            self.fail("invalid", value=str(data)[:64])
        return super().to_internal_value(data)


class RegisterSerializer(serializers.Serializer[Any]):
    instance_id = InstanceIdField(required=False, allow_null=True)
    location = serializers.CharField(max_length=63, validators=[location_name_validator])
    ip = IPField(max_length=45, required=False, help_text="Advertised address; the client address when omitted.")
    port = serializers.IntegerField(min_value=1, max_value=65535, default=8757)
    kind = serializers.ChoiceField(choices=Member.Kind.choices, default=Member.Kind.API)
    hostname = serializers.RegexField(HOSTNAME_PATTERN, max_length=253, required=False, default="")
    version = serializers.CharField(max_length=64, required=False, default="")


class RegisteredSerializer(MemberSerializer):
    token = serializers.CharField(read_only=True, help_text="The member's own token; shown once.")
    heartbeat_interval = serializers.IntegerField(read_only=True)

    class Meta(MemberSerializer.Meta):
        fields = [*MemberSerializer.Meta.fields, "token", "heartbeat_interval"]
        read_only_fields = fields


class InstanceSerializer(serializers.Serializer[Any]):
    """The seed's heartbeat and deregister body: ``{"instance_id": "..."}``.

    Optional when the member token names the member; required (``context["required"]``) when
    it is the only thing that does (open enrollment).
    """

    instance_id = InstanceIdField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if self.context.get("required") and "instance_id" not in attrs:
            raise serializers.ValidationError({"instance_id": ["This field is required."]})
        return attrs

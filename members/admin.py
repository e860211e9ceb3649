from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from members import services
from members.models import Location, Member
from members.status import STATUS_COLOURS, Status


def status_badge(status: str) -> str:
    # format_html escapes its arguments; the colour comes from our own table.
    return format_html(
        '<span class="netring-badge" style="background:{};color:#111;padding:2px 8px;border-radius:9px;'
        'font-weight:600">{}</span>',
        STATUS_COLOURS.get(Status(status), "#999"),
        status,
    )


@admin.register(Location)
class LocationAdmin(admin.ModelAdmin[Location]):
    list_display = ["name", "criticality", "expected_members", "present", "missing", "description"]
    list_filter = ["criticality"]
    search_fields = ["name", "description"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Location]:
        return super().get_queryset(request).with_member_counts()  # type: ignore[attr-defined,no-any-return]

    @admin.display(description="online + stale", ordering="members_present")
    def present(self, obj: Location) -> int:
        return int(getattr(obj, "members_present", 0))

    @admin.display(description="missing", ordering="members_missing")
    def missing(self, obj: Location) -> int:
        return int(getattr(obj, "members_missing", 0))


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(s.value, s.value) for s in Status]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in {s.value for s in Status}:
            return queryset.filter(status=self.value())
        return queryset


@admin.register(Member)
class MemberAdmin(admin.ModelAdmin[Member]):
    list_display = ["instance_id", "location", "ip", "port", "kind", "badge", "last_seen", "version", "deregistered_at"]
    list_filter = ["location", StatusFilter, "kind"]
    search_fields = ["instance_id", "ip", "hostname", "location__name"]
    list_select_related = ["location"]
    readonly_fields = ["instance_id", "registered_at", "last_seen", "deregistered_at"]
    actions = ["deregister", "purge", "rotate_token"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Member]:
        return Member.objects.with_status().select_related("location")

    @admin.display(description="status", ordering="status")
    def badge(self, obj: Member) -> str:
        return status_badge(getattr(obj, "status", obj.status_at()))

    @admin.action(description="Deregister selected members (revokes their tokens)")
    def deregister(self, request: HttpRequest, queryset: QuerySet[Member]) -> None:
        # A running edge worker answers a 410 to its next heartbeat by registering again (that
        # is how workers survive a registry restart), so deregistering one only blinks it out.
        running = Member.objects.active().filter(pk__in=queryset, kind=Member.Kind.EDGE).count()
        count = services.deregister_all(queryset)
        self.message_user(request, f"Deregistered {count} member(s).")
        if running:
            self.message_user(
                request,
                f"{running} of them are running edge workers: they register again at their next heartbeat. "
                "Stop the worker (run_edge) to take it out of the mesh for good.",
                level=messages.WARNING,
            )

    @admin.action(description="Purge selected members now")
    def purge(self, request: HttpRequest, queryset: QuerySet[Member]) -> None:
        count = services.purge(queryset)
        self.message_user(request, f"Purged {count} member(s). Live ones re-register by themselves.")

    @admin.action(description="Rotate token (shown once)")
    def rotate_token(self, request: HttpRequest, queryset: QuerySet[Member]) -> None:
        for member in queryset.filter(deregistered_at__isnull=True):
            token = services.rotate_token(member)
            # Shown once to the admin; only its hash is stored.
            self.message_user(request, f"New token for {member.pk}: {token}", level=messages.WARNING)

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from probes.models import PathChange, ProberTarget


@admin.register(ProberTarget)
class ProberTargetAdmin(admin.ModelAdmin[ProberTarget]):
    list_display = ["name", "url", "enabled", "group", "timeout_s", "expected_status", "follow_redirects", "updated_at"]
    list_filter = ["enabled", "group", "locations"]
    list_editable = ["enabled"]
    search_fields = ["name", "url", "group"]
    filter_horizontal = ["locations"]


@admin.register(PathChange)
class PathChangeAdmin(admin.ModelAdmin[PathChange]):
    """Route changes, read-only: they are measurements, not settings."""

    list_display = ["ts", "source_location", "target_location", "target_ip", "description"]
    list_filter = ["source_location", "target_location"]
    search_fields = ["target_ip", "description"]
    date_hierarchy = "ts"
    ordering = ["-ts"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: PathChange | None = None) -> bool:
        return False

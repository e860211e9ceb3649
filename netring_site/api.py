"""The API's error handling: every client mistake is a 4xx with a message, never a 500."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError, RestrictedError
from rest_framework import status
from rest_framework.exceptions import ErrorDetail, NotAuthenticated, ParseError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from netring_site.parsers import RequestTooLarge

AUTHENTICATION_REQUIRED = "authentication required: log in, or send 'Authorization: Token <token>'"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, RequestDataTooBig):
        exc = RequestTooLarge(f"request body too large: at most {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes")
    elif isinstance(exc, SuspiciousOperation):
        exc = ParseError(f"bad request: {exc}")
    elif isinstance(exc, DjangoValidationError):
        exc = ParseError("; ".join(exc.messages))
    elif isinstance(exc, ProtectedError | RestrictedError):
        objects = exc.protected_objects if isinstance(exc, ProtectedError) else exc.restricted_objects
        names = ", ".join(sorted({str(obj._meta.verbose_name_plural) for obj in objects}))
        return _answer(status.HTTP_409_CONFLICT, f"cannot delete: {len(objects)} {names} still refer to it")
    elif isinstance(exc, NotAuthenticated) and exc.detail == NotAuthenticated.default_detail:
        # DRF's generic wording; say what credentials this API takes.
        exc.detail = ErrorDetail(AUTHENTICATION_REQUIRED, code=exc.default_code)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" in response.data:
        # The seed's clients read "error"; ours read "detail". Both carry the same message.
        response.data.setdefault("error", response.data["detail"])
    return response


def _answer(code: int, message: str) -> Response:
    return Response({"detail": message, "error": message}, status=code)

"""API-wide request parsing and error handling: every client mistake is a 4xx with a message, never a 500."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError, RestrictedError
from rest_framework import parsers, status
from rest_framework.exceptions import APIException, ErrorDetail, NotAuthenticated, ParseError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class Pagination(LimitOffsetPagination):
    """Every list's pages: large enough for a dashboard, bounded so that one request cannot read
    a month of rows, and so that ``?limit=<20 digits>`` is capped instead of reaching PostgreSQL
    as a LIMIT beyond bigint (a 500)."""

    max_limit = 10_000


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "request body too large"
    default_code = "too_large"


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, bounded, and with a 400 for every body ``json`` cannot read.

    DRF may read the body stream itself, past Django's DATA_UPLOAD_MAX_MEMORY_SIZE check; this
    parser applies that limit (413) whoever read first. DRF's parser catches only ValueError,
    so deeply nested JSON (``[[[[...``, a RecursionError) was a 500.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1 if limit is not None else -1)
        if limit is not None and len(raw) > limit:
            raise RequestTooLarge(f"request body too large: at most {limit} bytes")
        encoding = parsers.get_encoding(parser_context or {})  # type: ignore[attr-defined]
        try:
            data = json.loads(raw.decode(encoding), parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"JSON parse error - {str(exc)[:200]}") from None
        return data


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

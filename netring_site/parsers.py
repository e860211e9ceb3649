"""The API's request parsing: JSON only, bounded, and a 400 for every body that is not JSON.

Apart from ``netring_site.api``: DRF imports this module while it builds ``APIView`` (its
parser setting), so it must not import ``rest_framework.views`` itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework import parsers, status
from rest_framework.exceptions import APIException, ParseError


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

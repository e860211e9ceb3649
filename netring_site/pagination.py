"""The API's pages.

A module of its own, importing nothing of DRF's views: DRF imports it while it builds its
settings, and an import of ``rest_framework.views`` from here would go round in a circle.
"""

from rest_framework.pagination import LimitOffsetPagination


class Pagination(LimitOffsetPagination):
    """Every list's pages: large enough for a dashboard, bounded so that one request cannot read
    a month of rows, and so that ``?limit=<20 digits>`` is capped instead of reaching PostgreSQL
    as a LIMIT beyond bigint (a 500)."""

    max_limit = 10_000

"""Daily range partitions of the time-series tables: creation ahead of time and retention.

Retention drops whole partitions: a DELETE of a day of 1 Hz samples rewrites and vacuums
millions of rows, a DROP TABLE of a partition is instant.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from django.db import connection, transaction
from django.db.migrations.operations.base import Operation
from django.db.utils import DatabaseError

# Tables range-partitioned by day on a timestamp column, and how far ahead to create them.
PARTITIONED_TABLES: list[str] = []
DAYS_AHEAD = 7

_SUFFIX = re.compile(r"_p(\d{8})$")
T = TypeVar("T")
log = logging.getLogger(__name__)


def register(table: str) -> str:
    """Declare a partitioned table (models call this) so maintenance covers it."""
    if table not in PARTITIONED_TABLES:
        PARTITIONED_TABLES.append(table)
    return table


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def create_sql(table: str, day: date) -> str:
    """Idempotent DDL of the partition holding ``day`` (UTC days)."""
    nxt = day + timedelta(days=1)
    return (
        f'CREATE TABLE IF NOT EXISTS "{partition_name(table, day)}" PARTITION OF "{table}" '
        f"FOR VALUES FROM ('{day.isoformat()} 00:00:00+00') TO ('{nxt.isoformat()} 00:00:00+00')"
    )


def existing(table: str) -> dict[date, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
            [table],
        )
        names = [row[0] for row in cursor.fetchall()]
    found: dict[date, str] = {}
    for name in names:
        match = _SUFFIX.search(name)
        if match:
            text = match.group(1)
            found[date(int(text[:4]), int(text[4:6]), int(text[6:]))] = name
    return found


def ensure(table: str, first: date, last: date) -> int:
    """Create the partitions of every day from ``first`` to ``last``; returns how many were new."""
    have = existing(table)
    created = 0
    day = first
    with connection.cursor() as cursor:
        while day <= last:
            if day not in have:
                cursor.execute(create_sql(table, day))
                created += 1
            day += timedelta(days=1)
    return created


def write_creating(tables: Sequence[str], when: datetime, write: Callable[[], T]) -> T:
    """Run ``write`` in a transaction; if the partition of ``when``'s day is missing (maintenance
    has not run yet), create it in ``tables`` and run ``write`` once more."""
    try:
        with transaction.atomic():
            return write()
    except DatabaseError as exc:
        if "no partition" not in str(exc):
            raise
    day = when.astimezone(UTC).date()  # partitions hold UTC days
    try:
        with transaction.atomic():
            for table in tables:
                ensure(table, day, day + timedelta(days=1))
    except DatabaseError:
        log.info("partition of %s created concurrently", day)  # the retry finds it either way
    with transaction.atomic():
        return write()


def drop_before(table: str, cutoff: date) -> list[str]:
    """Drop the partitions whose whole day lies before ``cutoff``."""
    dropped = []
    with connection.cursor() as cursor:
        for day, name in sorted(existing(table).items()):
            if day < cutoff:
                cursor.execute(f'DROP TABLE IF EXISTS "{name}"')
                dropped.append(name)
    return dropped


def maintain(today: date, retention_days: int) -> dict[str, dict[str, object]]:
    """For every partitioned table: partitions from yesterday to a week ahead, old ones dropped."""
    report: dict[str, dict[str, object]] = {}
    for table in PARTITIONED_TABLES:
        created = ensure(table, today - timedelta(days=1), today + timedelta(days=DAYS_AHEAD))
        dropped = drop_before(table, today - timedelta(days=retention_days)) if retention_days else []
        report[table] = {"created": created, "dropped": dropped}
    return report


class CreatePartitionedModel(Operation):
    """Migration operation: create a model's table range-partitioned on ``column``.

    Follows a ``SeparateDatabaseAndState`` that holds the model's ``CreateModel`` as a state
    operation only. Django builds the column DDL (so it never drifts from the model); this
    operation changes the primary key to ``(column, id)`` as PostgreSQL requires and adds
    ``PARTITION BY RANGE``. Constraints (which must contain ``column``) are part of Django's
    DDL; indexes are created on the parent and propagate to every partition. The partitions of
    the coming days are created right away so writes work before the first maintenance run.
    """

    reduces_to_sql = True
    reversible = True

    def __init__(self, model_name: str, column: str) -> None:
        self.model_name = model_name
        self.column = column

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (f"{__name__}.{type(self).__name__}", [self.model_name, self.column], {})

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        model = to_state.apps.get_model(app_label, self.model_name)
        sql, params = schema_editor.table_sql(model)
        pk = model._meta.pk.column
        sql = sql.replace(f'"{pk}" bigint NOT NULL PRIMARY KEY', f'"{pk}" bigint NOT NULL', 1)
        assert sql.endswith(")"), sql
        sql = f'{sql[:-1]}, PRIMARY KEY ("{self.column}", "{pk}")) PARTITION BY RANGE ("{self.column}")'
        schema_editor.execute(sql, params or None)
        for index in model._meta.indexes:
            schema_editor.add_index(model, index)
        today = datetime.now(UTC).date()
        for offset in range(-1, DAYS_AHEAD + 1):
            schema_editor.execute(create_sql(model._meta.db_table, today + timedelta(days=offset)))

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        model = from_state.apps.get_model(app_label, self.model_name)
        schema_editor.execute(f'DROP TABLE IF EXISTS "{model._meta.db_table}" CASCADE')

    def describe(self) -> str:
        return f"Create {self.model_name} partitioned by range of {self.column}"

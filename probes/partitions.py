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
from django.db.utils import DatabaseError, OperationalError

# Tables range-partitioned by day on a timestamp column, and how far ahead to create them.
PARTITIONED_TABLES: list[str] = []
DAYS_AHEAD = 7
# Creating or dropping a partition locks its parent table ACCESS EXCLUSIVE. Queued behind a long
# report that reads the table, the DDL would in turn queue every insert of the edges and probers
# behind it, for as long as the report runs. So the DDL waits at most this long for its lock and
# is otherwise left for the next maintenance run (hourly): partitions are made a week ahead, and
# a day dropped an hour late is harmless.
LOCK_TIMEOUT_MS = 2000
_LOCK_NOT_AVAILABLE = "55P03"

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
    """Create the partitions of every day from ``first`` to ``last``; returns how many were new.

    Raises ``OperationalError`` when the table stayed locked (see ``LOCK_TIMEOUT_MS``).
    """
    created, deferred = _ensure(table, first, last)
    if deferred:
        raise OperationalError(f"{table} is locked: {', '.join(deferred)} not created, try again")
    return created


def _ensure(table: str, first: date, last: date) -> tuple[int, list[str]]:
    """Create what is missing from ``first`` to ``last``: (how many were created, names deferred)."""
    have = existing(table)
    created, deferred = 0, list[str]()
    day = first
    while day <= last:
        if day not in have:
            if _ddl(create_sql(table, day)):
                created += 1
            else:
                deferred.append(partition_name(table, day))
        day += timedelta(days=1)
    return created, deferred


def _ddl(sql: str) -> bool:
    """Run one partition DDL statement; False when its lock was not free within LOCK_TIMEOUT_MS."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
            cursor.execute(sql)
    except OperationalError as exc:
        if getattr(exc.__cause__, "pgcode", None) != _LOCK_NOT_AVAILABLE:
            raise
        log.warning(
            "partitions: %s waited %d ms for its lock, left for the next run",
            sql.split(" PARTITION")[0],
            LOCK_TIMEOUT_MS,
        )
        return False
    return True


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


def drop_before(table: str, cutoff: date) -> tuple[list[str], list[str]]:
    """Drop the partitions whose whole day lies before ``cutoff``: (dropped, deferred)."""
    dropped: list[str] = []
    deferred: list[str] = []
    for day, name in sorted(existing(table).items()):
        if day < cutoff:
            (dropped if _ddl(f'DROP TABLE IF EXISTS "{name}"') else deferred).append(name)
    return dropped, deferred


def maintain(today: date, retention_days: int) -> dict[str, dict[str, object]]:
    """For every partitioned table: partitions from yesterday to a week ahead, old ones dropped.

    ``deferred`` names what a lock held elsewhere postponed to the next run.
    """
    report: dict[str, dict[str, object]] = {}
    for table in PARTITIONED_TABLES:
        created, deferred = _ensure(table, today - timedelta(days=1), today + timedelta(days=DAYS_AHEAD))
        dropped: list[str] = []
        if retention_days:
            dropped, old = drop_before(table, today - timedelta(days=retention_days))
            deferred += old
        report[table] = {"created": created, "dropped": dropped, "deferred": deferred}
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

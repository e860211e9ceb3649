"""Daily partitions of the time-series tables: created ahead by the migration and by maintenance,
dropped after the retention, and created on demand when a round lands on a day without one."""

import threading
import time as time_module
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections
from django.utils import timezone

from probes import partitions, services
from probes.checks.result import CheckResult
from probes.models import MeshResult, ProberSample

MESH = MeshResult._meta.db_table


def today() -> date:
    return timezone.now().date()


def mesh_row(ts: datetime) -> MeshResult:
    return MeshResult.objects.create(
        ts=ts,
        round_id=1,
        source_location="us1",
        source_instance=uuid.uuid4(),
        target_location="eu1",
        target_instance=uuid.uuid4(),
        kind="tcp",
        target_ip="10.0.0.2",
        target_port=8757,
        ok=True,
        latency_ms=1.0,
    )


def test_every_time_series_table_is_registered() -> None:
    assert set(partitions.PARTITIONED_TABLES) >= {MESH, ProberSample._meta.db_table}


@pytest.mark.parametrize("table", [MESH, ProberSample._meta.db_table])
def test_the_migration_leaves_partitions_from_yesterday_to_a_week_ahead(db: None, table: str) -> None:
    have = partitions.existing(table)
    wanted = {today() + timedelta(days=n) for n in range(0, partitions.DAYS_AHEAD + 1)}
    assert wanted <= set(have)
    assert have[today()] == partitions.partition_name(table, today())


def test_maintenance_creates_partitions_ahead_of_time(db: None) -> None:
    later = today() + timedelta(days=20)

    report = partitions.maintain(later, retention_days=30)

    have = set(partitions.existing(MESH))
    assert {later + timedelta(days=n) for n in range(-1, partitions.DAYS_AHEAD + 1)} <= have
    assert report[MESH]["created"] == partitions.DAYS_AHEAD + 2
    # A second run finds everything in place.
    assert partitions.maintain(later, retention_days=30)[MESH] == {"created": 0, "dropped": [], "deferred": []}


def test_maintenance_drops_partitions_older_than_the_retention_with_their_rows(db: None) -> None:
    old = today() - timedelta(days=40)
    kept = today() - timedelta(days=29)
    partitions.ensure(MESH, old, old)
    partitions.ensure(MESH, kept, kept)
    gone = mesh_row(datetime.combine(old, time(12), tzinfo=UTC))
    stays = mesh_row(datetime.combine(kept, time(12), tzinfo=UTC))

    report = partitions.maintain(today(), retention_days=30)

    assert partitions.partition_name(MESH, old) in report[MESH]["dropped"]
    assert old not in partitions.existing(MESH)
    assert kept in partitions.existing(MESH)
    assert list(MeshResult.objects.values_list("id", flat=True)) == [stays.id]
    assert gone.id != stays.id


def test_a_retention_of_zero_keeps_everything(db: None) -> None:
    old = today() - timedelta(days=400)
    partitions.ensure(MESH, old, old)

    assert partitions.maintain(today(), retention_days=0)[MESH]["dropped"] == []
    assert old in partitions.existing(MESH)


def test_a_partition_covers_one_utc_day(db: None) -> None:
    day = today() + timedelta(days=30)
    partitions.ensure(MESH, day, day)
    mesh_row(datetime.combine(day, time(0), tzinfo=UTC))
    mesh_row(datetime.combine(day, time(23, 59, 59, 999999), tzinfo=UTC))

    with connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{partitions.partition_name(MESH, day)}"')  # noqa: S608 - our name
        assert cursor.fetchone() == (2,)
    # The next instant belongs to the next day, which has no partition yet.
    with pytest.raises(IntegrityError, match="no partition"):
        mesh_row(datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC))


def test_storing_a_round_on_a_day_without_a_partition_creates_it_and_retries(db: None) -> None:
    day = today() + timedelta(days=60)
    assert day not in partitions.existing(MESH)
    started = datetime.combine(day, time(8), tzinfo=UTC)
    source = services.RoundSource("us1", str(uuid.uuid4()), 42, started)
    target = str(uuid.uuid4())
    results = [
        CheckResult(kind="tcp", target="10.0.0.2", port=8757, target_id=target, ok=True, latency_ms=1.5, started_at=0),
        CheckResult(kind="http", target="10.0.0.2", port=8757, endpoint="/health", target_id=target, ok=True,
                    status_code=200, started_at=0),
    ]  # fmt: skip

    assert services.store_round(source, results, {target: "eu1"}) == 2

    assert day in partitions.existing(MESH)
    assert MeshResult.objects.filter(ts=started, round_id=42).count() == 2


def test_maintenance_never_holds_the_writers_up_behind_a_long_reader(transactional_db: None) -> None:
    """A report reading the table for minutes holds a lock that DROP TABLE of a partition must
    wait for; a DROP that queued for it would queue every insert behind itself. Maintenance waits
    at most LOCK_TIMEOUT_MS, defers, and finishes the job at the next run."""
    old = today() - timedelta(days=40)
    partitions.ensure(MESH, old, old)
    name = partitions.partition_name(MESH, old)
    reader, writer = _connect(), _connect()
    try:
        with reader.cursor() as cursor:  # the long report: its transaction stays open
            cursor.execute(f'SELECT count(*) FROM "{MESH}"')  # noqa: S608 - our table
        queued: list[float] = []

        def another_writer() -> None:
            time_module.sleep(0.5)  # while maintenance waits for its lock
            began = time_module.monotonic()
            with writer.cursor() as cursor:
                # Any statement on the table needs a lock that queues behind a waiting DROP: an
                # insert as much as this read.
                cursor.execute(f'SELECT count(*) FROM "{MESH}"')  # noqa: S608 - our table
            writer.commit()
            queued.append(time_module.monotonic() - began)

        thread = threading.Thread(target=another_writer)
        began = time_module.monotonic()
        thread.start()
        report = partitions.maintain(today(), retention_days=30)
        took = time_module.monotonic() - began
        thread.join(10)

        assert report[MESH]["deferred"] == [name] and report[MESH]["dropped"] == []
        assert took < 4  # LOCK_TIMEOUT_MS is 2 s
        assert queued and queued[0] < 2.5  # queued behind the DROP for at most its lock timeout
        assert old in partitions.existing(MESH)
    finally:
        reader.close()
        writer.close()

    assert partitions.maintain(today(), retention_days=30)[MESH]["dropped"] == [name]  # the next run


def _connect() -> Any:
    """A second connection to the test database, as another process would have."""
    wrapper = connections.create_connection(DEFAULT_DB_ALIAS)
    return wrapper.get_new_connection(wrapper.get_connection_params())

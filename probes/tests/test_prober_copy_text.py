"""COPY text: the one encoding of a sample row, for the database and for the spool."""

from __future__ import annotations

import json
import zlib
from datetime import date
from pathlib import Path

import pytest

from probes.management.commands.run_prober import make_spool
from probes.prober import copy_text
from probes.prober.spool import Row


def sample(**fields: object) -> Row:
    row: Row = {
        "ts": 1_717_243_199.0,  # 2024-06-01T11:59:59Z
        "probe_id": 42,
        "source": "https://a.example/",
        "target_id": 7,
        "ok": True,
        "disconnected": False,
        "status": 200,
        "error_class": None,
        "error": None,
        "dns_ms": 1.25,
        "connect_ms": 2.5,
        "tls_ms": None,
        "ttfb_ms": 40.0,
        "total_ms": 41.125,
    }
    row.update(fields)  # type: ignore[arg-type]
    return row


def test_a_row_is_one_tab_separated_line_in_column_order() -> None:
    line = copy_text.encode("us1", [sample()])
    assert line == (
        b"2024-06-01T11:59:59+00:00\t42\tus1\thttps://a.example/\t7\tt\tf\t200\t\t\t1.25\t2.5\t\\N\t40.0\t41.125\n"
    )


@pytest.mark.parametrize(
    "hostile",
    [
        "tab\there",
        "new\nline",
        "carriage\rreturn",
        "back\\slash",
        "\\N",
        "\\\\t",
        "é ☃ \u2028",
        "",
        "'; DROP TABLE x; --",
    ],
)
def test_hostile_text_survives_a_round_trip_on_one_line(hostile: str) -> None:
    data = copy_text.encode(f"loc{hostile}", [sample(source=hostile, error=hostile, error_class="tls")])
    assert data.count(b"\n") == 1  # one row, one line, whatever the text holds
    (back,) = copy_text.decode(data)
    assert back["source"] == back["error"] == hostile
    assert back["location"] == f"loc{hostile}"


def test_nulls_booleans_and_numbers_round_trip() -> None:
    rows = [
        sample(),
        sample(probe_id=43, ok=False, disconnected=True, status=None, target_id=None, error_class="refused"),
        sample(probe_id=44, ok=None, dns_ms=None, total_ms=None),  # a missed tick
    ]
    back = copy_text.decode(copy_text.encode("us1", rows))
    expected = [
        {**r, "location": "us1", "error_class": r["error_class"] or "", "error": r["error"] or ""} for r in rows
    ]
    assert back == expected


def test_a_ticks_rows_share_one_timestamp_and_days_are_read_back() -> None:
    rows = [sample(), sample(source="b"), sample(ts=1_717_243_200.0, probe_id=43)]  # across midnight... of noon
    data = copy_text.encode("us1", rows)
    assert [line.split(b"\t")[0] for line in data.splitlines()] == [
        b"2024-06-01T11:59:59+00:00",
        b"2024-06-01T11:59:59+00:00",
        b"2024-06-01T12:00:00+00:00",
    ]
    late = copy_text.encode("us1", [sample(ts=1_717_286_400.5)])  # 2024-06-02T00:00:00.5Z
    assert copy_text.days(data + late) == {date(2024, 6, 1), date(2024, 6, 2)}


def test_decode_refuses_a_line_with_the_wrong_number_of_columns() -> None:
    with pytest.raises(ValueError, match="expected 15 columns"):
        copy_text.decode(b"2024-06-01T11:59:59+00:00\t42\n")


def test_the_probers_spool_converts_rows_of_the_earlier_json_framing(tmp_path: Path) -> None:
    body = json.dumps(sample(), separators=(",", ":")).encode()
    (tmp_path / f"seg-{1:020d}.log").write_bytes(b"%08x " % zlib.crc32(body) + body + b"\n")
    batch = make_spool("us1", tmp_path).read_batch(10)
    assert batch is not None
    assert batch.data == copy_text.encode("us1", [sample()])

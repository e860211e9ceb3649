"""Sample rows in PostgreSQL's ``COPY ... FROM STDIN`` text format.

Rows are formatted once, when they leave the loop's memory: the same bytes go to the database
or, during an outage, to the spool, and a replay streams them from the spool into ``COPY``
unchanged. Replaying a long outage is then file reads and PostgreSQL's own parsing, with no
Python work per row (see docs/prober.md, "Storage").

The format: one line per row, columns in :data:`COLUMNS` order separated by tabs, ``\\N`` for
NULL, and backslash, tab, newline and carriage return escaped with a backslash, so a row never
spans two lines. :func:`decode` is the exact inverse, for tests and for a human reading
``rejected.log``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime

from probes.prober.spool import Row

COLUMNS = (
    "ts",
    "probe_id",
    "location",
    "source",
    "target_id",
    "ok",
    "disconnected",
    "status",
    "error_class",
    "error",
    "dns_ms",
    "connect_ms",
    "tls_ms",
    "ttfb_ms",
    "total_ms",
)
PHASES = ("dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "total_ms")
_NULL = r"\N"
_INTS = frozenset({"probe_id", "target_id", "status"})
_BOOLS = frozenset({"ok", "disconnected"})
_ESCAPED = re.compile(r"\\(.)")
_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _value(value: object) -> str:
    if value is None:
        return _NULL
    kind = type(value)
    if kind is float or kind is int:  # most values: phases, ids (bool is not int here)
        return str(value)
    if kind is bool:
        return "t" if value else "f"
    text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def encode(location: str, rows: Sequence[Row]) -> bytes:
    """``rows`` of ``location`` as COPY text, one line each (each ending with a newline).

    A tick's rows share their timestamp, so it is formatted once per tick, and the location
    once per call.
    """
    loc = _value(location)
    stamps: dict[object, str] = {}
    lines = []
    for row in rows:
        ts = row["ts"]
        stamp = stamps.get(ts)
        if stamp is None:
            stamp = stamps[ts] = datetime.fromtimestamp(float(ts), tz=UTC).isoformat()  # type: ignore[arg-type]
        values = [
            stamp,
            str(row["probe_id"]),
            loc,
            _value(row["source"]),
            _value(row.get("target_id")),
            _value(row["ok"]),
            _value(row["disconnected"]),
            _value(row.get("status")),
            _value(row.get("error_class") or ""),
            _value(row.get("error") or ""),
        ]
        values += [_value(row.get(name)) for name in PHASES]
        lines.append("\t".join(values))
    lines.append("")
    return "\n".join(lines).encode()


def decode(data: bytes) -> list[Row]:
    """The rows of :func:`encode`'s output, ``ts`` as epoch seconds, every column by name."""
    rows: list[Row] = []
    # Split on newlines alone: str.splitlines() would also split inside a value at U+2028 & co.
    for line in filter(None, data.decode().split("\n")):
        fields = line.split("\t")
        if len(fields) != len(COLUMNS):
            raise ValueError(f"expected {len(COLUMNS)} columns, got {len(fields)}: {line[:80]!r}")
        row: Row = {}
        for name, field in zip(COLUMNS, fields, strict=True):
            row[name] = _parse(name, field)
        rows.append(row)
    return rows


def _parse(name: str, field: str) -> str | int | float | bool | None:
    if field == _NULL:
        return None
    if name == "ts":
        return datetime.fromisoformat(field).timestamp()
    if name in _INTS:
        return int(field)
    if name in _BOOLS:
        return field == "t"
    if name in PHASES:
        return float(field)
    return _ESCAPED.sub(lambda m: _UNESCAPE.get(m.group(1), m.group(1)), field)


def days(data: bytes) -> set[date]:
    """The UTC days of the rows in ``data`` (the partitions they need)."""
    return {datetime.fromisoformat(line.split(b"\t", 1)[0].decode()).date() for line in data.split(b"\n") if line}

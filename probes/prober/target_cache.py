"""The last target list loaded from the database, kept in the prober's state folder.

A prober that starts while PostgreSQL is unreachable cannot load its targets; without this
file it would probe nothing for the whole outage, and the outage would read as *unknown* in
every SLA instead of being measured. The loop saves each list that differs from the file's
(on the reload thread, off the tick path) and reads the file only when its first load fails.

The file is replaced atomically (write a temporary file, fsync, rename, fsync the folder), so a
crash leaves the old list or the new one, never half of one. An unreadable file is logged and
ignored: the prober then waits for the database, as it would without a cache.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from probes.prober.loop import Target
from probes.prober.ticks import atomic_write

log = logging.getLogger(__name__)

VERSION = 1


class TargetCache:
    """``targets.json`` in the state folder: ``{"version", "saved_at", "targets": [...]}``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, targets: list[Target]) -> None:
        document = {
            "version": VERSION,
            "saved_at": time.time(),
            "targets": [_encode(t) for t in targets],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(document, indent=1).encode())

    def load(self) -> list[Target] | None:
        """The cached list, or None when there is no usable file."""
        try:
            raw: Any = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("prober: ignoring the unreadable target cache %s: %s", self.path, exc)
            return None
        try:
            if raw["version"] != VERSION:
                raise ValueError(f"version {raw['version']!r}")
            return [_decode(t) for t in raw["targets"]]
        except (KeyError, TypeError, ValueError) as exc:
            log.error("prober: ignoring the target cache %s: %s", self.path, exc)
            return None


def _encode(target: Target) -> dict[str, Any]:
    return {
        "source": target.source,
        "url": target.url,
        "timeout": target.timeout,
        "ok_statuses": None if target.ok_statuses is None else sorted(target.ok_statuses),
        "follow_redirects": target.follow_redirects,
        "verify_tls": target.verify_tls,
        "target_id": target.target_id,
    }


def _decode(item: dict[str, Any]) -> Target:
    statuses = item["ok_statuses"]
    target_id = item["target_id"]
    return Target(
        source=str(item["source"]),
        url=str(item["url"]),
        timeout=float(item["timeout"]),
        ok_statuses=None if statuses is None else frozenset(int(s) for s in statuses),
        follow_redirects=bool(item["follow_redirects"]),
        verify_tls=bool(item["verify_tls"]),
        target_id=None if target_id is None else int(target_id),
    )

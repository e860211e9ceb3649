"""A stable member identity for each edge worker of a host, kept in its data folder.

An edge worker registers under an instance id. A fresh one at every start would leave the
previous one behind as an offline member after a crash (red on the dashboard for
``NETRING_OFFLINE_RETENTION``), restart the member's history, and give traceroute new ICMP
flows (see ``probes.checks.traceroute``). So the id lives on disk, in one of numbered *slots*::

    <NETRING_DATA_DIR>/edge-<location>/slot-0/instance_id
    <NETRING_DATA_DIR>/edge-<location>/slot-0/lock          held (flock) while a worker uses it
    <NETRING_DATA_DIR>/edge-<location>/slot-1/...           a second worker of that location

A worker takes the first slot no running worker holds: one worker per location gets the same id
at every start, and several workers of one location on one host each keep their own. The lock
is the kernel's, so a worker killed with SIGKILL frees its slot too. Nothing here imports Django.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from probes.prober.ticks import atomic_write, try_lock

log = logging.getLogger(__name__)

MAX_SLOTS = 256


class IdentityClaim:
    """The instance id of slot ``slot`` under ``directory``, held until :meth:`release`."""

    def __init__(self, directory: Path, *, max_slots: int = MAX_SLOTS) -> None:
        for slot in range(max_slots):
            folder = directory / f"slot-{slot}"
            folder.mkdir(parents=True, exist_ok=True)
            fd = try_lock(folder / "lock")
            if fd is None:
                continue
            self._fd = fd
            self.slot = slot
            self.instance_id = _load_or_create(folder / "instance_id")
            return
        raise RuntimeError(f"all {max_slots} identity slots under {directory} are held by running workers")

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing releases the flock
            self._fd = -1


def _load_or_create(path: Path) -> uuid.UUID:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeDecodeError) as exc:
        log.error("identity: cannot read %s (%s), starting under a new instance id", path, exc)
        text = None
    if text is not None:
        try:
            return uuid.UUID(text)
        except ValueError:
            log.error("identity: %s holds %r, not a UUID; starting under a new instance id", path, text[:40])
    instance = uuid.uuid4()
    atomic_write(path, f"{instance}\n".encode("ascii"))
    return instance

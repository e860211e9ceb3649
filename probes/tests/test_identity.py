"""Edge identities kept on disk: the same id at every start, one per running worker."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from probes.identity import IdentityClaim


def test_a_worker_gets_the_same_instance_id_at_every_start(tmp_path: Path) -> None:
    first = IdentityClaim(tmp_path)
    first.release()
    again = IdentityClaim(tmp_path)
    assert (again.slot, again.instance_id) == (0, first.instance_id)
    assert (tmp_path / "slot-0" / "instance_id").read_text() == f"{first.instance_id}\n"


def test_workers_running_at_once_each_keep_an_identity_of_their_own(tmp_path: Path) -> None:
    a, b = IdentityClaim(tmp_path), IdentityClaim(tmp_path)
    assert (a.slot, b.slot) == (0, 1) and a.instance_id != b.instance_id
    a.release()
    b.release()
    # Both come back as themselves, in either order.
    b_again, a_again = IdentityClaim(tmp_path), IdentityClaim(tmp_path)
    assert {b_again.instance_id, a_again.instance_id} == {a.instance_id, b.instance_id}


def test_a_killed_worker_frees_its_slot(tmp_path: Path) -> None:
    """The lock is the kernel's: a process that dies without releasing it (SIGKILL) frees it."""
    code = (
        "import sys, pathlib; from probes.identity import IdentityClaim; "
        "c = IdentityClaim(pathlib.Path(sys.argv[1])); print(c.instance_id, flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    held = uuid.UUID(child.stdout.readline().strip())
    while_alive = IdentityClaim(tmp_path)
    assert while_alive.slot == 1  # slot 0 is the child's
    while_alive.release()
    child.kill()
    child.wait(10)
    assert IdentityClaim(tmp_path).instance_id == held


def test_a_damaged_identity_file_gives_a_new_id_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "slot-0").mkdir()
    (tmp_path / "slot-0" / "instance_id").write_text("not-a-uuid")
    claim = IdentityClaim(tmp_path)
    assert isinstance(claim.instance_id, uuid.UUID)
    assert "not a UUID" in caplog.text
    claim.release()
    assert IdentityClaim(tmp_path).instance_id == claim.instance_id  # and keeps the new one


def test_every_slot_held_is_an_error_that_says_so(tmp_path: Path) -> None:
    held = IdentityClaim(tmp_path, max_slots=1)
    with pytest.raises(RuntimeError, match=r"identity slots .* are held by running workers"):
        IdentityClaim(tmp_path, max_slots=1)
    held.release()

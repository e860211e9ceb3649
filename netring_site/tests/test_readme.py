"""The README's configuration table names every variable the code reads."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READERS = [
    "netring_site/settings.py",
    "netring_site/devstack.py",
    "compose/gunicorn.conf.py",
    *(str(p.relative_to(ROOT)) for p in (ROOT / "probes/management/commands").glob("*.py")),
]


def test_every_netring_variable_the_code_reads_is_in_the_readme_table() -> None:
    read = {name for path in READERS for name in re.findall(r'"(NETRING_[A-Z0-9_]+)"', (ROOT / path).read_text())}
    first_cells = re.findall(r"^\| ([^|]*) \|", (ROOT / "README.md").read_text(), re.MULTILINE)
    table = {name for cell in first_cells for name in re.findall(r"`(NETRING_[A-Z0-9_]+)`", cell)}
    assert len(read) > 40  # the pattern still finds what the code reads
    assert sorted(read - table) == []  # undocumented: add a row to the configuration table

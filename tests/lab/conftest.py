"""The network lab's fixtures: one deployed system for all scenarios, and the run's report.

The deployment is built once per session (about 15 s) and shared: the scenarios restore what
they break. Its logs stay in ``.netring/lab-test/logs/`` after the run (see docs/testing.md).
At the end, a table says what each scenario expected and what the system did.
"""

from __future__ import annotations

import shutil
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.lab.netns import PROJECT_ROOT, available
from tests.lab.sites import Deployment

LAB_DIR = PROJECT_ROOT / ".netring" / "lab-test"
LAB_OK, LAB_WHY = available("tc", "nft")


@dataclass
class Row:
    scenario: str
    expectation: str
    measured: str
    ok: bool


@dataclass
class Report:
    """What the scenarios expected and measured, printed at the end of the run."""

    rows: list[Row] = field(default_factory=list)
    logs: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def scenario(self, name: str) -> Scenario:
        return Scenario(self, name)

    def print(self, write: object) -> None:
        widths = (28, 58, 44)
        line = "+".join("-" * (w + 2) for w in (*widths, 4))
        out = [line, _cells(("scenario", "expectation", "measured", "pass"), widths), line]
        for row in self.rows:
            out.append(_cells((row.scenario, row.expectation, row.measured, "yes" if row.ok else "NO"), widths))
        out.append(line)
        if self.seconds:
            out.append("runtime: " + ", ".join(f"{name} {s:.0f}s" for name, s in self.seconds.items()))
        if self.logs:
            out.append(f"logs of every process: {self.logs}/")
        for text in out:
            write(text)  # type: ignore[operator]


def _cells(values: tuple[str, ...], widths: tuple[int, ...]) -> str:
    wrapped = [textwrap.wrap(v, w) or [""] for v, w in zip(values[:-1], widths, strict=True)]
    height = max(len(w) for w in wrapped)
    lines = []
    for i in range(height):
        parts = [f" {(w[i] if i < len(w) else ''):<{width}} " for w, width in zip(wrapped, widths, strict=True)]
        parts.append(f" {values[-1] if i == 0 else '':<4}")
        lines.append("|".join(parts))
    return "\n".join(lines)


class Scenario:
    """The checks of one scenario: each is recorded (for the table), then all are asserted."""

    def __init__(self, report: Report, name: str) -> None:
        self.report, self.name = report, name
        self.failed: list[Row] = []

    def check(self, expectation: str, measured: str, ok: bool) -> bool:
        row = Row(self.name, expectation, measured, bool(ok))
        self.report.rows.append(row)
        if not ok:
            self.failed.append(row)
        return bool(ok)

    def verify(self) -> None:
        """Fail the test with every unmet expectation (all were measured and reported)."""
        if self.failed:
            details = "\n".join(f"- {r.expectation}: measured {r.measured}" for r in self.failed)
            raise AssertionError(f"{self.name}: {len(self.failed)} expectation(s) not met:\n{details}")


REPORT = Report()


@pytest.fixture(scope="session")
def report() -> Report:
    return REPORT


@pytest.fixture(scope="session")
def deployment() -> Iterator[Deployment]:
    """The system as deployed: central site and three locations behind routers (see sites.py)."""
    if not LAB_OK:
        pytest.skip(f"network lab unavailable: {LAB_WHY}")
    shutil.rmtree(LAB_DIR, ignore_errors=True)
    REPORT.logs = LAB_DIR / "logs"
    began = time.monotonic()
    with Deployment(LAB_DIR, bandwidth_schedule=False) as lab:
        REPORT.seconds["setup"] = time.monotonic() - began
        yield lab
        began = time.monotonic()
    REPORT.seconds["teardown"] = time.monotonic() - began


@pytest.fixture(autouse=True)
def _timed(request: pytest.FixtureRequest) -> Iterator[None]:
    began = time.monotonic()
    yield
    REPORT.seconds[request.node.name.removeprefix("test_")] = time.monotonic() - began


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """A scenario that stopped with an error (not an unmet expectation) gets a row too."""
    if call.when == "call" and call.excinfo is not None and item.get_closest_marker("netns"):
        if call.excinfo.errisinstance(pytest.skip.Exception):
            return
        message = str(call.excinfo.value).strip().splitlines()[0][:160]
        if "expectation(s) not met" not in message:
            REPORT.rows.append(Row(item.name.removeprefix("test_"), "(the scenario ran to its end)", message, False))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT.rows:
        terminalreporter.section("network lab: what the system did")
        REPORT.print(terminalreporter.write_line)

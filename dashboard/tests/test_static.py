"""The dashboard's scripts build the DOM from text only and load nothing from the internet."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[1] / "static" / "dashboard"
SCRIPTS = sorted(STATIC.glob("js/*.js"))


def test_there_are_scripts() -> None:
    assert {p.name for p in SCRIPTS} >= {"app.js", "dom.js", "matrix.js", "members.js", "prober.js", "tooltip.js"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_it_never_parses_strings_as_html(script: Path) -> None:
    source = script.read_text()

    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in source, f"{script.name} uses {sink}"


@pytest.mark.parametrize("asset", [*SCRIPTS, STATIC / "netring.css"], ids=lambda p: p.name)
def test_it_loads_nothing_from_other_hosts(asset: Path) -> None:
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", asset.read_text()), f"{asset.name} names a URL"

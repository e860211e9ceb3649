"""Helpers shared by the benchmarks: Django set-up, a served web process, a load generator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netring_site.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


@contextmanager
def served_web(port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    """The web process as the README's production section runs it: gunicorn + compose config."""
    from netring_site.embedded import wait_for_port

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "netring_site.wsgi",
            "--config",
            str(ROOT / "compose" / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{port}",
        ],
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port("127.0.0.1", port, 30)
        time.sleep(1.0)  # let every worker finish importing before load starts
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(15)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def line(name: str, figure: str, baseline: str, verdict: str) -> None:
    print(f"  {name:<44} {figure:>22}   baseline: {baseline:<32} {verdict}", flush=True)

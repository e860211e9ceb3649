"""DRF's settings name classes of ours by import string; each must import in a fresh process
whichever DRF reads first (``manage.py migrate`` reads the pagination class before any view)."""

import os
import subprocess
import sys

import pytest
from rest_framework.settings import api_settings

from netring_site.tests.test_config import ROOT

IMPORTED = [name for name in api_settings.defaults if name in api_settings.import_strings]


@pytest.mark.parametrize("name", IMPORTED)
def test_each_imported_setting_loads_first_in_a_fresh_process(name: str) -> None:
    code = (
        "import django; django.setup()\n"
        "from rest_framework.settings import api_settings\n"
        f"getattr(api_settings, {name!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "netring_site.settings"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]

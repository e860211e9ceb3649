import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netring_site.config import ConfigError, Env

ROOT = Path(__file__).resolve().parents[2]


def env(**values: str) -> Env:
    return Env(values)


# --- int and float ----------------------------------------------------------------------------


def test_it_reads_whole_numbers_with_range_checks() -> None:
    reader = env(A="45", B=" 7 ", C="abc", D="0", E="1.5")
    assert reader.int("A", 1, min=1, max=60) == 45
    assert reader.int("B", 1) == 7
    assert reader.int("UNSET", 30) == 30
    assert reader.int("C", 30) == 30
    assert reader.int("D", 30, min=1, max=60) == 30
    assert reader.int("E", 30) == 30
    assert len(reader.problems) == 3
    assert all(p.startswith(("C=", "D=", "E=")) for p in reader.problems)
    assert "from 1 to 60" in reader.problems[1]


def test_it_treats_an_empty_value_as_unset() -> None:
    reader = env(A="", B="  ")
    assert reader.int("A", 5) == 5
    assert reader.float("B", 1.5) == 1.5
    assert reader.str("A", "x") == "x"
    assert not reader.problems


def test_it_reads_numbers_and_refuses_nan_and_out_of_range() -> None:
    reader = env(A="1.5", B="nan", C="abc", D="-1", E="inf")
    assert reader.float("A", 0.0) == 1.5
    assert reader.float("B", 2.0) == 2.0
    assert reader.float("C", 2.0) == 2.0
    assert reader.float("D", 2.0, min=0) == 2.0
    assert reader.float("E", 2.0, max=10) == 2.0
    assert [p.split("=")[0] for p in reader.problems] == ["B", "C", "D", "E"]


# --- bool, str, list --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
        ("", False),
    ],
)
def test_it_reads_booleans(raw: str, expected: bool) -> None:
    reader = env(FLAG=raw)
    assert reader.bool("FLAG", not expected) is expected
    assert not reader.problems


def test_it_refuses_a_boolean_it_does_not_know() -> None:
    reader = env(FLAG="maybe")
    assert reader.bool("FLAG", True) is True
    assert reader.problems == ["FLAG='maybe': expected true or false"]
    assert env().bool("FLAG", True) is True


def test_it_checks_choices() -> None:
    reader = env(LEVEL="LOUD")
    assert reader.str("LEVEL", "INFO", choices=("DEBUG", "INFO")) == "INFO"
    assert "expected one of DEBUG, INFO" in reader.problems[0]


def test_it_splits_lists_on_commas() -> None:
    reader = env(HOSTS=" a.example , b.example,,", EMPTY="")
    assert reader.list("HOSTS") == ["a.example", "b.example"]
    assert reader.list("EMPTY", ("x",)) == []
    assert reader.list("UNSET", ("x", "y")) == ["x", "y"]


def test_it_shortens_long_bad_values_in_messages() -> None:
    reader = env(A="9" * 500 + "x")
    reader.int("A", 1)
    assert len(reader.problems[0]) < 150


# --- networks ---------------------------------------------------------------------------------


def test_it_reads_networks_and_names_each_bad_one() -> None:
    reader = env(NETS="10.0.0.0/8, 192.0.2.7, fd00::/8, notanet, 300.0.0.0/8")
    assert reader.networks("NETS") == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("fd00::/8"),
    ]
    assert [p.split(":")[0] for p in reader.problems] == ["NETS='notanet'", "NETS='300.0.0.0/8'"]


def test_it_accepts_a_network_with_host_bits_set() -> None:
    assert env(NETS="10.1.2.3/8").networks("NETS") == [ipaddress.ip_network("10.0.0.0/8")]


# --- url --------------------------------------------------------------------------------------


def test_it_checks_url_schemes_and_hides_passwords() -> None:
    reader = env(DB="mysql://user:hunter2@db/x", OK="postgresql://u:p@db:5432/netring")
    assert reader.url("OK", "", schemes=("postgres", "postgresql")) == "postgresql://u:p@db:5432/netring"
    assert reader.url("DB", "", schemes=("postgres", "postgresql")) == ""
    assert "hunter2" not in reader.problems[0]
    assert "***" in reader.problems[0]
    assert "postgres:// or postgresql://" in reader.problems[0]


# --- secrets ----------------------------------------------------------------------------------


def test_it_reads_a_secret_from_the_variable() -> None:
    assert env(TOKEN=" s3cret ").secret("TOKEN") == "s3cret"
    assert env().secret("TOKEN", "default") == "default"


def test_it_reads_a_secret_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    reader = env(TOKEN_FILE=str(secret))
    assert reader.secret("TOKEN") == "from-a-file"
    assert not reader.problems


def test_it_refuses_a_secret_set_both_ways(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file")
    reader = env(TOKEN="inline", TOKEN_FILE=str(secret))
    reader.secret("TOKEN")
    assert reader.problems == ["TOKEN and TOKEN_FILE are both set: use one"]


def test_it_names_an_unreadable_secret_file(tmp_path: Path) -> None:
    reader = env(TOKEN_FILE=str(tmp_path / "missing"))
    assert reader.secret("TOKEN", "d") == "d"
    assert reader.problems[0].startswith("TOKEN_FILE=")
    assert "cannot read" in reader.problems[0]


# --- check ------------------------------------------------------------------------------------


def test_it_raises_one_error_naming_every_bad_variable() -> None:
    reader = env(A="x", B="maybe")
    reader.int("A", 1)
    reader.bool("B", False)
    with pytest.raises(ConfigError) as error:
        reader.check()
    assert error.value.problems == reader.problems
    assert "A='x'" in str(error.value)
    assert "B='maybe'" in str(error.value)
    env().check()  # nothing wrong: no error


# --- the settings, in a fresh process ---------------------------------------------------------


def manage_check(**overrides: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NETRING_") or k.endswith("_URL")}
    environ.update(overrides)
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check"], env=environ, capture_output=True, text=True, timeout=60
    )


def test_it_starts_with_valid_settings() -> None:
    result = manage_check()
    assert result.returncode == 0, result.stderr


def test_it_stops_at_start_naming_every_bad_variable() -> None:
    result = manage_check(NETRING_HEARTBEAT_INTERVAL="abc", NETRING_ALLOWED_MEMBER_NETWORKS="10.0.0.0/8,notanet")
    assert result.returncode == 2
    assert "NETRING_HEARTBEAT_INTERVAL='abc'" in result.stderr
    assert "NETRING_ALLOWED_MEMBER_NETWORKS='notanet'" in result.stderr
    assert "Traceback" not in result.stderr


def test_it_refuses_a_stale_threshold_not_below_the_offline_one() -> None:
    result = manage_check(NETRING_STALE_AFTER="300", NETRING_OFFLINE_AFTER="300")
    assert result.returncode == 2
    assert "NETRING_STALE_AFTER=300 must be less than NETRING_OFFLINE_AFTER=300" in result.stderr


def test_it_checks_an_edges_identity_and_addresses_at_start() -> None:
    result = manage_check(
        NETRING_LOCATION="us 1",
        NETRING_ADVERTISE_IP="env:",
        NETRING_MEMBER_BIND="all",
        NETRING_INSTANCE_ID="edge-7",
    )
    assert result.returncode == 2
    for shown in ("NETRING_LOCATION='us 1'", "NETRING_ADVERTISE_IP='env:'", "NETRING_MEMBER_BIND='all'"):
        assert shown in result.stderr
    assert "NETRING_INSTANCE_ID='edge-7': expected a UUID" in result.stderr


@pytest.mark.parametrize("advertise", ["auto", "env:POD_IP", "10.0.0.7", "fd00::7", "edge-7.dc1.example.net"])
def test_it_accepts_every_documented_form_of_the_advertised_address(advertise: str) -> None:
    result = manage_check(NETRING_LOCATION="us-east.1", NETRING_ADVERTISE_IP=advertise, NETRING_MEMBER_BIND="::")
    assert result.returncode == 0, result.stderr


def test_processes_starting_at_once_on_a_fresh_data_folder_share_one_complete_key(tmp_path: Path) -> None:
    """``make demo`` and the tests start several processes on a new folder at the same moment:
    each must read the same, whole key (an empty one stopped an edge worker; two different ones
    would make members refuse each other's bandwidth tokens)."""
    code = (
        "import sys, pathlib; from netring_site.config import folder_secret; "
        "print(folder_secret(pathlib.Path(sys.argv[1])))"
    )
    key = tmp_path / "data" / "secret_key"
    racers = [
        subprocess.Popen([sys.executable, "-c", code, str(key)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for _ in range(12)
    ]
    keys = {racer.communicate(timeout=60)[0].strip() for racer in racers}
    assert len(keys) == 1 and len(keys.pop()) >= 60
    assert key.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in key.parent.iterdir()] == ["secret_key"]  # no candidate left behind

"""Typed configuration from ``NETRING_*`` environment variables.

No Django import: settings, the devstack launcher and the tests all read configuration
through :class:`Env`, so every process validates the same way. A bad value never falls back
to a default silently; :class:`Env` collects every problem and :meth:`Env.check` raises one
:class:`ConfigError` that names each bad variable, so an operator fixes them in one pass.
"""

from __future__ import annotations

import builtins
import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A location name: also a queue name (netring.loc.<name>) and a label value, so kept plain.
LOCATION_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
HOST_NAME = r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(Exception):
    """One or more environment variables hold a value Netring cannot use."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class Env:
    """Reads typed values from an environment mapping, recording problems instead of raising.

    Each getter returns the default when a variable is unset and records a problem (then
    returns the default so reading can go on) when it is set to something unusable.
    """

    # The getters are named after the types they return (``env.int(...)``), so inside this
    # class the annotations spell the types ``builtins.int`` etc. to mean the type, not the method.

    def __init__(self, environ: Mapping[builtins.str, builtins.str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self.problems: builtins.list[builtins.str] = []

    def _raw(self, name: builtins.str) -> builtins.str | None:
        value = self.environ.get(name)
        return None if value is None else value.strip()

    def _bad(self, name: builtins.str, value: builtins.str, why: builtins.str) -> None:
        shown = value if len(value) <= 60 else value[:57] + "..."
        self.problems.append(f"{name}={shown!r}: {why}")

    def str(
        self, name: builtins.str, default: builtins.str = "", *, choices: tuple[builtins.str, ...] = ()
    ) -> builtins.str:
        value = self._raw(name)
        if value is None or value == "":
            return default
        if choices and value not in choices:
            self._bad(name, value, f"expected one of {', '.join(choices)}")
            return default
        return value

    def secret(self, name: builtins.str, default: builtins.str = "") -> builtins.str:
        """A secret from ``NAME`` or from the file named by ``NAME_FILE`` (Docker/K8s secrets)."""
        file_name = self._raw(f"{name}_FILE")
        if file_name:
            if self._raw(name):
                self.problems.append(f"{name} and {name}_FILE are both set: use one")
            try:
                return Path(file_name).read_text().strip()
            except OSError as exc:
                self._bad(f"{name}_FILE", file_name, f"cannot read: {exc.strerror}")
                return default
        return self.str(name, default)

    def int(
        self,
        name: builtins.str,
        default: builtins.int,
        *,
        min: builtins.int | None = None,
        max: builtins.int | None = None,
    ) -> builtins.int:
        value = self._raw(name)
        if value is None or value == "":
            return default
        try:
            number = int(value)
        except ValueError:
            self._bad(name, value, "expected a whole number")
            return default
        if (min is not None and number < min) or (max is not None and number > max):
            self._bad(name, value, f"expected a whole number from {min} to {max}")
            return default
        return number

    def float(
        self,
        name: builtins.str,
        default: builtins.float,
        *,
        min: builtins.float | None = None,
        max: builtins.float | None = None,
    ) -> builtins.float:
        value = self._raw(name)
        if value is None or value == "":
            return default
        try:
            number = float(value)
        except ValueError:
            self._bad(name, value, "expected a number")
            return default
        if number != number or (min is not None and number < min) or (max is not None and number > max):
            self._bad(name, value, f"expected a number from {min} to {max}")
            return default
        return number

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        value = self._raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        self._bad(name, value, "expected true or false")
        return default

    def list(self, name: builtins.str, default: tuple[builtins.str, ...] = ()) -> builtins.list[builtins.str]:
        value = self._raw(name)
        if value is None:
            return list(default)
        return [item.strip() for item in value.split(",") if item.strip()]

    def networks(self, name: builtins.str) -> builtins.list[Network]:
        networks: builtins.list[Network] = []
        for item in self.list(name):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self._bad(name, item, "expected a comma-separated list of networks such as 10.0.0.0/8")
        return networks

    def url(self, name: builtins.str, default: builtins.str, *, schemes: tuple[builtins.str, ...]) -> builtins.str:
        value = self._raw(name)
        if value is None or value == "":
            return default
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            self._bad(name, _redact(value), f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
            return default
        return value

    def check(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


def folder_secret(path: Path) -> str:
    """The secret kept in ``path``, created on first use (development and demo keys).

    Several processes may start at once on a fresh data folder (``make demo``, an edge worker
    and a prober): each writes a candidate to a file of its own, then links it into place,
    which only the first one manages. Everyone then reads that one, complete: never an empty or
    half-written key, and never two processes signing with different keys. Readable by its
    owner only from the first byte.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(50))
                f.flush()
                os.fsync(f.fileno())
            os.link(candidate, path)
        except FileExistsError:
            pass  # another process was first: its key it is
        finally:
            candidate.unlink(missing_ok=True)
    return path.read_text().strip()


def _redact(url: str) -> str:
    """Hide the password of a URL so it never reaches a log or an error message."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url

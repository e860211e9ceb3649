"""``make demo`` and ``make test``: run Netring with embedded services, no Docker, no root.

    python -m netring_site.devstack run -- pytest      # services up, command, services down
    python -m netring_site.devstack demo               # the whole stack in the foreground

No Django import at module level: the services must be up before settings are read.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from netring_site.embedded import services, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT / ".netring"
WEB_ADDRESS = ("127.0.0.1", 8756)

# Demo locations: each edge worker advertises its own loopback address, so the mesh between
# them is real TCP/HTTP/ICMP on distinct addresses.
DEMO_LOCATIONS = (("us1", "127.0.0.11"), ("eu1", "127.0.0.12"), ("asia1", "127.0.0.13"))
DEMO_TARGETS_PORT = 8759


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


def demo_children(env: dict[str, str]) -> list[Child]:
    """The processes of a deployment, in start order (they stop in reverse order)."""
    celery = [sys.executable, "-m", "celery", "-A", "netring_site"]
    web = f"{WEB_ADDRESS[0]}:{WEB_ADDRESS[1]}"
    gunicorn = [
        sys.executable,
        "-m",
        "gunicorn",
        "netring_site.wsgi",
        "--config",
        str(ROOT / "compose/gunicorn.conf.py"),
    ]
    central = ["--queues", "netring.central", "--pool", "threads", "--concurrency", "4", "--hostname", "central@%h"]
    targets = [sys.executable, "-m", "netring_site.demo_targets", "--port", str(DEMO_TARGETS_PORT)]
    children = [
        Child("web", [*gunicorn, "--bind", web]),
        Child("central", [*celery, "worker", *central, "--loglevel", "INFO"]),
        Child("beat", [*celery, "beat", "--loglevel", "INFO"]),
        Child("demo-targets", targets),
    ]
    for location, address in DEMO_LOCATIONS:
        where = {"NETRING_LOCATION": location, "NETRING_ADVERTISE_IP": address}
        children.append(Child(f"edge-{location}", _manage("run_edge"), where))
        metrics = {"NETRING_PROBER_METRICS_ADDR": f"{address}:8758"}
        children.append(Child(f"prober-{location}", _manage("run_prober"), {**where, **metrics}))
    return children


def _setup(env: dict[str, str]) -> None:
    """Migrate, collect static files, create the admin account and the beat schedules."""
    demo = [f"--location={name}={address}" for name, address in DEMO_LOCATIONS]
    for args in (
        ("migrate", "--noinput", "-v0"),
        ("collectstatic", "--noinput", "-v0"),
        ("netring_setup",),
        ("netring_demo", f"--targets-port={DEMO_TARGETS_PORT}", *demo),
    ):
        subprocess.run(_manage(*args), env=env, check=True)


def _stop(children: list[Child], timeout: float = 15.0) -> None:
    for child in reversed(children):
        if child.process and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in reversed(children):
        if child.process is None:
            continue
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"netring: {child.name} did not stop in {timeout:.0f}s, killing it", flush=True)
            child.process.kill()
            child.process.wait()


def demo(data_dir: Path) -> int:
    env = dict(os.environ)
    env.setdefault("NETRING_DATA_DIR", str(data_dir))
    # A short interval so the demo's mesh visibly moves; production keeps the seed's 60 s.
    env.setdefault("NETRING_CHECK_INTERVAL", "15")
    interrupted = False

    def _interrupt(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True

    with services(data_dir, env):
        _setup(env)
        children = demo_children(env)
        # Children get their own session so that Ctrl-C reaches only this supervisor, which
        # then stops them in order: edges first (they deregister), the web last.
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        logs = data_dir / "logs"
        logs.mkdir(exist_ok=True)
        for child in children:
            out = open(logs / f"{child.name}.log", "ab")  # noqa: SIM115 - owned by the child
            child.process = subprocess.Popen(
                child.argv,
                env={**env, **child.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )
            out.close()
        try:
            wait_for_port(*WEB_ADDRESS, timeout=30)
            print(
                "\nNetring is running.\n"
                f"  Dashboard   http://{WEB_ADDRESS[0]}:{WEB_ADDRESS[1]}/\n"
                f"  Admin       http://{WEB_ADDRESS[0]}:{WEB_ADDRESS[1]}/admin/\n"
                f"  API         http://{WEB_ADDRESS[0]}:{WEB_ADDRESS[1]}/api/v1/  (schema: /api/schema/)\n"
                f"  Health      http://{WEB_ADDRESS[0]}:{WEB_ADDRESS[1]}/health\n"
                f"  Metrics     http://{WEB_ADDRESS[0]}:{WEB_ADDRESS[1]}/metrics\n"
                f"  Logs        {logs}/\n"
                "Press Ctrl-C to stop.\n",
                flush=True,
            )
            while not interrupted:
                for child in children:
                    if child.process and child.process.poll() is not None:
                        print(
                            f"netring: {child.name} exited with {child.process.returncode}; "
                            f"see {logs / (child.name + '.log')}",
                            flush=True,
                        )
                        interrupted = True
                time.sleep(0.2)
        finally:
            print("\nnetring: stopping...", flush=True)
            _stop(children)
    print("netring: stopped.", flush=True)
    return 0


def run(data_dir: Path, command: list[str]) -> int:
    env = dict(os.environ)
    with services(data_dir, env):
        return subprocess.run(command, env=env).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("NETRING_DATA_DIR", DEFAULT_DATA)))
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("demo", help="run the whole stack in the foreground")
    run_parser = sub.add_parser("run", help="run a command with the services up")
    run_parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    data_dir = args.data.resolve()
    if args.action == "demo":
        return demo(data_dir)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run needs a command")
    return run(data_dir, command)


if __name__ == "__main__":
    sys.exit(main())

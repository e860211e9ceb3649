"""Throw-away test networks made of Linux network namespaces.

A ``Lab`` turns a short description into namespaces joined by veth pairs, with addresses,
static routes and forwarding in the routers, and removes all of it on exit, also when a test
fails. Everything goes through ``ip``/``tc``/``nft`` subprocesses, and code runs in a namespace
through ``ip netns exec`` in a child process (``Netns.call``), never by switching a thread of
the test process, so nothing of the test process can end up in the wrong namespace::

    with Lab("hA-r1-r2-hB") as lab:
        lab.shape_link("r1", "r2", mbit=50)
        result = lab["hA"].call(traceroute.trace, lab.addr("hB"))

Description: chains of node names joined by ``-``, chains separated by commas or whitespace;
a name used twice is the same node. Link *i* (in order of appearance) gets
``10.231.<i+1>.0/24``: its first node ``.1``, its second ``.2``. A node with two or more links
is a router (``ip_forward=1``) unless it is named in ``hosts``. Every node gets a static route
to every lab subnet along a shortest path through routers (ties go to the link declared first).

Nothing is attached to the root namespace, so the lab range cannot clash with the machine's
networks or with a parallel run, and no packet can leave the machine. Namespace names carry the
creating process id (``nrl<pid>-<n>-<node>``); ``cleanup_stale()`` removes those whose process
is gone (a run killed with SIGKILL cannot clean up after itself).

Lab settings that differ from a stock host, and why:

- ``icmp_ratemask=0`` everywhere: Linux rate-limits ICMP errors per destination (a burst of 6,
  then one per second). Real routers do the same, which is why intermediate-hop loss in a
  traceroute is not path loss; in the lab it would only make tests flaky.
- ``icmp_errors_use_inbound_ifaddr=1`` in routers: a router answers from the interface the
  probe came in on, as most hardware routers do, so a hop's address names the link it is on.
- ``rp_filter=0``: the delay relay (``delay``) re-injects forwarded packets on a TUN device.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import ipaddress
import itertools
import os
import pickle
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

LAB_NETWORK = "10.231.0.0/16"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Debian packages that bring each tool (for skip reasons and the CI install line).
PACKAGES = {"ip": "iproute2", "tc": "iproute2", "nft": "nftables", "ping": "iputils-ping", "traceroute": "traceroute"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,11}$")  # "e-<peer>" must fit IFNAMSIZ (15)
_STALE = re.compile(r"^nrl(\d+)-\d+-")
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
_counter = itertools.count(1)
_DELAY_TABLE = 231  # routing table used by the delay relay's policy rules


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


def tool(name: str) -> str:
    """Absolute path of a system tool (also finds /usr/sbin when PATH lacks it)."""
    found = shutil.which(name, path=_SBIN_PATH)
    if found is None:
        raise LabError(f"`{name}` not found (Debian package {PACKAGES.get(name, name)})")
    return found


def _run(argv: list[str], *, input: str | None = None, timeout: float = 30.0, check: bool = True) -> str:
    try:
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)}: no answer within {timeout:g}s") from exc
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@functools.cache
def available(*tools: str) -> tuple[bool, str]:
    """Whether labs can be built here, and if not, why (a ready-made skip reason).

    ``tools`` names what the caller needs besides ``ip`` (``"tc"``, ``"nft"``), plus ``"tun"``
    for ``Lab.delay``. The answer is cached: the check creates and deletes a namespace.
    """
    if not sys.platform.startswith("linux"):
        return False, "network namespaces need Linux"
    if os.geteuid() != 0:
        return False, "needs root (ip netns, veth, tc, nft); run the lab tests as root"
    missing = [name for name in ("ip", *tools) if name != "tun" and shutil.which(name, path=_SBIN_PATH) is None]
    if missing:
        packages = sorted({PACKAGES.get(name, name) for name in missing})
        return False, f"missing {', '.join(missing)}: apt-get install -y {' '.join(packages)}"
    if "tun" in tools and not os.path.exists("/dev/net/tun"):
        return False, "/dev/net/tun is missing (the delay relay needs a TUN device)"
    name = f"nrl{os.getpid()}-0-check"
    try:
        _run([tool("ip"), "netns", "add", name], timeout=10)
        _run([tool("ip"), "netns", "delete", name], timeout=10)
    except LabError as exc:
        return False, f"`ip netns` does not work here: {exc}"
    return True, "ok"


def cleanup_stale() -> list[str]:
    """Delete lab namespaces left by processes that no longer exist; return their names."""
    removed = []
    for line in _run([tool("ip"), "netns", "list"], check=False).splitlines():
        name = line.split(" ", 1)[0]
        match = _STALE.match(name)
        if match is None or _alive(int(match.group(1))):
            continue
        _run([tool("ip"), "netns", "delete", name], check=False)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tbf_burst(rate_bit: int, mtu: int = 1514) -> int:
    """Bucket size (bytes) for a tbf shaping ``rate_bit`` bit/s.

    At least 4 ms of the rate: the kernel may wake the qdisc late, and tokens beyond the bucket
    are lost, so a bucket smaller than the wake-up jitter shapes *below* the rate (tc-tbf(8)
    asks for at least rate/HZ; HZ=250 is 4 ms). At least 10 full frames, so a burst of
    back-to-back TCP segments passes without waiting for the next token. Not more: the whole
    bucket passes at line rate when a flow starts, which inflates short transfers. At 50 Mbit/s
    this is 25 kB (0.5 % of one second of data).
    """
    return max(rate_bit // 8 * 4 // 1000, 10 * mtu)


@dataclass(frozen=True)
class Link:
    """A veth pair between two nodes; the first node has ``.1``, the second ``.2``."""

    index: int
    a: str
    b: str
    network: ipaddress.IPv4Network

    def peer(self, node: str) -> str:
        return self.b if node == self.a else self.a

    def addr(self, node: str) -> str:
        offset = 1 if node == self.a else 2
        return str(self.network.network_address + offset)

    def dev(self, node: str) -> str:
        """Interface name inside ``node``'s namespace: ``e-<peer>``."""
        return f"e-{self.peer(node)}"


@dataclass(frozen=True)
class Shaping:
    """What ``Lab.shape`` configured (all rates in bit/s, sizes in bytes)."""

    node: str
    dev: str
    rate_bit: int
    burst_bytes: int
    latency_ms: float


class Netns:
    """One named network namespace."""

    def __init__(self, name: str, short: str) -> None:
        self.name = name
        self.short = short

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def exec_argv(self, argv: Iterable[str]) -> list[str]:
        return [tool("ip"), "netns", "exec", self.name, *argv]

    def run(self, *argv: str, input: str | None = None, timeout: float = 30.0, check: bool = True) -> str:
        """Run a command inside the namespace; return its stdout."""
        return _run(self.exec_argv(argv), input=input, timeout=timeout, check=check)

    def ip(self, *args: str, check: bool = True) -> str:
        return _run([tool("ip"), "-n", self.name, *args], check=check)

    def ip_batch(self, commands: Iterable[str]) -> None:
        """Several ``ip`` commands in one process (``ip -batch``), stopping at the first error."""
        script = "\n".join(commands)
        if script:
            _run([tool("ip"), "-n", self.name, "-batch", "-"], input=script + "\n")

    def sysctl(self, values: Mapping[str, str | int]) -> None:
        """Set sysctls of this namespace (``net.ipv4.ip_forward`` style keys)."""
        script = "".join(f"echo {value} > /proc/sys/{key.replace('.', '/')}\n" for key, value in values.items())
        self.run("/bin/sh", "-ec", script)

    def nft(self, script: str) -> None:
        self.run(tool("nft"), "-f", "-", input=script)

    def popen(self, argv: Iterable[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process inside the namespace (the project root is on its PYTHONPATH)."""
        env = dict(kwargs.pop("env", None) or os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH", "")]))
        return subprocess.Popen(self.exec_argv(argv), env=env, cwd=PROJECT_ROOT, **kwargs)

    def call(self, fn: Callable[..., T], /, *args: Any, timeout: float = 120.0, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a child Python inside the namespace and return its result.

        ``fn`` must be importable (a module-level function) and its arguments and result
        picklable. The child's stdout is reserved for the answer; what ``fn`` prints goes to
        stderr. An exception in the child is raised here again.
        """
        payload = pickle.dumps((fn, args, kwargs))
        child = self.popen(
            [sys.executable, "-c", _CALL_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            out, err = child.communicate(payload, timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise LabError(f"{fn.__qualname__} in {self.name}: no answer within {timeout:g}s") from None
        if child.returncode != 0 or not out:
            raise LabError(f"{fn.__qualname__} in {self.name}: exit {child.returncode}: {err.decode()[-2000:]}")
        # The bytes come from our own child process, never from the network.
        ok, value = pickle.loads(out)  # noqa: S301
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]


# Runs in the child of Netns.call: stdout carries one pickle, everything else goes to stderr.
_CALL_CHILD = """
import os, pickle, sys
answer = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
fn, args, kwargs = pickle.load(sys.stdin.buffer)
try:
    result = (True, fn(*args, **kwargs))
except Exception as exc:
    result = (False, exc)
try:
    data = pickle.dumps(result)
except Exception as exc:
    data = pickle.dumps((False, RuntimeError(repr(result[1]) + " (not picklable: " + repr(exc) + ")")))
answer.write(data)
answer.flush()
"""


def parse_spec(spec: str) -> list[tuple[str, str]]:
    """``"hA-r1-r2-hB, r1-r3"`` -> [("hA", "r1"), ("r1", "r2"), ("r2", "hB"), ("r1", "r3")]."""
    edges: list[tuple[str, str]] = []
    for chain in re.split(r"[,\s]+", spec.strip()):
        if not chain:
            continue
        names = chain.split("-")
        for name in names:
            if not _NAME.match(name):
                raise ValueError(f"bad node name {name!r} in {spec!r}: a letter, then up to 11 letters/digits")
        if len(names) < 2:
            raise ValueError(f"chain {chain!r} has no link")
        for a, b in itertools.pairwise(names):
            if a == b or (a, b) in edges or (b, a) in edges:
                raise ValueError(f"duplicate or self link {a}-{b} in {spec!r}")
            edges.append((a, b))
    return edges


class Lab:
    """Namespaces, links, addresses and routes from a description; see the module docstring."""

    # Two small topologies the tests share.
    CHAIN = "hA-r1-r2-hB"
    # Three locations at different distances from a central namespace and from each other:
    # us1 -> central 3 hops, us1 -> eu1 5, us1 -> asia1 6, eu1 -> asia1 7.
    SITES = "us1-rus-core-central, eu1-reu-rt1-core, asia1-ras-rt2-rt3-core"

    def __init__(self, spec: str, *, hosts: Iterable[str] = (), network: str = LAB_NETWORK) -> None:
        edges = parse_spec(spec)
        subnets = ipaddress.IPv4Network(network).subnets(new_prefix=24)
        next(subnets)  # .0.0/24 stays unused: link i is 10.231.i.0/24, easier to read
        self.links = [Link(i, a, b, next(subnets)) for i, (a, b) in enumerate(edges, start=1)]
        self.nodes: list[str] = list(dict.fromkeys(name for edge in edges for name in edge))
        degree = {node: sum(node in (link.a, link.b) for link in self.links) for node in self.nodes}
        self.routers = frozenset(node for node in self.nodes if degree[node] >= 2 and node not in set(hosts))
        self.prefix = f"nrl{os.getpid()}-{next(_counter)}-"
        self.ns = {node: Netns(self.prefix + node, node) for node in self.nodes}
        self._created: list[Netns] = []
        self._children: list[subprocess.Popen[bytes]] = []
        self._overrides: dict[tuple[str, str], str] = {}  # (node, prefix) -> via, from route()
        self._lock = threading.Lock()
        self._closed = False

    # -- building and tearing down -------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> Lab:
        cleanup_stale()
        atexit.register(self.close)
        ip = tool("ip")
        for ns in self.ns.values():
            _run([ip, "netns", "add", ns.name])
            self._created.append(ns)
        for link in self.links:
            a, b = self.ns[link.a], self.ns[link.b]
            # Created directly inside the two namespaces: never visible in the root namespace.
            a.ip("link", "add", link.dev(link.a), "type", "veth", "peer", "name", link.dev(link.b), "netns", b.name)
        for node, ns in self.ns.items():
            commands = ["link set lo up"]
            for link in self.links_of(node):
                commands.append(f"addr add {link.addr(node)}/{link.network.prefixlen} dev {link.dev(node)}")
                commands.append(f"link set {link.dev(node)} up")
            ns.ip_batch(commands)
            settings: dict[str, str | int] = {
                "net.ipv4.icmp_ratemask": 0,
                "net.ipv4.conf.all.rp_filter": 0,
                "net.ipv4.conf.default.rp_filter": 0,
            }
            if node in self.routers:
                settings |= {"net.ipv4.ip_forward": 1, "net.ipv4.icmp_errors_use_inbound_ifaddr": 1}
            ns.sysctl(settings)
        for node in self.nodes:
            self._install_routes(node)
        return self

    def close(self) -> None:
        """Stop what the lab started and delete its namespaces. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for child in self._children:
            _stop(child)
        for ns in self._created:
            _run([tool("ip"), "netns", "delete", ns.name], check=False)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    # -- looking things up ----------------------------------------------------------------------

    def __getitem__(self, node: str) -> Netns:
        return self.ns[node]

    def links_of(self, node: str) -> list[Link]:
        return [link for link in self.links if node in (link.a, link.b)]

    def link(self, a: str, b: str) -> Link:
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link
        raise KeyError(f"no link {a}-{b}")

    def addr(self, node: str, peer: str | None = None) -> str:
        """``node``'s address on its link to ``peer`` (default: its first link)."""
        link = self.link(node, peer) if peer is not None else self.links_of(node)[0]
        return link.addr(node)

    def dev(self, node: str, peer: str) -> str:
        return self.link(node, peer).dev(node)

    def subnet(self, a: str, b: str) -> str:
        return str(self.link(a, b).network)

    def _routes(self, node: str) -> list[tuple[str, str]]:
        """(subnet, next-hop address) for every lab subnet ``node`` is not on."""
        # Breadth-first from node; only routers carry traffic onwards.
        first_hop: dict[str, str] = {node: ""}
        queue = deque([node])
        while queue:
            current = queue.popleft()
            if current != node and current not in self.routers:
                continue
            for link in self.links_of(current):
                peer = link.peer(current)
                if peer not in first_hop:
                    first_hop[peer] = peer if current == node else first_hop[current]
                    queue.append(peer)
        order = {name: i for i, name in enumerate(first_hop)}  # BFS order = distance order
        routes = []
        for link in self.links:
            if node in (link.a, link.b):
                continue
            ends = [end for end in (link.a, link.b) if end in first_hop]
            if not ends:
                continue
            nearest = min(ends, key=order.__getitem__)
            hop = first_hop[nearest]
            routes.append((str(link.network), self.addr(hop, node)))
        return routes

    # -- changing the network ---------------------------------------------------------------------

    def route(self, node: str, destination: str, via: str) -> None:
        """Send ``node``'s traffic for ``destination`` (a prefix) through its neighbour ``via``."""
        self._overrides[(node, destination)] = via
        self.ns[node].ip("route", "replace", destination, "via", self.addr(via, node))

    def set_link(self, a: str, b: str, up: bool, timeout: float = 5.0) -> None:
        """Take the a-b link down (both ends) or bring it back up.

        The kernel drops every route through a link that goes down, so bringing it up waits for
        the carrier and puts the lab's routes (with ``route`` changes) back on both ends.
        """
        for node, peer in ((a, b), (b, a)):
            self.ns[node].ip("link", "set", self.dev(node, peer), "up" if up else "down")
        if not up:
            return
        deadline = time.monotonic() + timeout
        for node, peer in ((a, b), (b, a)):
            while "LOWER_UP" not in self.ns[node].ip("-o", "link", "show", "dev", self.dev(node, peer)):
                if time.monotonic() > deadline:
                    raise LabError(f"link {a}-{b} did not come up within {timeout:g}s")
                time.sleep(0.02)
        for node in (a, b):
            self._install_routes(node)

    def _install_routes(self, node: str) -> None:
        commands = [f"route replace {subnet} via {via}" for subnet, via in self._routes(node)]
        commands += [
            f"route replace {prefix} via {self.addr(via, node)}"
            for (where, prefix), via in self._overrides.items()
            if where == node
        ]
        self.ns[node].ip_batch(commands)

    def shape(
        self, node: str, peer: str, mbit: float, *, burst_bytes: int | None = None, latency_ms: float = 50.0
    ) -> Shaping:
        """Limit what ``node`` sends towards ``peer`` with a tbf (rate counts L2 frames, see ``tbf_burst``)."""
        rate = int(mbit * 1_000_000)
        burst = burst_bytes if burst_bytes is not None else tbf_burst(rate)
        dev = self.dev(node, peer)
        self.ns[node].run(
            tool("tc"), "qdisc", "replace", "dev", dev, "root", "tbf",
            "rate", f"{rate}bit", "burst", str(burst), "latency", f"{latency_ms:g}ms",
        )  # fmt: skip
        return Shaping(node, dev, rate, burst, latency_ms)

    def shape_link(self, a: str, b: str, mbit: float, **kwargs: Any) -> tuple[Shaping, Shaping]:
        """Shape both directions of the a-b link."""
        return self.shape(a, b, mbit, **kwargs), self.shape(b, a, mbit, **kwargs)

    def unshape(self, node: str, peer: str) -> None:
        self.ns[node].run(tool("tc"), "qdisc", "del", "dev", self.dev(node, peer), "root", check=False)

    def drop_random(self, router: str, percent: int) -> None:
        """Drop ``percent`` % of the packets ``router`` forwards, at random (0 removes the rule)."""
        script = _nft_chain("lab_forward", "forward")
        if percent >= 100:
            script += "add rule inet nrlab lab_forward drop\n"
        elif percent > 0:
            script += f"add rule inet nrlab lab_forward numgen random mod 100 < {int(percent)} drop\n"
        self.ns[router].nft(script)

    def silence(self, router: str, silent: bool = True) -> None:
        """Make ``router`` send no ICMP time-exceeded (a silent hop); it still forwards."""
        script = _nft_chain("lab_output", "output")
        if silent:
            script += "add rule inet nrlab lab_output icmp type time-exceeded drop\n"
            script += "add rule inet nrlab lab_output icmpv6 type time-exceeded drop\n"
        self.ns[router].nft(script)

    def delay(self, router: str, one_way_ms: float) -> subprocess.Popen[bytes]:
        """Delay every packet ``router`` forwards by ``one_way_ms`` (netem is not available).

        A user-space relay (``tests.lab.tundelay``) owns a TUN device in the router; policy rules
        send everything arriving on the router's links through it, and it writes each packet
        back after the delay with its TTL restored, so the router still counts as one hop.
        A round trip through the router grows by twice the delay. The router's own ICMP answers
        are not delayed. Good for tens of Mbit/s (it is a Python loop).
        """
        dev = "nrdly"
        ns = self.ns[router]
        child = self.spawn(
            router, [sys.executable, "-m", "tests.lab.tundelay", "--dev", dev, "--delay-ms", f"{one_way_ms:g}"],
            ready="ready",
        )  # fmt: skip
        commands = [f"link set {dev} up", f"route add default dev {dev} table {_DELAY_TABLE}"]
        commands += [
            f"rule add iif {link.dev(router)} lookup {_DELAY_TABLE} pref {1000 + n}"
            for n, link in enumerate(self.links_of(router))
        ]
        ns.sysctl({f"net.ipv4.conf.{dev}.rp_filter": 0})
        ns.ip_batch(commands)
        return child

    def spawn(
        self, node: str, argv: list[str], *, ready: str | None = None, timeout: float = 15.0
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in ``node``; it is stopped when the lab closes.

        With ``ready``, wait until the process prints a line starting with it (its stdout is a
        pipe then). Its stdin is a pipe the lab holds open, so a child can notice the lab is
        gone by reading EOF.
        """
        child = self.ns[node].popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE if ready else None)
        self._children.append(child)
        if ready is not None:
            assert child.stdout is not None
            line = _readline(child.stdout, timeout)
            if not line.startswith(ready.encode()):
                _stop(child)
                raise LabError(f"{argv[:4]} in {node} did not get ready: {line!r}")
        return child


def _nft_chain(chain: str, hook: str) -> str:
    return (
        "add table inet nrlab\n"
        f"add chain inet nrlab {chain} {{ type filter hook {hook} priority 0; policy accept; }}\n"
        f"flush chain inet nrlab {chain}\n"
    )


def _readline(stream: Any, timeout: float) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    return bytes(stream.readline()) if ready else b""


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=3)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(timeout=3)
    for stream in (child.stdin, child.stdout, child.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()

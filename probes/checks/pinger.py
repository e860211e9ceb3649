"""Many hosts' ICMP echoes through one icmplib socket, timed by the kernel.

Why not ``icmplib.async_multiping``: it opens one socket per host. With raw sockets each of N
sockets then receives all N hosts' replies; at 256 hosts on loopback the socket buffers
overflowed (~50% *false* loss) and parsing the others' replies inflated the RTTs to ~30 ms.
Here all hosts of one IP version share a socket, replies are matched by (id, sequence), and
each round of echoes is spread over the interval so the replies do not arrive in one burst.

Why the kernel's receive timestamp: the event loop reads a reply only when it is free, and in
a mesh round it is busy (bursts of TCP connects, the curl thread holding the GIL): read times
added 15-25 ms to loopback RTTs. The RTT runs from icmplib's timestamp just before sendto() to
the kernel's SO_TIMESTAMPNS stamp on arrival. Both are CLOCK_REALTIME; when a clock step makes
that figure impossible (negative, or longer than send-to-read on the monotonic clock), the
monotonic send-to-read time is used instead.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import icmplib
from icmplib.utils import unique_identifier

_ECHO_REPLY = {4: 0, 6: 129}  # ICMP type of an echo reply, by IP version
_ERRORS = {4: {3, 11}, 6: {1, 3}}  # destination unreachable and time exceeded
_SO_TIMESTAMPNS = 35  # linux asm-generic/socket.h; not exported by the socket module
_TIMESPEC = struct.Struct("qq")
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
# Replies that arrive while the loop is busy wait in the socket buffer; the default (~200 KB,
# ~300 packets) overflows at a few hundred hosts, and drops read as loss. Capped by
# net.core.rmem_max.
_RECEIVE_BUFFER = 4 << 20
MAX_ECHOES = 65536  # the sequence number is 16 bits: one socket sends at most this many echoes


@dataclass(slots=True)
class Echoes:
    """What one host's echoes came to."""

    sent: int = 0
    rtts: list[float] = field(default_factory=list)  # ms, in arrival order
    errors: list[str] = field(default_factory=list)  # ICMP errors from the path, failed sends


async def ping_hosts(
    targets: Sequence[tuple[str, str]],
    echoes: dict[str, Echoes],
    *,
    count: int,
    interval: float,
    timeout: float,
    privileged: bool,
) -> None:
    """Send ``count`` echoes to each (host, address) of one IP version and record the outcome.

    Echo ``k`` of every host leaves during ``[k * interval, (k + 1) * interval)``; each waits
    at most ``timeout`` for its reply. Raises icmplib's errors if the socket cannot be opened.
    """
    version = 6 if ":" in targets[0][1] else 4
    icmp_socket = (icmplib.ICMPv6Socket if version == 6 else icmplib.ICMPv4Socket)(privileged=privileged)
    receiver = _Receiver(version, echoes, timeout, ip_header=privileged and version == 4)
    loop = asyncio.get_running_loop()
    sock: socket.socket = icmp_socket.sock
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        loop.add_reader(sock.fileno(), receiver.drain, sock)
        try:
            await _send_all(icmp_socket, targets, receiver, count, interval)
            await receiver.wait(timeout)
        finally:
            loop.remove_reader(sock.fileno())
    finally:
        icmp_socket.close()


async def _send_all(
    icmp_socket: Any, targets: Sequence[tuple[str, str]], receiver: _Receiver, count: int, interval: float
) -> None:
    loop = asyncio.get_running_loop()
    identifier, begin, spacing = unique_identifier(), loop.time(), interval / len(targets)
    for sequence in range(count * len(targets)):
        echo, index = divmod(sequence, len(targets))
        delay = begin + echo * interval + index * spacing - loop.time()
        if delay > 0.0005:  # a shorter wait would cost more than it spreads
            await asyncio.sleep(delay)
        host, address = targets[index]
        request = icmplib.ICMPRequest(address, identifier, sequence)
        sent_at = time.perf_counter()
        try:
            icmp_socket.send(request)
        except icmplib.ICMPLibError as exc:  # e.g. no route: nothing left the host
            receiver.echoes[host].errors.append(str(exc))
            continue
        receiver.echoes[host].sent += 1
        # Datagram (unprivileged) sockets: the kernel replaced the id, and send() reports it.
        receiver.pending[(request.id, sequence)] = (host, request.time, sent_at)


class _Receiver:
    """Matches replies to the echoes sent; called by the event loop when the socket is readable."""

    def __init__(self, version: int, echoes: dict[str, Echoes], timeout: float, *, ip_header: bool) -> None:
        self.echoes = echoes
        # (id, sequence) -> (host, wall-clock send time, monotonic send time)
        self.pending: dict[tuple[int, int], tuple[str, float, float]] = {}
        self._version, self._timeout_ms, self._ip_header = version, timeout * 1000.0, ip_header
        self._answered = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Wait until every echo is answered or ``timeout`` passed; what is left is lost."""
        if not self.pending:
            return
        self._answered.clear()  # it was also set whenever pending emptied between two sends
        try:
            async with asyncio.timeout(timeout):
                await self._answered.wait()
        except TimeoutError:
            pass

    def drain(self, sock: socket.socket) -> None:
        while True:
            try:
                packet, ancillary, _, _ = sock.recvmsg(1500, _ANCILLARY_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # a pending socket error is reported once; the next read goes on
                continue
            self._handle(packet, _kernel_timestamp(ancillary), time.perf_counter())

    def _handle(self, packet: bytes, received_wall: float | None, read_at: float) -> None:
        parsed = parse_reply(packet, self._version, ip_header=self._ip_header)
        entry = self.pending.pop(parsed[2:], None) if parsed else None
        if parsed is None or entry is None:
            return  # not ours: another process's ping (raw sockets see them all), a duplicate
        kind, code = parsed[:2]
        host, sent_wall, sent_at = entry
        rtt_ms = round_trip_ms(sent_wall, sent_at, received_wall, read_at)
        if kind != _ECHO_REPLY[self._version]:
            self.echoes[host].errors.append(f"ICMP error type {kind} code {code} on the path to {host}")
        elif rtt_ms <= self._timeout_ms:  # a reply later than its timeout counts as lost
            self.echoes[host].rtts.append(rtt_ms)
        if not self.pending:
            self._answered.set()


def round_trip_ms(sent_wall: float, sent_at: float, received_wall: float | None, read_at: float) -> float:
    """The RTT from the wall-clock send and kernel receive stamps, unless a clock step broke it.

    ``sent_at`` and ``read_at`` are monotonic and bracket the other two, so the kernel figure
    can only be smaller than theirs; when it is not (or is negative), the clock stepped.
    """
    measured_ms = (read_at - sent_at) * 1000.0
    if received_wall is None:
        return measured_ms
    kernel_ms = (received_wall - sent_wall) * 1000.0
    return kernel_ms if 0.0 <= kernel_ms <= measured_ms else measured_ms


def parse_reply(packet: bytes, version: int, *, ip_header: bool) -> tuple[int, int, int, int] | None:
    """(type, code, id, sequence) of an echo reply, or of the echo an ICMP error is about."""
    if ip_header and packet:  # raw IPv4 sockets deliver the IP header too
        packet = packet[(packet[0] & 0x0F) * 4 :]
    if len(packet) < 8:
        return None
    kind, code = packet[0], packet[1]
    if kind in _ERRORS[version]:
        original = packet[8:]  # the datagram that failed: its IP header, then our echo request
        if not original:
            return None
        echo = original[(original[0] & 0x0F) * 4 if version == 4 else 40 :]
    elif kind == _ECHO_REPLY[version]:
        echo = packet
    else:
        return None  # e.g. our own echo requests, which a raw socket on loopback also sees
    if len(echo) < 8:
        return None
    identifier, sequence = struct.unpack_from("!HH", echo, 4)
    return kind, code, identifier, sequence


def _kernel_timestamp(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return float(seconds + nanoseconds / 1e9)
    return None

"""A user-space delay line on a TUN device (the lab's stand-in for ``tc netem``, which is missing).

Run inside a router namespace by ``Lab.delay``: it creates the TUN device, prints ``ready``,
then writes every packet it reads back into the device ``--delay-ms`` later, in order. The
kernel forwarded the packet once on its way into the device and forwards it again on its way
out, so the relay adds one to the TTL (IPv4: with the header checksum patched, RFC 1624) to
keep the router one hop. It exits when its stdin closes (the lab is gone) or on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import select
import struct
import sys
import time
from collections import deque

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_QUEUE = 20_000  # packets; beyond this the line drops, like a full netem queue


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def restore_ttl(packet: bytes) -> bytes:
    """Give back the hop the second pass through the router takes (TTL/hop limit + 1)."""
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20 and packet[8] < 255:
        buf = bytearray(packet)
        buf[8] += 1
        # RFC 1624: HC' = ~(~HC + ~m + m'); the TTL is the high byte of the 16-bit word at 8.
        old_word = (packet[8] << 8) | packet[9]
        total = (~struct.unpack_from("!H", packet, 10)[0] & 0xFFFF) + (~old_word & 0xFFFF) + old_word + 0x100
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        struct.pack_into("!H", buf, 10, ~total & 0xFFFF)
        return bytes(buf)
    if version == 6 and len(packet) >= 40 and packet[7] < 255:
        buf = bytearray(packet)
        buf[7] += 1
        return bytes(buf)
    return packet


def relay(fd: int, delay_s: float, control: int) -> None:
    line: deque[tuple[float, bytes]] = deque()
    while True:
        timeout = max(0.0, line[0][0] - time.monotonic()) if line else None
        readable, _, _ = select.select([fd, control], [], [], timeout)
        if control in readable and not os.read(control, 4096):
            return  # the lab closed our stdin
        if fd in readable:
            now = time.monotonic()
            while True:
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if len(line) < MAX_QUEUE:
                    line.append((now + delay_s, restore_ttl(packet)))
        now = time.monotonic()
        while line and line[0][0] <= now:
            os.write(fd, line.popleft()[1])


def prioritise() -> None:
    """Run ahead of ordinary processes: a starved relay would add its own delay and jitter
    (and become the bottleneck) whenever the machine is busy. It sleeps in select() between
    packets, and the kernel's RT throttling still leaves CPU for everyone else."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError):
            os.nice(-10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dev", required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    args = parser.parse_args()
    prioritise()
    fd = open_tun(args.dev)
    print("ready", flush=True)
    relay(fd, args.delay_ms / 1000.0, sys.stdin.fileno())


if __name__ == "__main__":
    main()

"""Bandwidth tests: accuracy on shaped links, and what serving a test costs.

Accuracy (needs root: network namespaces and tbf, ``tests.lab``): ``hA - r1 =R= r2 - hB`` with
the r1-r2 link shaped to R = 20, 50 and 200 Mbit/s, the bandwidth endpoint in hB, and the
product's ``measure`` (duration-based, slow start left out) from hA in both directions, plus
the seed's single 1 MB transfer; then the same at 20 and 50 Mbit/s with 30 ms RTT (a delay relay
in r2, a Python loop too slow for 200 Mbit/s), where the 1 MB transfer falls far short. Each
figure is compared with

- the issue's reference, the TCP goodput limit of the shaped rate on a physical wire:
  R x 1448/1538 (1448 payload bytes per 1538 bytes of frame, preamble, FCS and gap); target ±5 %;
- the limit tbf on a veth actually enforces: R x 1448/1514 (it counts 1514-byte frames only).

The product shows goodput, application payload in 10^6 bit/s, so on these links it should read
close to R x 1448/1514, which is 1.6 % above the wire reference.

Cost (no root needed): the test endpoint on loopback serving a download and sinking an upload;
CPU seconds of its serving thread per Gbit moved is the share of one core that 1 Gbit/s costs.
Target: below 0.5 (half a core).

    python -m bench bandwidth        # under `make bench`
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

from bench.common import line
from probes.checks import bandwidth

RATES_MBIT = (20.0, 50.0, 200.0)
DELAYED_MBIT = (20.0, 50.0)  # the delay relay is a Python loop: good for tens of Mbit/s
DELAY_MS = 15.0  # one way, at r2
DURATION_S = 4.0
WIRE = 1448 / 1538  # the reference: goodput of a shaped rate on a physical wire
VETH = 1448 / 1514  # what tbf on a veth lets through as payload
ACCURACY = 0.05
CPU_PER_GBIT_TARGET = 0.5
PORT = 8757


@dataclass
class Figures:
    rate: float
    delay_ms: float
    download: bandwidth.BandwidthResult
    upload: bandwidth.BandwidthResult
    naive: bandwidth.BandwidthResult


def main() -> bool:
    rates = ", ".join(f"{r:g}" for r in RATES_MBIT)
    print(f"bandwidth: accuracy at {rates} Mbit/s (tbf), also with {2 * DELAY_MS:g} ms RTT; cost", flush=True)
    accurate = _accuracy()
    cheap = _cost()
    return accurate and cheap


# --- Accuracy on shaped namespace links -----------------------------------------------------------


def _accuracy() -> bool:
    from tests.lab.netns import Lab, available

    ok, why = available("tc")
    if not ok:
        print(f"  accuracy: skipped, cannot build network namespaces here: {why}", flush=True)
        return True
    good = True
    runs = [(rate, 0.0) for rate in RATES_MBIT] + [(rate, DELAY_MS) for rate in DELAYED_MBIT]
    for rate, delay_ms in runs:
        with Lab(Lab.CHAIN) as lab:
            lab.shape_link("r1", "r2", rate)
            if delay_ms:
                lab.delay("r2", delay_ms)
            host = lab.addr("hB")
            lab.spawn(
                "hB", [sys.executable, "-m", "probes.checks.bandwidth", "serve", "--host", host, "--port", str(PORT)],
                ready="listening",
            )  # fmt: skip
            target = f"{host}:{PORT}"
            figures = Figures(
                rate,
                delay_ms,
                lab["hA"].call(bandwidth.measure, target, "download", DURATION_S),
                lab["hA"].call(bandwidth.measure, target, "upload", DURATION_S),
                lab["hA"].call(bandwidth.naive_estimate, target),
            )
        good = _report(figures) and good
    return good


def _report(f: Figures) -> bool:
    wire, veth = f.rate * WIRE, f.rate * VETH
    link = f"{f.rate:g} Mbit/s" + (f", {2 * f.delay_ms:g} ms RTT" if f.delay_ms else "")
    good = True
    for name, result in (("download", f.download), ("upload", f.upload)):
        if not result.ok or result.mbps is None:
            line(f"{link} {name}", "failed", result.error[:32], "FAIL")
            good = False
            continue
        ratio = result.mbps / wire
        within = abs(ratio - 1) <= ACCURACY
        good = good and within
        line(
            f"{link} {name} (omit {result.omitted_s:.1f}s{'' if result.stable else ', unstable'})",
            f"{result.mbps:7.2f} Mbit/s",
            f"x1448/1538 {ratio:.3f}; x1448/1514 {result.mbps / veth:.3f}",
            "ok" if within else f"FAIL (target ±{ACCURACY:.0%})",
        )
    if f.naive.mbps is not None:
        line(
            f"{link} naive 1 MB (the seed)",
            f"{f.naive.mbps:7.2f} Mbit/s",
            f"x1448/1538 {f.naive.mbps / wire:.3f}",
            "for comparison",
        )
    return good


# --- Cost of the endpoint on loopback ---------------------------------------------------------------


def _cost() -> bool:
    stats: list[bandwidth.TransferStats] = []
    server = bandwidth.make_server("127.0.0.1", 0, bandwidth.BandwidthEndpoint(max_bytes=1 << 40, on_done=stats.append))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = ("127.0.0.1", server.server_address[1])
    try:
        measured = {d: bandwidth.measure(target, d, 3.0, 1 << 40) for d in ("download", "upload")}  # type: ignore[arg-type]
    finally:
        server.shutdown()
        server.server_close()
    good = True
    for served in stats:
        gbit = served.bytes * 8 / 1e9
        per_gbit = served.cpu_s / gbit if gbit else float("inf")
        within = per_gbit < CPU_PER_GBIT_TARGET
        good = good and within
        rate = measured[served.direction].mbps or 0.0
        line(
            f"endpoint serving {'a download' if served.direction == 'download' else 'an upload'} on loopback",
            f"{per_gbit:.3f} core per Gbit/s",
            f"< {CPU_PER_GBIT_TARGET} core; ran at {rate / 1000:.1f} Gbit/s",
            "ok" if within else "FAIL",
        )
    return good and len(stats) == 2

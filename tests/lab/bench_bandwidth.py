"""Accuracy of ``probes.checks.bandwidth`` on shaped lab links (run by hand, as root).

    python -m tests.lab.bench_bandwidth --mbit 20 50 200 --delay-ms 0 15

For each rate (and one-way delay at r2) it builds ``hA-r1-r2-hB``, shapes r1-r2 with tbf,
serves ``/bandwidth_test`` in hB and measures from hA: download, upload and the naive 1 MB
estimate, each against the payload limit ``rate * 1448/1514`` (tbf counts whole frames).
"""

from __future__ import annotations

import argparse
import sys

from probes.checks import bandwidth
from tests.lab.netns import Lab, available

GOODPUT_FACTOR = 1448 / 1514  # TCP payload per Ethernet frame (with timestamps), as tbf counts it
PORT = 8757


def run(mbit: float, delay_ms: float, duration_s: float, burst: int | None) -> list[tuple[str, float | None]]:
    with Lab(Lab.CHAIN) as lab:
        shaping, _ = lab.shape_link("r1", "r2", mbit, burst_bytes=burst)
        if delay_ms:
            lab.delay("r2", delay_ms)
        host = lab.addr("hB")
        lab.spawn(
            "hB", [sys.executable, "-m", "probes.checks.bandwidth", "serve", "--host", host, "--port", str(PORT)],
            ready="listening",
        )  # fmt: skip
        target = f"{host}:{PORT}"
        rows: list[tuple[str, float | None]] = []
        for direction in ("download", "upload"):
            result = lab["hA"].call(bandwidth.measure, target, direction, duration_s)
            rows.append((f"{direction} (omit {result.omitted_s:.1f}s, stable={result.stable})", result.mbps))
            whole = result.bytes_total * 8 / result.transfer_s / 1e6 if result.transfer_s else None
            rows.append((f"  {direction}, whole transfer, nothing omitted", whole))
        naive = lab["hA"].call(bandwidth.naive_estimate, target)
        rows.append(("naive 1 MB", naive.mbps))
        print(f"\n{mbit:g} Mbit/s, burst {shaping.burst_bytes} B, one-way delay {delay_ms:g} ms", flush=True)
        limit = mbit * GOODPUT_FACTOR
        for name, mbps in rows:
            if mbps is None:
                print(f"  {name:40} failed")
                continue
            print(
                f"  {name:40} {mbps:8.2f} Mbit/s  vs limit {limit:.2f}: {100 * (mbps / limit - 1):+6.2f} %"
                f"  vs nominal: {100 * (mbps / mbit - 1):+6.2f} %"
            )
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mbit", type=float, nargs="+", default=[20, 50, 200])
    parser.add_argument("--delay-ms", type=float, nargs="+", default=[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--burst", type=int, default=None, help="tbf bucket in bytes (default: tbf_burst rule)")
    args = parser.parse_args()
    ok, why = available("tc", "tun")
    if not ok:
        raise SystemExit(f"cannot build labs here: {why}")
    for delay in args.delay_ms:
        for mbit in args.mbit:
            run(mbit, delay, args.duration, args.burst)


if __name__ == "__main__":
    main()

"""Run every benchmark, or those named: ``python -m bench heartbeat``."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["heartbeat", "mesh", "prober", "bandwidth"]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    failed = 0
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        failed += 0 if module.main() else 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

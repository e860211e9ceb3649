"""When the path to a target changed: each new trace against the route as known so far.

The rules (see docs/architecture.md, "Traceroute analysis"):

- Only traces that **reached** the target are compared. A trace that stops short (the target
  is down, a link is cut) shows an outage, not a new route; it is stored and shown, and the
  next complete path is compared with the last complete one.
- The **route as known** is the last complete path, with hops that went silent since filled in
  from the traces before (a router that skips answering ICMP has not moved; routers rate-limit
  time-exceeded messages all the time). Comparing with it, rather than with the previous trace,
  also catches a route that changes at a hop that happened to be silent in between.
- ``compare_paths`` decides: ``same``; ``silence`` (the same route, only which routers answered
  differs: **not** a path change; the known route learns the addresses that answered);
  ``rerouted`` (a path change event, with the old and new path and a description).

Nothing here imports Django.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from probes.checks.traceroute import PathChange, TraceResult, compare_paths, path_fingerprint

Path = tuple[str | None, ...]
Kind = Literal["", "first", "same", "silence", "rerouted"]


@dataclass(frozen=True)
class Route:
    path: Path
    since: float  # epoch seconds of the first trace that showed this route

    @property
    def fingerprint(self) -> str:
        return path_fingerprint(self.path)


@dataclass(frozen=True)
class Verdict:
    kind: Kind  # "" when the trace was not compared (did not reach the target)
    route: Route | None  # the route as known after this trace
    previous: Route | None = None  # rerouted: the route it replaced
    change: PathChange | None = None  # rerouted: how the paths differ


def observe(known: Route | None, result: TraceResult, at: float) -> Verdict:
    """Compare ``result`` (a trace started at ``at``) with the route as known."""
    if not result.reached or not result.hops:
        return Verdict("", known)
    path = result.path
    if known is None:
        return Verdict("first", Route(path, at))
    change = compare_paths(known.path, path)
    if change.kind == "same":
        return Verdict("same", known)
    if change.kind == "silence":
        return Verdict("silence", Route(fill_in(known.path, path), known.since))
    return Verdict("rerouted", Route(path, at), known, change)


def fill_in(known: Sequence[str | None], new: Sequence[str | None]) -> Path:
    """``new`` with its silent hops taken from ``known`` (paths of the same route and length)."""
    return tuple(address if address is not None else old for old, address in zip(known, new, strict=True))

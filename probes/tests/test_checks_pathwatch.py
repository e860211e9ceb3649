"""Which differences between traces of a pair are path changes (synthetic traces)."""

from probes.checks.pathwatch import Route, fill_in, observe
from probes.checks.traceroute import Hop, TraceResult, path_fingerprint

A, B, C, D, T = "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "198.51.100.9"


def traced(*path: str | None, reached: bool = True, status: str = "") -> TraceResult:
    hops = tuple(
        Hop(ttl=ttl, address=address, sent=3, received=0 if address is None else 3,
            rtt_avg_ms=None if address is None else float(ttl))
        for ttl, address in enumerate(path, start=1)
    )  # fmt: skip
    return TraceResult(
        destination=T, address=T, status=status or ("ok" if reached else "unreached"), hops=hops,  # type: ignore[arg-type]
        reached=reached, started_at=0.0,
    )  # fmt: skip


def test_the_first_complete_trace_sets_the_route() -> None:
    verdict = observe(None, traced(A, B, T), at=100.0)

    assert verdict.kind == "first" and verdict.route == Route((A, B, T), 100.0)
    assert verdict.route.fingerprint == path_fingerprint([A, B, T])


def test_a_new_route_is_one_change_with_the_old_and_new_path() -> None:
    known = Route((A, B, T), 100.0)

    verdict = observe(known, traced(A, C, T), at=200.0)

    assert verdict.kind == "rerouted" and verdict.previous == known
    assert verdict.route == Route((A, C, T), 200.0)
    assert verdict.change is not None and verdict.change.description == f"hop 2 {B} -> {C}"
    assert observe(verdict.route, traced(A, C, T), at=300.0).kind == "same"  # and only one


def test_a_router_going_silent_is_not_a_change_and_the_route_keeps_its_address() -> None:
    known = Route((A, B, T), 100.0)

    silent = observe(known, traced(A, None, T), at=200.0)
    back = observe(silent.route, traced(A, B, T), at=300.0)

    assert silent.kind == "silence" and silent.route == known and silent.change is None
    assert back.kind == "same"


def test_a_route_change_hidden_behind_a_silent_hop_is_still_seen() -> None:
    known = Route((A, B, T), 100.0)
    silent = observe(known, traced(A, None, T), at=200.0)

    moved = observe(silent.route, traced(A, C, T), at=300.0)

    assert moved.kind == "rerouted" and moved.previous == Route((A, B, T), 100.0)


def test_a_hop_that_starts_answering_is_learnt() -> None:
    known = Route((A, None, T), 100.0)

    verdict = observe(known, traced(A, B, T), at=200.0)

    assert verdict.kind == "silence" and verdict.route == Route((A, B, T), 100.0)


def test_traces_that_do_not_reach_the_target_are_not_compared() -> None:
    known = Route((A, B, C, T), 100.0)

    for trace in (traced(A, B, reached=False), traced(reached=False, status="unavailable")):
        verdict = observe(known, trace, at=200.0)
        assert verdict.kind == "" and verdict.route == known and verdict.change is None
    assert observe(known, traced(A, B, C, T), at=300.0).kind == "same"  # the outage was not a change
    assert observe(None, traced(A, reached=False), at=1.0).route is None


def test_fill_in_takes_silent_hops_from_the_known_route() -> None:
    assert fill_in((A, B, None), (A, None, C)) == (A, B, C)

"""The dashboard in a real headless Chromium against a live server and the test database.

What a NOC operator sees: the matrix and its colours, the views, the filters, the member
badges and tooltip, the prober SLA, and member-supplied strings shown as text, never markup.
Screenshots go to .netring/screenshots/ for a human look.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone

from dashboard import views
from members import services as member_services
from members.models import Location, Member
from probes import bandwidth_services, partitions, traceroute_services
from probes import services as mesh_services
from probes.checks.bandwidth import BandwidthResult
from probes.checks.result import CheckResult
from probes.checks.traceroute import TraceResult, build_hops
from probes.models import ProberSample, ProberTarget

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".netring" / "screenshots"
XSS_IMG = '<img src=x onerror="window.__pwned=1">'
XSS_SCRIPT = "<script>window.__pwned=1</script>"
MATRIX_URL = re.compile(r"/api/v1/mesh/matrix/")
SEED_COLOURS = {  # the seed's green, yellow, red and purple, as the browser computes them
    "online": "rgb(34, 197, 94)",
    "stale": "rgb(234, 179, 8)",
    "offline": "rgb(239, 68, 68)",
    "deregistered": "rgb(168, 85, 247)",
}

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


# --- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (CI installs it in .ci/run)")
    with pytest.MonkeyPatch.context() as patch:
        # Playwright's sync API keeps an event loop on this thread; the test's own ORM calls
        # (fixtures, teardown flush) are still plain synchronous code.
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_api.sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                    "--disable-sync",
                ],
            )
            yield chromium
            chromium.close()


@dataclass
class Dashboard:
    page: Any
    url: str
    errors: list[str]

    def open(self, hash_: str = "") -> Any:
        self.page.goto(self.url + "/" + (f"#{hash_}" if hash_ else ""))
        expect(self.page.locator("#status")).to_have_class(re.compile(r"\bok\b"))
        return self.page

    def view(self, name: str) -> None:
        self.page.locator(f'.views [data-view="{name}"]').click()
        expect(self.page.locator(f"#view-{name}")).to_be_visible()

    def cell(self, src: str, dst: str) -> Any:
        return self.page.locator(f'#matrix button.cell[data-src="{src}"][data-dst="{dst}"]')

    def member_row(self, hostname: str) -> Any:
        exact = self.page.locator("td.hostname").filter(has_text=re.compile(f"^{re.escape(hostname)}$"))
        return self.page.locator("#members tr.member").filter(has=exact)

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def dashboard(
    browser: Any, live_server: Any, settings: Any, noc: dict[str, Any], django_user_model: Any
) -> Iterator[Dashboard]:
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "localhost", "127.0.0.1"]
    client = Client()
    client.force_login(django_user_model.objects.create_user("wallscreen", "", "a-long-password-4"))
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.add_cookies(
        [
            {
                "name": django_settings.SESSION_COOKIE_NAME,
                "value": client.cookies[django_settings.SESSION_COOKIE_NAME].value,
                "url": live_server.url,
            }
        ]
    )
    context.set_default_timeout(8000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield Dashboard(page, live_server.url, errors)
    context.close()


# --- the data -------------------------------------------------------------------------------


def _member(
    location: str,
    ip: str,
    hostname: str,
    *,
    kind: str = "api",
    version: str = "1.4.0",
    age: float = 0,
    gone: bool = False,
) -> str:
    registration = member_services.register(location=location, ip=ip, port=8757, kind=kind, version=version)
    now = timezone.now()
    # Straight to the table: the API's hostname rule would refuse the XSS probe, an old registry row need not.
    Member.objects.filter(pk=registration.member.pk).update(
        hostname=hostname, last_seen=now - timedelta(seconds=age), deregistered_at=now if gone else None
    )
    return str(registration.member.pk)


def _check(
    kind: str, target: str, ip: str, ok: bool, latency: float, error_class: str = "timeout", status: int = 200
) -> CheckResult:
    common: dict[str, Any] = {"kind": kind, "target": ip, "target_id": target, "ok": ok, "started_at": 0}
    if kind == "icmp":
        if ok:
            return CheckResult(
                **common,
                port=None,
                latency_ms=latency,
                rtt_avg_ms=latency,
                loss_ratio=0.0,
                jitter_ms=0.4,
                packets_sent=5,
                packets_received=5,
            )
        return CheckResult(
            **common, port=None, error_class="unreachable", loss_ratio=1.0, packets_sent=5, packets_received=0
        )
    if kind == "http":
        if ok or error_class == "http_status":
            phases = {"dns_ms": 0.2, "connect_ms": latency / 4, "ttfb_ms": latency * 0.9, "total_ms": latency}
            return CheckResult(
                **common,
                port=8757,
                endpoint="/health",
                latency_ms=latency,
                status_code=status,
                error_class="" if ok else error_class,
                **phases,
            )
        return CheckResult(**common, port=8757, endpoint="/health", error_class=error_class, error="no answer in 10 s")
    if ok:
        return CheckResult(**common, port=8757, latency_ms=latency)
    return CheckResult(**common, port=8757, error_class=error_class, error="connect timed out")


@pytest.fixture
def noc(transactional_db: None) -> dict[str, Any]:
    """Three locations, members in every status, 20 mesh rounds and 10 minutes of prober samples.

    us1 -> ap1 is failing now (the red cell), eu1 -> us1 is slow, ap1 -> us1 has one failed
    HTTP check (degraded); member-supplied strings carry XSS probes.
    """
    Location.objects.create(name="us1", description=XSS_IMG, expected_members=2, criticality="high")
    Location.objects.create(name="eu1", expected_members=1)
    Location.objects.create(name="ap1", expected_members=3)
    ids = {
        "edge-us1": _member("us1", "10.0.1.1", "edge-us1", kind="edge", version=XSS_IMG),
        "api-us1-b": _member("us1", "10.0.1.2", "api-us1-b", age=120),
        "edge-eu1": _member("eu1", "10.0.2.1", "edge-eu1", kind="edge"),
        "xss-eu1": _member("eu1", "10.0.2.2", XSS_IMG),
        "api-ap1": _member("ap1", "10.0.3.1", "api-ap1"),
        "api-ap1-old": _member("ap1", "10.0.3.2", "api-ap1-old", age=3600),
        "api-ap1-gone": _member("ap1", "10.0.3.3", "api-ap1-gone", gone=True),
    }
    members = {m.instance_id.hex: m for m in Member.objects.select_related("location")}
    where = {str(m.instance_id): m.location.name for m in members.values()}
    ip = {str(m.instance_id): m.ip for m in members.values()}
    now = timezone.now()
    targets = {
        "us1": ["edge-eu1", "xss-eu1", "api-ap1"],
        "eu1": ["edge-us1", "api-us1-b", "api-ap1"],
        "ap1": ["edge-us1", "api-us1-b", "edge-eu1"],
    }
    sources = {"us1": ids["edge-us1"], "eu1": ids["edge-eu1"], "ap1": ids["api-ap1"]}
    for number in range(20):
        started = now - timedelta(seconds=10 + 60 * (19 - number))
        wave = 1 + 0.3 * math.sin(number / 2)
        for source, names in targets.items():
            results = []
            for name in names:
                target = ids[name]
                location = where[target]
                failing = source == "us1" and location == "ap1" and number >= 15
                base = {"eu1": 12.0, "us1": 180.0 if source == "eu1" else 25.0, "ap1": 41.0}[location] * (
                    1 if location == "ap1" else wave
                )
                results += [_check(kind, target, ip[target], not failing, base) for kind in ("tcp", "icmp")]
                if source == "ap1" and name == "api-us1-b" and number == 19:
                    results.append(_check("http", target, ip[target], False, base, "http_status", 503))
                else:
                    results.append(_check("http", target, ip[target], not failing, base))
            mesh_services.store_round(
                mesh_services.RoundSource(source, sources[source], number, started), results, where
            )
    _prober(now)
    return ids


def _prober(now: datetime) -> None:
    table = ProberSample._meta.db_table
    partitions.ensure(table, (now - timedelta(days=1)).date(), now.date())
    web = ProberTarget.objects.create(name="example-web", url="https://example.test/health", group="internet")
    evil = ProberTarget.objects.create(name=XSS_SCRIPT, url="https://evil.test/?q=<b>1</b>")
    rows = []
    for location in ("us1", "eu1"):
        for tick in range(600):
            ts = (now - timedelta(seconds=600 - tick)).replace(microsecond=0)
            for target in (web, evil):
                down = (location == "us1" and target is web and 300 <= tick < 340) or (
                    location == "eu1" and target is evil and tick >= 580
                )
                total = 30.0 + (tick % 7) * 3 + (40 if target is evil else 0)
                rows.append(
                    ProberSample(
                        ts=ts, probe_id=tick, location=location, source=target.url, target_id=target.pk,
                        ok=not down, disconnected=down, status=None if down else 200,
                        error_class="timeout" if down else "", error="no answer in 1.5 s" if down else "",
                        dns_ms=None if down else 1.0, connect_ms=None if down else 5.0, tls_ms=None if down else 12.0,
                        ttfb_ms=None if down else total - 2, total_ms=None if down else total,
                    )
                )  # fmt: skip
    ProberSample.objects.bulk_create(rows, batch_size=2000)


# --- the tests ------------------------------------------------------------------------------


def test_the_matrix_colours_pairs_by_failures_and_latency(dashboard: Dashboard) -> None:
    page = dashboard.open()

    expect(dashboard.cell("us1", "ap1")).to_have_class(re.compile(r"\bcell-down\b"))
    expect(dashboard.cell("us1", "ap1")).to_contain_text("DOWN")
    expect(dashboard.cell("us1", "ap1")).to_contain_text("3/3 failed")
    expect(dashboard.cell("ap1", "us1")).to_have_class(re.compile(r"\bcell-degraded\b"))
    expect(dashboard.cell("eu1", "us1")).to_have_class(re.compile(r"\bcell-slow\b"))
    expect(dashboard.cell("us1", "eu1")).to_have_class(re.compile(r"\bcell-ok\b"))
    expect(page.locator("#matrix td.cell-self")).to_have_count(3)  # a location does not check itself
    expect(page.locator("#matrix-summary")).to_have_text("6 location pairs1 down1 degraded1 slow3 ok")
    expect(page.locator("#matrix thead th").nth(1)).to_contain_text("2 missing")  # ap1: 1 of 3 present
    dashboard.screenshot("matrix")

    page.locator('.kinds [data-kind="tcp"]').click()

    expect(dashboard.cell("ap1", "us1")).to_have_class(re.compile(r"\bcell-ok\b"))  # only its HTTP check failed
    expect(dashboard.cell("us1", "ap1")).to_contain_text("1/1 failed")
    assert "kind=tcp" in page.url
    assert dashboard.errors == []


def test_a_cell_opens_the_pair_and_failures_only_narrows_everything(dashboard: Dashboard) -> None:
    page = dashboard.open()
    rows = page.locator("#pair-rows tbody tr")

    dashboard.cell("ap1", "us1").click()

    expect(page.locator("#pair-title")).to_have_text("ap1 → us1 · all checks")
    expect(rows).to_have_count(6)  # two members of us1, three checks each
    expect(rows.first).to_contain_text("http_status")  # failures first
    expect(rows.first).to_contain_text("HTTP 503")
    expect(page.locator("#pair-chart polyline")).to_have_count(3)  # TCP, HTTP and ICMP over the hour
    expect(page.locator("#matrix tbody tr")).to_have_count(3)
    dashboard.screenshot("pair")

    page.locator("#f-fail").check()

    expect(rows).to_have_count(1)
    expect(page.locator("#matrix tbody tr")).to_have_count(2)  # eu1 has no failing pair
    expect(dashboard.cell("eu1", "us1")).to_have_count(0)

    page.reload()  # the hash is the bookmark of the screen

    expect(page.locator("#f-fail")).to_be_checked()
    expect(page.locator("#pair-title")).to_have_text("ap1 → us1 · all checks")
    expect(rows).to_have_count(1)
    page.locator("#f-lat").fill("100")
    expect(page.locator("#matrix tbody tr")).to_have_count(2)
    assert "fail=1" in page.url and "psrc=ap1" in page.url
    assert dashboard.errors == []


def test_members_show_status_badges_in_the_seed_colours_and_offline_can_be_hidden(dashboard: Dashboard) -> None:
    page = dashboard.open("view=members")
    badges = page.locator("#members .badge")

    expect(page.locator("#members tr.member")).to_have_count(7)
    for status, colour in SEED_COLOURS.items():
        badge = page.locator(f"#members .badge.status-{status}").first
        expect(badge).to_have_text(status)
        expect(badge).to_have_css("background-color", colour)
    expect(dashboard.member_row("api-ap1-gone")).to_have_class(re.compile(r"\bstatus-deregistered\b"))
    expect(page.locator('#locations tr[data-location="ap1"]')).to_contain_text("2 missing")
    expect(page.locator("#member-summary")).to_contain_text("4 online")
    dashboard.screenshot("members")

    page.locator("#f-offline").uncheck()

    expect(page.locator("#members tr.member")).to_have_count(5)
    expect(badges.filter(has_text="offline")).to_have_count(0)
    expect(badges.filter(has_text="deregistered")).to_have_count(0)
    expect(page.locator("#member-summary")).to_contain_text("2 hidden by filters")

    page.locator("#f-fail").check()

    expect(page.locator("#members tr.member")).to_have_count(1)  # the stale one
    expect(page.locator("#locations tbody tr")).to_have_count(1)  # ap1, with missing members
    assert "offline=0" in page.url and "view=members" in page.url
    assert dashboard.errors == []


def test_hovering_a_member_shows_its_latest_stats_beside_the_row(dashboard: Dashboard, monkeypatch: Any) -> None:
    monkeypatch.setattr(views, "POLL_SECONDS", 1)
    page = dashboard.open("view=members")
    tooltip = page.locator("#tooltip")
    row = dashboard.member_row("api-ap1")

    row.locator(".instance").hover()

    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text("api-ap1")
    expect(tooltip.locator(".tt-figure").first).to_contain_text("50%")  # failing from us1, fine from eu1
    expect(tooltip).to_contain_text("41 ms")
    expect(tooltip).to_contain_text("from eu1, us1")
    expect(tooltip).to_contain_text(re.compile(r"Next heartbeat expected in \d+ s"))
    expect(tooltip).to_contain_text(re.compile(r"Next mesh check in ~\d+ s"))
    cell, tip = row.locator(".instance").bounding_box(), tooltip.bounding_box()
    assert tip["x"] >= cell["x"] + cell["width"] or tip["x"] + tip["width"] <= cell["x"]  # beside, not over
    assert tip["y"] >= 0 and tip["y"] + tip["height"] <= 900 and tip["x"] + tip["width"] <= 1440
    dashboard.screenshot("tooltip")
    updated = page.locator("#status-text").text_content()
    expect(page.locator("#status-text")).not_to_have_text(updated or "")  # the next poll re-rendered the rows
    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text("api-ap1")

    dashboard.member_row("api-us1-b").locator(".instance").hover()
    expect(tooltip).to_contain_text(re.compile(r"Heartbeat overdue by \d+ s"))
    page.mouse.move(1, 1)
    expect(tooltip).to_be_hidden()
    assert dashboard.errors == []


def test_the_prober_view_shows_uptime_coverage_downtime_and_percentiles(dashboard: Dashboard) -> None:
    page = dashboard.open("view=prober")
    rows = page.locator("#prober tr.pair")
    web_us1 = rows.filter(has_text="example-web").filter(has=page.locator("td.loc", has_text="us1"))

    expect(rows).to_have_count(6)  # two targets at three locations (ap1 has no prober: no samples)
    expect(web_us1.locator("td.now")).to_contain_text("UP 200")
    expect(web_us1.locator(".chip")).to_have_text("internet")
    expect(web_us1).to_contain_text("1 event · 40 s")
    expect(web_us1.locator("td.uptime").first).to_have_class(re.compile(r"\bbad\b"))  # 40 of 600 s down
    expect(web_us1.locator("td.uptime").first).to_have_text(re.compile(r"^9[0-9]\.\d\d%$"))
    expect(
        rows.filter(has=page.locator("td.loc", has_text="eu1")).filter(has=page.locator("td.now.down"))
    ).to_have_count(1)

    web_us1.click()

    detail = page.locator("#prober tr.detail")
    expect(detail).to_contain_text("ttfb")
    expect(detail).to_contain_text(re.compile(r"\d\d:\d\d:\d\d \u2013 \d\d:\d\d:\d\d: 40 s down"))
    dashboard.screenshot("prober")

    page.locator("#f-fail").check()
    expect(rows).to_have_count(2)  # us1 example-web (an outage), eu1's down target
    assert dashboard.errors == []


def test_member_and_user_strings_render_as_text(dashboard: Dashboard) -> None:
    page = dashboard.open("view=members")

    expect(page.locator("#members td.hostname", has_text=XSS_IMG)).to_have_count(1)
    expect(page.locator("#members td.version", has_text=XSS_IMG)).to_have_count(1)
    expect(page.locator('#locations tr[data-location="us1"] td').nth(1)).to_have_text(XSS_IMG)
    dashboard.member_row(XSS_IMG).locator(".instance").hover()
    expect(page.locator("#tooltip .tt-name")).to_have_text(XSS_IMG)
    dashboard.view("prober")
    expect(page.locator("#prober td.target .name", has_text=XSS_SCRIPT).first).to_have_text(XSS_SCRIPT)
    expect(page.locator("#prober td.target .url", has_text="<b>1</b>").first).to_be_visible()
    dashboard.view("matrix")
    assert XSS_IMG in (page.locator('#matrix th[scope="row"]', has_text="us1").get_attribute("title") or "")

    assert page.locator('main img, main b, main script:not([type="application/json"])').count() == 0
    assert page.evaluate("window.__pwned") is None
    assert dashboard.errors == []


def test_it_reports_failed_updates_recovers_and_pauses_while_hidden(dashboard: Dashboard, monkeypatch: Any) -> None:
    monkeypatch.setattr(views, "POLL_SECONDS", 1)
    page = dashboard.open()
    status = page.locator("#status")
    failing: Callable[[Any], None] = lambda route: route.fulfill(status=500, json={"detail": "database unavailable"})  # noqa: E731

    page.route(MATRIX_URL, failing)

    expect(status).to_have_class(re.compile(r"\berror\b"))
    expect(status).to_contain_text("500 database unavailable")
    expect(dashboard.cell("us1", "ap1")).to_have_class(re.compile(r"\bcell-down\b"))  # the last data stays

    page.unroute(MATRIX_URL, failing)

    expect(status).to_have_class(re.compile(r"\bok\b"))
    expect(status).to_contain_text("Live · updated")

    page.evaluate(
        "Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    expect(status).to_have_class(re.compile(r"\bpaused\b"))
    assert all("500" in e for e in dashboard.errors)  # only the injected failures


def test_it_fits_a_phone_screen(dashboard: Dashboard) -> None:
    dashboard.page.set_viewport_size({"width": 390, "height": 844})
    page = dashboard.open("view=members")

    expect(page.locator("#members tr.member")).to_have_count(7)
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    dashboard.screenshot("members-phone")
    dashboard.view("matrix")
    expect(dashboard.cell("us1", "ap1")).to_have_class(re.compile(r"\bcell-down\b"))
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    dashboard.screenshot("matrix-phone")
    assert dashboard.errors == []


def test_the_bandwidth_and_traceroute_views_show_rates_paths_and_changes(
    dashboard: Dashboard, noc: dict[str, Any]
) -> None:
    eu1 = {"instance_id": noc["edge-eu1"], "host": "10.0.2.1", "port": 8757, "location": "eu1"}
    source = bandwidth_services.Source("us1", noc["edge-us1"])
    test = {"round_id": 1, "slot": 0, "attempt": 0, "not_after": 0, "target": eu1}
    now = timezone.now().timestamp()
    results = [
        BandwidthResult(target="10.0.2.1:8757", direction="download", method="duration", ok=True, mbps=47.8,
                        window_s=4.5, omitted_s=0.5, stable=True, bytes_total=30_000_000, started_at=now - 60),
        BandwidthResult(target="10.0.2.1:8757", direction="upload", method="duration", ok=False,
                        error_class="timeout", error="no data for 5 s", started_at=now - 55),
    ]  # fmt: skip
    bandwidth_services.store_results(source, test, results, bandwidth_services.BandwidthOptions(5.0, 10**9))
    for number, via in ((1, "10.9.0.2"), (2, "10.9.0.3")):
        answers = {1: [("10.9.0.1", 1.0, "time-exceeded")], 2: [(via, 11.0, "time-exceeded")],
                   3: [("10.0.2.1", 12.0, "echo-reply")]}  # fmt: skip
        trace = TraceResult(destination="10.0.2.1", address="10.0.2.1", status="ok", reached=True,
                            hops=build_hops(answers, {}), started_at=now - 600 + number * 300)  # fmt: skip
        round_source = mesh_services.RoundSource("us1", noc["edge-us1"], number, timezone.now())
        traceroute_services.store_traces(round_source, [eu1], [trace])

    page = dashboard.open("view=bandwidth")
    pair = page.locator("#bandwidth tr.pair")
    expect(pair).to_have_count(1)
    expect(pair.locator("td").nth(3)).to_have_text("47.8 Mbit/s")
    expect(pair.locator("td").nth(4)).to_have_text("timeout")
    dashboard.screenshot("bandwidth")

    dashboard.view("traceroute")
    trace_row = page.locator("#traceroute tr.pair")
    expect(trace_row).to_have_count(1)
    expect(trace_row).to_contain_text("hop 2 10.9.0.3 +10 ms")
    expect(trace_row).to_contain_text("10.9.0.1 → 10.9.0.3 → 10.0.2.1")
    trace_row.click()
    detail = page.locator("#traceroute tr.detail")
    expect(detail.locator("table.hops tbody tr")).to_have_count(3)
    expect(detail).to_contain_text("hop 2 10.9.0.2 -> 10.9.0.3")
    dashboard.screenshot("traceroute")
    assert dashboard.errors == []

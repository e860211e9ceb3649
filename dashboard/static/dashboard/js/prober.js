// The Prober view: per location and target, the last second's sample and the SLA report of the
// last hour and day (uptime, coverage, downtime events, phase percentiles).
//
// SLA reports are real queries over 1 Hz samples, so they are refreshed less often than the
// 5 s poll (see RANGES) and only while this view is on screen; "Now" is live every poll.

import { getAll, getJSON, inBatches, serverNow } from "./api.js";
import { clock, el, fill, ms, pct, row, seconds } from "./dom.js";
import { state } from "./state.js";

const RANGES = { "1h": { seconds: 3600, refreshMs: 30000 }, "24h": { seconds: 86400, refreshMs: 120000 } };
const PHASES = ["dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "total_ms"];
const NOW_WINDOW_S = 15;
const expanded = new Set();
const reports = new Map(); // pair key + range -> {at, report} or {at, error}
let lastReportAt = null;

function pairKey(location, target) {
  return JSON.stringify([location, target.id, target.url]);
}

export function proberPairs(ctx) {
  const everywhere = ctx.store.locations.map((l) => l.name);
  const pairs = [];
  for (const target of ctx.store.prober.targets) {
    const where = target.locations.length ? target.locations : everywhere;
    for (const location of where) {
      if (!state.src || location === state.src) pairs.push({ location, target, key: pairKey(location, target) });
    }
  }
  return pairs.sort((a, b) => a.location.localeCompare(b.location) || a.target.name.localeCompare(b.target.name));
}

function reportOf(pair, range) {
  return reports.get(pair.key + range);
}

async function fetchReport(pair, range) {
  const key = pair.key + range;
  const start = new Date(serverNow() - RANGES[range].seconds * 1000).toISOString();
  try {
    const report = await getJSON("/api/v1/prober/sla/", { location: pair.location, source: pair.target.url, start });
    reports.set(key, { at: serverNow(), report });
    lastReportAt = new Date();
  } catch (err) {
    reports.set(key, { at: serverNow(), error: err.message });
    throw err;
  }
}

export async function refreshProber(ctx) {
  const since = new Date(serverNow() - NOW_WINDOW_S * 1000).toISOString();
  const [targets, samples] = await Promise.all([
    getAll("/api/v1/prober/targets/", { enabled: "true" }),
    getAll("/api/v1/prober/samples/", { since, location: state.src }),
  ]);
  ctx.store.prober = { targets, samples };
  const jobs = [];
  for (const pair of proberPairs(ctx)) {
    for (const [range, { refreshMs }] of Object.entries(RANGES)) {
      const cached = reportOf(pair, range);
      if (!cached || serverNow() - cached.at > refreshMs) jobs.push(() => fetchReport(pair, range).catch((e) => e));
    }
  }
  const failures = (await inBatches(jobs, 4)).filter((r) => r instanceof Error);
  if (failures.length) throw failures[0];
}

function latestSamples(ctx) {
  const latest = new Map();
  for (const s of ctx.store.prober.samples) {
    const key = JSON.stringify([s.location, s.target_id, s.source]);
    const seen = latest.get(key);
    if (!seen || seen.ts < s.ts) latest.set(key, s);
  }
  return latest;
}

function uptimeTone(value) {
  if (value === null || value === undefined) return "none";
  if (value >= 99.9) return "good";
  if (value >= 99) return "warn";
  return "bad";
}

function uptimeCell(entry) {
  if (!entry) return el("td", { className: "num muted" }, "…");
  if (entry.error) return el("td", { className: "num error", title: entry.error }, "error");
  const r = entry.report;
  const text = r.uptime_pct === null ? "no data" : pct(r.uptime_pct, r.uptime_pct >= 99.995 ? 0 : 2);
  return el("td", { className: "num uptime " + uptimeTone(r.uptime_pct) }, text);
}

function coverageCell(entry) {
  if (!entry || entry.error) return el("td", { className: "num opt muted" }, "…");
  if (entry.report.samples === 0) return el("td", { className: "num opt muted" }, "0%");
  const c = entry.report.coverage_pct;
  return el("td", { className: "num opt" + (c < 90 ? " warn" : "") }, pct(c, c >= 99.995 ? 0 : 1));
}

function nowCell(sample) {
  if (!sample) return el("td", { className: "now none", title: `no sample in the last ${NOW_WINDOW_S} s` }, "no sample");
  const when = `${seconds((serverNow() - Date.parse(sample.ts)) / 1000)} ago`;
  if (sample.ok) return el("td", { className: "now up", title: when }, `UP ${sample.status ?? ""} · ${ms(sample.total_ms)}`);
  const why = sample.error_class || (sample.status ? `HTTP ${sample.status}` : "failed");
  return el("td", { className: "now down", title: `${when}: ${sample.error}` }, `DOWN ${why}`);
}

function downtimeCell(entry) {
  if (!entry || entry.error) return el("td", { className: "muted" }, "…");
  const events = entry.report.downtime_events;
  if (entry.report.samples === 0) return el("td", { className: "muted" }, "—");
  if (!events.length) return el("td", { className: "good" }, "none");
  const total = events.reduce((sum, e) => sum + e.duration_s, 0);
  return el("td", { className: "bad" }, `${events.length} event${events.length > 1 ? "s" : ""} · ${seconds(total)}`);
}

function percentiles(entry, phase) {
  const p = entry && entry.report && entry.report.latency_ms[phase];
  return p ? `${ms(p.p50, 0)} / ${ms(p.p95, 0)} / ${ms(p.p99, 0)}`.replace(/ ms \//g, " /") : "—";
}

function problem(entry1h, entry24h, sample) {
  const hourDown = entry1h && entry1h.report && entry1h.report.uptime_pct !== null && entry1h.report.uptime_pct < 100;
  const dayEvents = entry24h && entry24h.report && entry24h.report.downtime_events.length > 0;
  return Boolean((sample && !sample.ok) || hourDown || dayEvents);
}

function detailRow(pair, entry1h, entry24h) {
  const phaseRows = PHASES.map((phase) => row([phase.replace("_ms", ""), percentiles(entry1h, phase), percentiles(entry24h, phase)]));
  const phases = el(
    "table",
    { className: "grid inner" },
    el("thead", null, el("tr", null, el("th", null, "Phase"), el("th", null, "1 h p50 / p95 / p99"), el("th", null, "24 h p50 / p95 / p99"))),
    el("tbody", null, phaseRows),
  );
  const events = (entry24h && entry24h.report && entry24h.report.downtime_events) || [];
  const list = events.length
    ? el(
        "ol",
        { className: "events" },
        events.map((e) => {
          const exact = e.bounded_start && e.bounded_end;
          const [start, end] = [new Date(e.start), new Date(e.end)];
          const day = start.toDateString() === new Date().toDateString() ? "" : start.toLocaleDateString() + " ";
          // Unbounded: the outage runs to the end of the range (ongoing) or into seconds without samples.
          const ongoing = Date.parse(entry24h.report.end) - end.getTime() <= 2000;
          const until = e.bounded_end ? clock(end) : ongoing ? "now" : `${clock(end)}, then no samples`;
          return el("li", null, `${day}${clock(start)} – ${until}: ${exact ? "" : "at least "}${seconds(e.duration_s)} down`);
        }),
      )
    : el("p", { className: "muted" }, "No downtime in the last 24 h.");
  const samples = entry24h && entry24h.report ? `${entry24h.report.samples} samples in 24 h, ${pct((entry24h.report.failure_ratio || 0) * 100, 2)} failed` : "";
  return el(
    "tr",
    { className: "detail" },
    el(
      "td",
      { colspan: 9 },
      el("div", { className: "detail-grid" }, el("div", null, el("h3", null, "Phase latency (successful samples)"), phases), el("div", null, el("h3", null, "Downtime events (24 h)"), list, el("p", { className: "muted" }, samples))),
    ),
  );
}

export function renderProber(ctx) {
  const body = document.querySelector("#prober tbody");
  const empty = document.getElementById("prober-empty");
  const now = latestSamples(ctx);
  const rows = [];
  // Locations without samples (no prober runs there) go last; the rest keep a stable order.
  const hasNoData = (pair) => Boolean(reportOf(pair, "24h")?.report?.samples === 0);
  const pairs = proberPairs(ctx).sort((a, b) => hasNoData(a) - hasNoData(b));
  for (const pair of pairs) {
    const [e1, e24] = [reportOf(pair, "1h"), reportOf(pair, "24h")];
    const sample = now.get(pair.key);
    if (state.fail && !problem(e1, e24, sample)) continue;
    if (state.lat !== null) {
      const p95 = e1 && e1.report && e1.report.latency_ms.total_ms && e1.report.latency_ms.total_ms.p95;
      if (!(p95 >= state.lat)) continue;
    }
    const nodata = e24 && e24.report && e24.report.samples === 0;
    const target = el(
      "td",
      { className: "target" },
      el("span", { className: "name" }, pair.target.name),
      pair.target.group ? el("span", { className: "chip" }, pair.target.group) : null,
      el("span", { className: "url" }, pair.target.url),
    );
    const open = expanded.has(pair.key);
    rows.push(
      row(
        [
          el("td", { className: "loc" }, pair.location),
          target,
          nowCell(sample),
          uptimeCell(e1),
          coverageCell(e1),
          uptimeCell(e24),
          coverageCell(e24),
          downtimeCell(e24),
          el("td", { className: "num" }, percentiles(e1, "total_ms")),
        ],
        { className: "pair" + (open ? " open" : "") + (nodata ? " nodata" : ""), tabindex: "0", "aria-expanded": String(open), dataset: { key: pair.key } },
      ),
    );
    if (open) rows.push(detailRow(pair, e1, e24));
  }
  fill(body, rows);
  empty.hidden = rows.length > 0;
  empty.textContent = ctx.store.prober.targets.length ? "No prober results match the filters." : "No prober targets: add them under Admin → Prober targets.";
  document.getElementById("prober-asof").textContent = lastReportAt ? `SLA figures as of ${clock(lastReportAt)}.` : "";
}

export function toggleProberRow(key) {
  if (expanded.has(key)) expanded.delete(key);
  else expanded.add(key);
}

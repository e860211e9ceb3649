// The Matrix view: source location x target location, one cell per pair of the latest results,
// and the detail panel of a pair (its latest rows and an hour of latency).

import { getAll, serverNow } from "./api.js";
import { el, fill, ms, row, seconds, shortId, svg } from "./dom.js";
import { state } from "./state.js";

const DEFAULT_SLOW_MS = 150;
const KIND_COLOURS = { tcp: "#38bdf8", http: "#c084fc", icmp: "#fb923c" };

export function slowThreshold() {
  return state.lat !== null ? state.lat : DEFAULT_SLOW_MS;
}

function filtering() {
  return state.fail || state.lat !== null;
}

// Cells of the chosen kind, summed per location pair ("all" adds the kinds up).
export function aggregate(cells, kind) {
  const pairs = new Map();
  for (const c of cells) {
    if (kind !== "all" && c.kind !== kind) continue;
    const key = c.source_location + "\u0000" + c.target_location;
    let a = pairs.get(key);
    if (!a) {
      a = { checks: 0, failed: 0, latSum: 0, latWeight: 0, latMax: null, lossMax: null, ts: null };
      pairs.set(key, a);
    }
    a.checks += c.checks;
    a.failed += c.failed;
    if (c.latency_ms_avg !== null) {
      const weight = Math.max(1, c.checks - c.failed); // failed checks have no latency
      a.latSum += c.latency_ms_avg * weight;
      a.latWeight += weight;
    }
    if (c.latency_ms_max !== null) a.latMax = Math.max(a.latMax ?? 0, c.latency_ms_max);
    if (c.loss_ratio_max !== null) a.lossMax = Math.max(a.lossMax ?? 0, c.loss_ratio_max);
    const ts = Date.parse(c.ts);
    a.ts = a.ts === null ? ts : Math.min(a.ts, ts);
  }
  for (const a of pairs.values()) a.latAvg = a.latWeight ? a.latSum / a.latWeight : null;
  return pairs;
}

export function cellState(a) {
  if (!a || a.checks === 0) return "empty";
  if (a.failed === a.checks) return "down";
  if (a.failed > 0) return "degraded";
  if (a.latAvg !== null && a.latAvg >= slowThreshold()) return "slow";
  return "ok";
}

function visible(a) {
  if (!filtering()) return true;
  if (!a) return false;
  if (state.fail && a.failed === 0) return false;
  if (state.lat !== null && a.failed === 0 && (a.latMax === null || a.latMax < state.lat)) return false;
  return true;
}

function locationHeader(tag, name, info, scope) {
  const parts = [name];
  if (info && info.description) parts.push(info.description);
  if (info) parts.push(`${info.members_present} present, ${info.expected_members} expected`);
  const th = el(tag, { scope, title: parts.join(" · ") }, el("span", { className: "loc" }, name));
  if (info && info.members_missing > 0) th.append(el("span", { className: "missing" }, `${info.members_missing} missing`));
  return th;
}

function cellTitle(src, dst, a, old) {
  const kind = state.kind === "all" ? "all checks" : state.kind.toUpperCase();
  if (!a) return `${src} → ${dst} · ${kind}: no results`;
  const lines = [
    `${src} → ${dst} · ${kind}`,
    `${a.checks} checks, ${a.failed} failed`,
    `latency avg ${ms(a.latAvg)}, max ${ms(a.latMax)}`,
  ];
  if (a.lossMax !== null) lines.push(`ICMP loss up to ${Math.round(a.lossMax * 100)}%`);
  lines.push(`oldest result ${seconds((serverNow() - a.ts) / 1000)} ago${old ? " (old: no recent round)" : ""}`);
  return lines.join("\n");
}

function cell(src, dst, a, ctx) {
  if (!visible(a)) return el("td", { className: "mcell cell-filtered" }, "·");
  if (src === dst && !a) {
    // A location does not check itself: its members share a network.
    return el("td", { className: "mcell cell-self", title: `${src}: a location does not check its own members` }, "same location");
  }
  const status = cellState(a);
  const old = a && serverNow() - a.ts > 3 * ctx.config.check_interval * 1000;
  const selected = state.psrc === src && state.pdst === dst;
  let main = "—";
  let sub = "no results";
  if (a) {
    main = status === "down" ? "DOWN" : ms(a.latAvg);
    sub = a.failed ? `${a.failed}/${a.checks} failed` : `${a.checks} ok`;
  }
  const classes = ["cell", "cell-" + status, old ? "cell-old" : "", selected ? "selected" : ""].filter(Boolean);
  const button = el(
    "button",
    { type: "button", className: classes.join(" "), title: cellTitle(src, dst, a, old), dataset: { src, dst } },
    el("span", { className: "main" }, main),
    el("span", { className: "sub" }, sub),
  );
  return el("td", { className: "mcell" }, button);
}

const SUMMARY = [
  ["down", "down", "--down"],
  ["degraded", "degraded", "--degraded"],
  ["slow", "slow", "--warn"],
  ["ok", "ok", "--ok"],
];

function renderSummary(pairs, sources, targets) {
  const counts = { down: 0, degraded: 0, slow: 0, ok: 0 };
  let total = 0;
  for (const s of sources) {
    for (const t of targets) {
      const a = pairs.get(s + "\u0000" + t);
      if (!a || !visible(a)) continue;
      counts[cellState(a)] += 1;
      total += 1;
    }
  }
  const chips = SUMMARY.filter(([key]) => counts[key]).map(([key, label, colour]) =>
    el("span", { className: "chip big", style: `--badge: var(${colour})` }, `${counts[key]} ${label}`),
  );
  fill(document.getElementById("matrix-summary"), el("span", { className: "muted" }, `${total} location pairs`), chips);
}

export function renderMatrix(ctx) {
  const table = document.getElementById("matrix");
  const empty = document.getElementById("matrix-empty");
  if (ctx.store.matrix === null) {
    // Not fetched yet (the page opened on another view): "no results" would be a false alarm.
    table.tHead.replaceChildren();
    table.tBodies[0].replaceChildren();
    document.getElementById("matrix-summary").replaceChildren();
    empty.hidden = false;
    empty.textContent = "Loading mesh results…";
    return;
  }
  const cells = ctx.store.matrix;
  const pairs = aggregate(cells, state.kind);
  const info = new Map(ctx.store.locations.map((l) => [l.name, l]));
  const names = new Set(info.keys());
  for (const c of cells) names.add(c.source_location).add(c.target_location);
  const sorted = [...names].sort();
  let sources = sorted.filter((n) => !state.src || n === state.src);
  let targets = sorted.filter((n) => !state.dst || n === state.dst);
  const at = (s, t) => pairs.get(s + "\u0000" + t);
  if (filtering()) {
    sources = sources.filter((s) => targets.some((t) => visible(at(s, t))));
    targets = targets.filter((t) => sources.some((s) => visible(at(s, t))));
  }
  const [thead, tbody] = [table.tHead, table.tBodies[0]];
  renderSummary(pairs, sources, targets);
  if (!sources.length || !targets.length) {
    thead.replaceChildren();
    tbody.replaceChildren();
    empty.hidden = false;
    empty.textContent = cells.length
      ? "Nothing matches the filters."
      : "No mesh results yet: edge workers fill this in after their first round.";
    return;
  }
  empty.hidden = true;
  fill(thead, el("tr", null, el("th", { className: "corner" }, "from \\ to"), targets.map((t) => locationHeader("th", t, info.get(t), "col"))));
  fill(tbody, sources.map((s) => el("tr", null, locationHeader("th", s, info.get(s), "row"), targets.map((t) => cell(s, t, at(s, t), ctx)))));
}

// --- the pair panel --------------------------------------------------------------------------

export async function loadPair(ctx) {
  if (!state.psrc || !state.pdst) {
    ctx.store.pair = null;
    return;
  }
  const filters = {
    source_location: state.psrc,
    target_location: state.pdst,
    kind: state.kind === "all" ? "" : state.kind,
  };
  const [latest, history] = await Promise.all([
    getAll("/api/v1/mesh/latest/", { ...filters, failures: state.fail ? "true" : "" }),
    getAll("/api/v1/mesh/history/", { ...filters, limit: 10000 }),
  ]);
  ctx.store.pair = { src: state.psrc, dst: state.pdst, latest, history };
}

function resultBadge(r) {
  return r.ok
    ? el("span", { className: "badge result-ok" }, "OK")
    : el("span", { className: "badge result-fail", title: r.error || r.error_class }, r.error_class || "failed");
}

function details(r) {
  if (r.kind === "http") {
    const phases = [["dns", r.dns_ms], ["connect", r.connect_ms], ["tls", r.tls_ms], ["ttfb", r.ttfb_ms]]
      .filter(([, v]) => v !== null)
      .map(([n, v]) => `${n} ${ms(v)}`);
    return [r.status_code !== null ? `HTTP ${r.status_code}` : "", ...phases].filter(Boolean).join(" · ");
  }
  if (r.kind === "icmp") {
    const parts = [];
    if (r.loss_ratio !== null) parts.push(`loss ${Math.round(r.loss_ratio * 100)}%`);
    if (r.packets_sent !== null) parts.push(`${r.packets_received}/${r.packets_sent} replies`);
    if (r.jitter_ms !== null) parts.push(`jitter ${ms(r.jitter_ms)}`);
    return parts.join(" · ");
  }
  return "";
}

function pairRow(r, ctx) {
  const member = ctx.store.membersById.get(r.target_instance);
  const name = (member && member.hostname) || shortId(r.target_instance);
  const target = el("td", { className: "instance", title: r.target_instance, tabindex: "0", dataset: { instance: r.target_instance } }, name);
  const address = r.target_port ? `${r.target_ip}:${r.target_port}` : r.target_ip;
  return row(
    [
      target,
      el("td", { className: "opt mono" }, address),
      `${r.kind.toUpperCase()} ${r.endpoint}`.trim(),
      el("td", null, resultBadge(r)),
      el("td", { className: "num" + (r.latency_ms !== null && r.latency_ms >= slowThreshold() ? " slow" : "") }, ms(r.latency_ms)),
      el("td", { className: "opt" }, details(r)),
      el("td", { className: "opt error", title: r.error }, r.error),
      seconds((serverNow() - Date.parse(r.ts)) / 1000),
    ],
    { className: r.ok ? "" : "failed" },
  );
}

function chart(history) {
  const node = document.getElementById("pair-chart");
  const caption = document.getElementById("pair-chart-caption");
  const [W, H, PAD] = [600, 120, 10];
  const end = serverNow();
  const start = end - 3600 * 1000;
  const x = (ts) => ((ts - start) / (end - start)) * W;
  const byKind = new Map();
  const failures = [];
  let max = 0;
  for (const r of history) {
    const ts = Date.parse(r.ts);
    if (!r.ok) failures.push(ts);
    if (r.latency_ms === null) continue;
    max = Math.max(max, r.latency_ms);
    const rounds = byKind.get(r.kind) || new Map();
    const acc = rounds.get(ts) || [0, 0];
    rounds.set(ts, [acc[0] + r.latency_ms, acc[1] + 1]);
    byKind.set(r.kind, rounds);
  }
  const top = Math.max(1, max * 1.1);
  const y = (v) => H - PAD - (v / top) * (H - 2 * PAD);
  const parts = [svg("rect", { x: 0, y: 0, width: W, height: H, className: "chart-bg" })];
  for (const quarter of [1, 2, 3]) parts.push(svg("line", { x1: (W * quarter) / 4, x2: (W * quarter) / 4, y1: 0, y2: H, className: "chart-grid" }));
  const slow = slowThreshold();
  if (slow < top) parts.push(svg("line", { x1: 0, x2: W, y1: y(slow), y2: y(slow), className: "chart-slow" }));
  for (const [kind, rounds] of [...byKind.entries()].sort()) {
    const points = [...rounds.entries()].sort((a, b) => a[0] - b[0]).map(([ts, [sum, n]]) => `${x(ts).toFixed(1)},${y(sum / n).toFixed(1)}`);
    parts.push(svg("polyline", { points: points.join(" "), stroke: KIND_COLOURS[kind] || "#e5e7eb", className: "chart-line" }));
  }
  for (const ts of failures) parts.push(svg("rect", { x: x(ts) - 1, y: H - 8, width: 2, height: 8, className: "chart-fail" }));
  node.setAttribute("viewBox", `0 0 ${W} ${H}`);
  node.setAttribute("preserveAspectRatio", "none");
  fill(node, parts);
  const legend = [...byKind.keys()].sort().map((k) => el("span", { className: "key", style: `--key: ${KIND_COLOURS[k] || "#e5e7eb"}` }, k.toUpperCase()));
  fill(
    caption,
    history.length ? `Last hour · 0 – ${ms(top, 0)} · ${failures.length} failed checks (red ticks) · dashed: ${ms(slow, 0)} ` : "No results in the last hour.",
    legend,
  );
}

export function renderPair(ctx) {
  const panel = document.getElementById("pair");
  const pair = ctx.store.pair;
  const selected = Boolean(state.psrc && state.pdst);
  panel.hidden = !selected;
  document.getElementById("pair-hint").hidden = selected || !(ctx.store.matrix || []).length;
  if (!selected) return;
  const kind = state.kind === "all" ? "all checks" : state.kind.toUpperCase();
  document.getElementById("pair-title").textContent = `${state.psrc} → ${state.pdst} · ${kind}`;
  const body = document.querySelector("#pair-rows tbody");
  if (!pair || pair.src !== state.psrc || pair.dst !== state.pdst) {
    fill(body, row([el("td", { colspan: 8, className: "muted" }, "Loading…")]));
    return;
  }
  let rows = pair.latest;
  if (state.lat !== null) rows = rows.filter((r) => !r.ok || (r.latency_ms !== null && r.latency_ms >= state.lat));
  rows = [...rows].sort((a, b) => a.ok - b.ok || (b.latency_ms ?? 0) - (a.latency_ms ?? 0));
  fill(body, rows.length ? rows.map((r) => pairRow(r, ctx)) : row([el("td", { colspan: 8, className: "muted" }, "No results match the filters.")]));
  chart(pair.history);
}

// The Traceroute view: the latest path from each location to each member, its bottleneck (the
// hop that adds the most latency), and on click every hop and the pair's recent path changes.

import { getAll, serverNow } from "./api.js";
import { el, fill, ms, row, shortId } from "./dom.js";
import { ago } from "./members.js";
import { state } from "./state.js";

const CHANGES_DAYS = 7;
const expanded = new Set();

export async function refreshTraceroute(ctx) {
  const since = new Date(serverNow() - CHANGES_DAYS * 86400 * 1000).toISOString();
  const scope = { source_location: state.src, target_location: state.dst };
  const [latest, changes] = await Promise.all([
    getAll("/api/v1/traceroute/latest/", scope),
    getAll("/api/v1/traceroute/changes/", { ...scope, since }),
  ]);
  ctx.store.traceroute = { latest, changes };
}

function pairKey(t) {
  return JSON.stringify([t.source_location, t.target_instance]);
}

export function pathText(path) {
  return (path || []).map((a) => a || "*").join(" → ");
}

function statusCell(t) {
  if (t.status === "ok") return el("td", { className: "good" }, "reached");
  const tone = t.status === "unreached" ? "bad" : "warn";
  return el("td", { className: tone, title: t.reason }, t.status === "unreached" ? "not reached" : `${t.status}: ${t.reason}`);
}

function bottleneckCell(t) {
  if (t.bottleneck_ttl === null) return el("td", { className: "muted" }, "—");
  return el("td", { className: "num", title: `hop ${t.bottleneck_ttl} adds the most latency over the hop before it` }, `hop ${t.bottleneck_ttl} ${t.bottleneck_address} +${ms(t.bottleneck_added_ms)}`);
}

function changedCell(t, changes) {
  const last = changes.find((c) => pairKey(c) === pairKey(t));
  if (!last) return el("td", { className: "muted opt" }, t.route_since ? "since " + ago(t.route_since).replace(" ago", "") : "—");
  return el("td", { className: "opt warn", title: last.description }, "changed " + ago(last.ts));
}

function hopRows(t) {
  return t.hops.map((h) =>
    row([
      el("td", { className: "num" }, h.ttl),
      el("td", { className: "mono" + (h.address ? "" : " muted") }, h.address || "* (no answer)"),
      el("td", { className: "num" + (h.loss > 0 ? " warn" : "") }, `${Math.round(h.loss * 100)}%`),
      el("td", { className: "num" }, h.address ? `${ms(h.rtt_min_ms)} / ${ms(h.rtt_avg_ms)} / ${ms(h.rtt_max_ms)}` : "—"),
      el("td", { className: "num" + (h.ttl === t.bottleneck_ttl ? " bad" : "") }, h.added_ms === null ? "—" : (h.added_ms >= 0 ? "+" : "") + ms(h.added_ms)),
    ]),
  );
}

function detailRow(t, changes) {
  const hops = el(
    "table",
    { className: "grid inner hops" },
    el("thead", null, el("tr", null, ["TTL", "Hop", "Loss", "RTT min / avg / max", "Adds"].map((h) => el("th", null, h)))),
    el("tbody", null, hopRows(t)),
  );
  const mine = changes.filter((c) => pairKey(c) === pairKey(t));
  const list = mine.length
    ? el("ol", { className: "events" }, mine.map((c) => el("li", null, `${new Date(c.ts).toLocaleString()}: ${c.description}`, el("div", { className: "mono muted" }, `was ${pathText(c.old_path)}`))))
    : el("p", { className: "muted" }, `No route change in the last ${CHANGES_DAYS} days.`);
  return el(
    "tr",
    { className: "detail" },
    el("td", { colspan: 8 }, el("div", { className: "detail-grid" }, el("div", null, el("h3", null, "Hops of the latest trace"), hops), el("div", null, el("h3", null, "Path changes"), list))),
  );
}

export function renderTraceroute(ctx) {
  const { latest, changes } = ctx.store.traceroute || { latest: [], changes: [] };
  const rows = [];
  for (const t of latest) {
    if (state.fail && t.status === "ok") continue;
    if (state.lat !== null && !(t.bottleneck_added_ms >= state.lat)) continue;
    const key = pairKey(t);
    const open = expanded.has(key);
    rows.push(
      row(
        [
          el("td", { className: "loc" }, t.source_location),
          el("td", { className: "loc" }, t.target_location),
          el("td", { className: "mono", title: t.target_instance }, `${t.target_ip} · ${shortId(t.target_instance)}`),
          statusCell(t),
          el("td", { className: "num" }, t.hop_count ?? "—"),
          bottleneckCell(t),
          el("td", { className: "mono path opt" }, pathText(t.path)),
          changedCell(t, changes),
        ],
        { className: "pair" + (open ? " open" : "") + (t.status === "ok" ? "" : " failed"), tabindex: "0", "aria-expanded": String(open), dataset: { key } },
      ),
    );
    if (open) rows.push(detailRow(t, changes));
  }
  fill(document.querySelector("#traceroute tbody"), rows);
  const empty = document.getElementById("traceroute-empty");
  empty.hidden = rows.length > 0;
  empty.textContent = latest.length ? "No paths match the filters." : "No traces yet: every edge worker traces the other locations' members every NETRING_TRACEROUTE_INTERVAL.";
}

export function toggleTracerouteRow(key) {
  if (expanded.has(key)) expanded.delete(key);
  else expanded.add(key);
}

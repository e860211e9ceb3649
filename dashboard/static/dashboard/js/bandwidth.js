// The Bandwidth view: per source location and target member, the latest goodput each way
// (download: the target sent, upload: the source sent) and when it was measured.

import { getAll } from "./api.js";
import { el, fill, row, shortId } from "./dom.js";
import { ago } from "./members.js";
import { state } from "./state.js";

export async function refreshBandwidth(ctx) {
  ctx.store.bandwidth = await getAll("/api/v1/bandwidth/latest/", { source_location: state.src, target_location: state.dst });
}

// One entry per (source location, target member) with its two directions.
export function bandwidthPairs(results) {
  const pairs = new Map();
  for (const r of results) {
    const key = JSON.stringify([r.source_location, r.target_instance]);
    if (!pairs.has(key)) pairs.set(key, { key, source: r.source_location, target: r.target_location, instance: r.target_instance, ip: r.target_ip, download: null, upload: null });
    pairs.get(key)[r.direction] = r;
  }
  return [...pairs.values()].sort((a, b) => a.source.localeCompare(b.source) || a.target.localeCompare(b.target) || a.ip.localeCompare(b.ip));
}

export function mbps(value) {
  if (value === null || value === undefined) return "—";
  return value >= 1000 ? (value / 1000).toFixed(2) + " Gbit/s" : value.toFixed(value < 10 ? 2 : 1) + " Mbit/s";
}

function rateCell(r) {
  if (!r) return el("td", { className: "num muted" }, "not tested");
  if (r.status !== "ok") return el("td", { className: "num error", title: r.error }, r.error_class || "failed");
  const how = `${(r.window_s ?? 0).toFixed(1)} s measured after ${(r.omitted_s ?? 0).toFixed(1)} s warm-up, ${((r.bytes_total || 0) / 1e6).toFixed(0)} MB in all` + (r.stable ? "" : "; no steady rate found early (second half measured)");
  return el("td", { className: "num rate" + (r.stable ? "" : " warn"), title: how }, mbps(r.mbps));
}

function failing(pair) {
  return [pair.download, pair.upload].some((r) => r && r.status !== "ok");
}

export function renderBandwidth(ctx) {
  const pairs = bandwidthPairs(ctx.store.bandwidth || []).filter((p) => !state.fail || failing(p));
  const rows = pairs.map((p) => {
    const latest = [p.download, p.upload].filter(Boolean).sort((a, b) => Date.parse(b.ts) - Date.parse(a.ts))[0];
    const rtt = latest && latest.rtt_ms !== null ? latest.rtt_ms.toFixed(1) + " ms" : "—";
    return row(
      [
        el("td", { className: "loc" }, p.source),
        el("td", { className: "loc" }, p.target),
        el("td", { className: "mono", title: p.instance }, `${p.ip} · ${shortId(p.instance)}`),
        rateCell(p.download),
        rateCell(p.upload),
        el("td", { className: "num opt" }, rtt),
        latest ? ago(latest.ts) : "—",
      ],
      { className: "pair" + (failing(p) ? " failed" : ""), dataset: { key: p.key } },
    );
  });
  fill(document.querySelector("#bandwidth tbody"), rows);
  const empty = document.getElementById("bandwidth-empty");
  empty.hidden = rows.length > 0;
  empty.textContent = (ctx.store.bandwidth || []).length ? "No bandwidth results match the filters." : "No bandwidth tests in the last two days: edge workers in at least two locations test each other every NETRING_BANDWIDTH_TEST_INTERVAL.";
}

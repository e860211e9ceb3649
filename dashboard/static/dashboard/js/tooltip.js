// The member tooltip: hovering (or focusing) anything with data-instance shows the member, its
// latest check results as a target, and countdowns to its next heartbeat and mesh round.

import { getAll, serverNow } from "./api.js";
import { el, fill, ms, pct, seconds } from "./dom.js";
import { ago, badge } from "./members.js";

const STATS_TTL_MS = 5000;
const GAP = 10;

export class MemberTooltip {
  constructor(ctx) {
    this.ctx = ctx;
    this.node = document.getElementById("tooltip");
    this.anchor = null;
    this.stats = new Map(); // instance id -> {at, rows} or {at, error}
    this.ticker = null;
    document.addEventListener("pointerover", (e) => this.enter(e.target));
    document.addEventListener("focusin", (e) => this.enter(e.target));
    document.addEventListener("pointerout", (e) => this.leave(e.target, e.relatedTarget));
    document.addEventListener("focusout", (e) => this.leave(e.target, e.relatedTarget));
    document.addEventListener("keydown", (e) => e.key === "Escape" && this.hide());
    window.addEventListener("scroll", () => this.hide(), { passive: true });
  }

  enter(target) {
    const anchor = target instanceof Element ? target.closest("[data-instance]") : null;
    if (!anchor || anchor === this.anchor) return;
    this.anchor = anchor;
    this.load(anchor.dataset.instance);
    this.render();
    clearInterval(this.ticker);
    this.ticker = setInterval(() => this.render(), 1000); // the countdowns
  }

  leave(target, next) {
    if (!this.anchor || !(target instanceof Element) || target.closest("[data-instance]") !== this.anchor) return;
    if (next instanceof Element && this.anchor.contains(next)) return;
    this.hide();
  }

  hide() {
    this.anchor = null;
    clearInterval(this.ticker);
    this.node.hidden = true;
  }

  async load(id) {
    const cached = this.stats.get(id);
    if (cached && serverNow() - cached.at < STATS_TTL_MS) return;
    try {
      const rows = await getAll("/api/v1/mesh/latest/", { target_instance: id });
      this.stats.set(id, { at: serverNow(), rows });
    } catch (err) {
      this.stats.set(id, { at: serverNow(), error: err.message });
    }
    if (this.anchor && this.anchor.dataset.instance === id) this.render();
  }

  // Called after every poll: the member (and so its countdown) may have changed.
  refresh() {
    if (!this.anchor) return;
    if (!this.anchor.isConnected) {
      // The table was re-rendered: follow the same member's new row, if it is still shown.
      const id = this.anchor.dataset.instance;
      const again = document.querySelector(`[data-instance="${CSS.escape(id)}"]`);
      if (!again || !again.matches(":hover, :focus")) return this.hide();
      this.anchor = again;
    }
    this.load(this.anchor.dataset.instance);
    this.render();
  }

  render() {
    if (!this.anchor) return;
    const id = this.anchor.dataset.instance;
    const member = this.ctx.store.membersById.get(id);
    const stats = this.stats.get(id);
    fill(
      this.node,
      member ? header(member, this.ctx.config) : el("div", { className: "tt-title" }, id),
      statsBlock(stats),
      timing(member, stats, this.ctx.config),
    );
    this.node.hidden = false;
    this.place();
  }

  // Beside the anchor's row, on whichever side fits; never off screen.
  place() {
    const cell = this.anchor.matches("tr") ? this.anchor.querySelector(".instance") : null;
    let box = (cell || this.anchor).getBoundingClientRect();
    if (!box.width) box = this.anchor.getBoundingClientRect(); // the column is hidden on small screens
    const tip = this.node.getBoundingClientRect();
    const [vw, vh] = [document.documentElement.clientWidth, document.documentElement.clientHeight];
    let left = box.right + GAP;
    if (left + tip.width > vw - GAP) left = box.left - tip.width - GAP;
    left = Math.max(GAP, Math.min(left, vw - tip.width - GAP));
    let top = box.top;
    if (top + tip.height > vh - GAP) top = vh - tip.height - GAP;
    top = Math.max(GAP, top);
    this.node.style.left = `${Math.round(left)}px`;
    this.node.style.top = `${Math.round(top)}px`;
  }
}

function header(m, config) {
  return [
    el("div", { className: "tt-title" }, el("span", { className: "tt-name" }, m.hostname || m.instance_id.slice(0, 8)), badge(m.status, config.colours)),
    el(
      "dl",
      { className: "tt-facts" },
      fact("Location", m.location),
      fact("Address", `${m.ip}:${m.port} (${m.kind})`),
      fact("Version", m.version || "—"),
      fact("Instance", m.instance_id),
    ),
  ];
}

function fact(name, value) {
  return [el("dt", null, name), el("dd", null, value)];
}

function statsBlock(stats) {
  if (!stats) return el("p", { className: "tt-stats muted" }, "Loading check results…");
  if (stats.error) return el("p", { className: "tt-stats error" }, stats.error);
  const rows = stats.rows;
  if (!rows.length) return el("p", { className: "tt-stats muted" }, "No check results for this member yet.");
  const ok = rows.filter((r) => r.ok).length;
  const latencies = rows.filter((r) => r.latency_ms !== null).map((r) => r.latency_ms);
  const avg = latencies.length ? latencies.reduce((a, b) => a + b, 0) / latencies.length : null;
  const rate = (100 * ok) / rows.length;
  const byKind = {};
  for (const r of rows) {
    const k = (byKind[r.kind] ||= { n: 0, ok: 0, lat: [] });
    k.n += 1;
    k.ok += r.ok ? 1 : 0;
    if (r.latency_ms !== null) k.lat.push(r.latency_ms);
  }
  const kinds = Object.entries(byKind)
    .sort()
    .map(([kind, k]) => el("li", null, `${kind.toUpperCase()}: ${k.ok}/${k.n} ok, avg ${ms(k.lat.length ? k.lat.reduce((a, b) => a + b, 0) / k.lat.length : null)}`));
  const sources = [...new Set(rows.map((r) => r.source_location))].sort().join(", ");
  const failing = rows.filter((r) => !r.ok).slice(0, 3).map((r) => el("li", { className: "error" }, `${r.source_location} ${r.kind.toUpperCase()} ${r.endpoint}: ${r.error_class || "failed"}`.replace(/ +:/, ":")));
  return el(
    "div",
    { className: "tt-stats" },
    el(
      "div",
      { className: "tt-figures" },
      figure("Success", pct(rate, Number.isInteger(rate) ? 0 : 1), rate < 100 ? (ok ? "warn" : "bad") : "good"),
      figure("Avg latency", ms(avg), ""),
      figure("Checks", String(rows.length), ""),
    ),
    el("ul", { className: "tt-kinds" }, kinds),
    el("p", { className: "muted" }, `Latest results as a target, from ${sources}`),
    failing.length ? el("ul", { className: "tt-failing" }, failing) : null,
  );
}

function figure(label, value, tone) {
  return el("div", { className: "tt-figure " + tone }, el("span", { className: "value" }, value), el("span", { className: "label" }, label));
}

function timing(m, stats, config) {
  if (!m) return null;
  const now = serverNow();
  const lines = [];
  if (m.deregistered_at) {
    lines.push(`Deregistered ${ago(m.deregistered_at)}: no heartbeat expected`);
  } else {
    const due = (Date.parse(m.last_seen) + config.heartbeat_interval * 1000 - now) / 1000;
    lines.push(`Last heartbeat ${ago(m.last_seen)}`);
    lines.push(due >= 0 ? `Next heartbeat expected in ${Math.ceil(due)} s` : `Heartbeat overdue by ${seconds(-due)}`);
  }
  // Rounds come every check interval; the latest result's round start says when the next is due.
  const interval = config.check_interval * 1000;
  const rows = (stats && stats.rows) || [];
  const last = rows.length ? Math.max(...rows.map((r) => Date.parse(r.ts))) : null;
  if (last !== null) {
    const due = (last + interval - now) / 1000;
    lines.push(due >= 0 ? `Next mesh check in ~${Math.ceil(due)} s` : `Mesh check overdue by ${seconds(-due)}`);
  } else if (!m.deregistered_at) {
    lines.push(`Mesh checks every ${config.check_interval} s`);
  }
  return el("ul", { className: "tt-timing" }, lines.map((l) => el("li", null, l)));
}

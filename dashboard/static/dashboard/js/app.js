// The NOC dashboard: polls the API every few seconds (paused while the tab is hidden), keeps
// the screen's state in the URL hash and renders the chosen view. All DOM is built as text.

import { getAll, getJSON } from "./api.js";
import { refreshBandwidth, renderBandwidth } from "./bandwidth.js";
import { clock, el, fill } from "./dom.js";
import { loadPair, renderMatrix, renderPair } from "./matrix.js";
import { renderMembers } from "./members.js";
import { refreshProber, renderProber, toggleProberRow } from "./prober.js";
import { readHash, state, writeHash } from "./state.js";
import { MemberTooltip } from "./tooltip.js";
import { refreshTraceroute, renderTraceroute, toggleTracerouteRow } from "./traceroute.js";

const config = JSON.parse(document.getElementById("netring-config").textContent);
const ctx = {
  config,
  store: {
    locations: [],
    members: [],
    membersById: new Map(),
    matrix: null,
    pair: null,
    prober: { targets: [], samples: [] },
    bandwidth: [],
    traceroute: { latest: [], changes: [] },
  },
};
const tooltip = new MemberTooltip(ctx);
const pollMs = config.poll_seconds * 1000;

// Which filters mean something in which view; the others are disabled there.
const FILTERS = {
  matrix: ["src", "dst", "fail", "lat"],
  members: ["src", "fail", "offline"],
  prober: ["src", "fail", "lat"],
  bandwidth: ["src", "dst", "fail"],
  traceroute: ["src", "dst", "fail", "lat"],
};
const controls = {
  src: document.getElementById("f-src"),
  dst: document.getElementById("f-dst"),
  fail: document.getElementById("f-fail"),
  lat: document.getElementById("f-lat"),
  offline: document.getElementById("f-offline"),
};

// --- status line ------------------------------------------------------------------------------

let lastSuccess = null;

function showStatus(kind, message) {
  const node = document.getElementById("status");
  node.className = "status " + kind;
  document.getElementById("status-text").textContent = message;
}

function reportError(err) {
  const since = lastSuccess ? ` (showing data of ${clock(lastSuccess)})` : "";
  const text = err.status === 401 || err.status === 403 ? "Session expired or not allowed: reload the page to log in" : err.message;
  showStatus("error", `Update failed at ${clock(new Date())}: ${text}${since}`);
}

// --- loading ----------------------------------------------------------------------------------

async function load() {
  const [locations, members] = await Promise.all([getAll("/api/v1/locations/"), getAll("/api/v1/members/")]);
  ctx.store.locations = locations;
  ctx.store.members = members;
  ctx.store.membersById = new Map(members.map((m) => [m.instance_id, m]));
  if (state.view === "matrix") {
    const [matrix] = await Promise.all([getJSON("/api/v1/mesh/matrix/"), loadPair(ctx)]);
    ctx.store.matrix = matrix;
  } else if (state.view === "prober") {
    await refreshProber(ctx);
  } else if (state.view === "bandwidth") {
    await refreshBandwidth(ctx);
  } else if (state.view === "traceroute") {
    await refreshTraceroute(ctx);
  }
}

let timer = null;
let running = null;
let again = false;

async function poll() {
  clearTimeout(timer);
  if (document.hidden) {
    showStatus("paused", "Paused while the page is hidden");
    return; // visibilitychange starts polling again
  }
  if (running) {
    again = true; // a filter changed during a request: load once more when it is done
    return;
  }
  running = load()
    .then(() => {
      lastSuccess = new Date();
      showStatus("ok", `Live · updated ${clock(lastSuccess)}`);
    })
    .catch(reportError);
  await running;
  running = null;
  render();
  if (again) {
    again = false;
    poll();
  } else {
    timer = setTimeout(poll, pollMs);
  }
}

// --- rendering --------------------------------------------------------------------------------

function syncOptions(select, names, selected) {
  const wanted = [...new Set([...names, selected].filter(Boolean))].sort();
  const have = [...select.options].slice(1).map((o) => o.value);
  if (have.join("\n") !== wanted.join("\n")) {
    fill(select, select.options[0], wanted.map((n) => el("option", { value: n }, n)));
  }
  select.value = selected;
}

function syncControls() {
  const names = new Set(ctx.store.locations.map((l) => l.name));
  for (const c of ctx.store.matrix || []) names.add(c.source_location).add(c.target_location);
  syncOptions(controls.src, names, state.src);
  syncOptions(controls.dst, names, state.dst);
  controls.fail.checked = state.fail;
  if (document.activeElement !== controls.lat) controls.lat.value = state.lat === null ? "" : String(state.lat);
  controls.offline.checked = state.offline;
  const enabled = FILTERS[state.view] || [];
  for (const [name, control] of Object.entries(controls)) {
    control.disabled = !enabled.includes(name);
    control.closest("label").classList.toggle("disabled", control.disabled);
  }
  for (const button of document.querySelectorAll("[data-view]")) button.setAttribute("aria-pressed", String(button.dataset.view === state.view));
  for (const button of document.querySelectorAll("[data-kind]")) button.setAttribute("aria-pressed", String(button.dataset.kind === state.kind));
}

// Re-rendering replaces rows: put keyboard focus back on the same cell or row afterwards.
function focusKey() {
  const active = document.activeElement;
  if (!active || !active.dataset) return null;
  for (const attr of ["src", "instance", "key"]) {
    if (active.dataset[attr] !== undefined) return [attr, active.dataset[attr], active.dataset.dst];
  }
  return null;
}

function restoreFocus(key) {
  if (!key) return;
  const [attr, value, dst] = key;
  const match = [...document.querySelectorAll(`[data-${attr}]`)].find((n) => n.dataset[attr] === value && n.dataset.dst === dst);
  if (match && match !== document.activeElement) match.focus({ preventScroll: true });
}

function render() {
  const focused = focusKey();
  syncControls();
  for (const section of document.querySelectorAll("section.view")) section.hidden = section.id !== "view-" + state.view;
  if (state.view === "matrix") {
    renderMatrix(ctx);
    renderPair(ctx);
  } else if (state.view === "members") {
    renderMembers(ctx);
  } else if (state.view === "prober") {
    renderProber(ctx);
  } else if (state.view === "bandwidth") {
    renderBandwidth(ctx);
  } else if (state.view === "traceroute") {
    renderTraceroute(ctx);
  }
  restoreFocus(focused);
  tooltip.refresh();
}

// A change of what to show: render what we have at once, then fetch.
function changed({ fetch = true } = {}) {
  writeHash();
  render();
  if (fetch) poll();
}

// --- events -----------------------------------------------------------------------------------

document.querySelector(".views").addEventListener("click", (e) => {
  const button = e.target.closest("[data-view]");
  if (!button || button.dataset.view === state.view) return;
  state.view = button.dataset.view;
  tooltip.hide();
  changed();
});

document.querySelector(".kinds").addEventListener("click", (e) => {
  const button = e.target.closest("[data-kind]");
  if (!button || button.dataset.kind === state.kind) return;
  state.kind = button.dataset.kind;
  ctx.store.pair = null;
  changed();
});

controls.src.addEventListener("change", () => {
  state.src = controls.src.value;
  changed();
});
controls.dst.addEventListener("change", () => {
  state.dst = controls.dst.value;
  changed();
});
controls.fail.addEventListener("change", () => {
  state.fail = controls.fail.checked;
  ctx.store.pair = null; // the pair's rows are fetched with failures=true
  changed();
});
controls.offline.addEventListener("change", () => {
  state.offline = controls.offline.checked;
  changed({ fetch: false });
});
let latTimer = null;
controls.lat.addEventListener("input", () => {
  clearTimeout(latTimer);
  latTimer = setTimeout(() => {
    const value = Number.parseFloat(controls.lat.value);
    state.lat = Number.isFinite(value) && value >= 0 ? value : null;
    changed({ fetch: false });
  }, 300);
});

document.getElementById("matrix").addEventListener("click", (e) => {
  const cell = e.target.closest("button.cell");
  if (!cell) return;
  const same = state.psrc === cell.dataset.src && state.pdst === cell.dataset.dst;
  state.psrc = same ? "" : cell.dataset.src;
  state.pdst = same ? "" : cell.dataset.dst;
  ctx.store.pair = null;
  changed();
});

document.getElementById("pair-close").addEventListener("click", () => {
  state.psrc = state.pdst = "";
  ctx.store.pair = null;
  changed({ fetch: false });
});

function toggleProber(e) {
  const tr = e.target.closest("tr.pair");
  if (!tr || (e.type === "keydown" && e.key !== "Enter" && e.key !== " ")) return;
  e.preventDefault();
  toggleProberRow(tr.dataset.key);
  render();
}
document.getElementById("prober").addEventListener("click", toggleProber);
document.getElementById("prober").addEventListener("keydown", toggleProber);

function toggleTrace(e) {
  const tr = e.target.closest("tr.pair");
  if (!tr || (e.type === "keydown" && e.key !== "Enter" && e.key !== " ")) return;
  e.preventDefault();
  toggleTracerouteRow(tr.dataset.key);
  render();
}
document.getElementById("traceroute").addEventListener("click", toggleTrace);
document.getElementById("traceroute").addEventListener("keydown", toggleTrace);

window.addEventListener("hashchange", () => {
  readHash();
  ctx.store.pair = null;
  render();
  poll();
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) poll();
});

readHash();
render();
poll();

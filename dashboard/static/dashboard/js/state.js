// What the screen shows, kept in the URL hash so a NOC screen can be bookmarked:
// #view=matrix&kind=tcp&src=us1&dst=eu1&fail=1&lat=150&offline=0&psrc=us1&pdst=eu1

export const VIEWS = ["matrix", "members", "prober", "bandwidth", "traceroute"];
export const KINDS = ["all", "tcp", "http", "icmp"];

const DEFAULTS = { view: "matrix", kind: "all", src: "", dst: "", fail: false, lat: null, offline: true, psrc: "", pdst: "" };

export const state = { ...DEFAULTS };

export function readHash() {
  const p = new URLSearchParams(window.location.hash.slice(1));
  const lat = Number.parseFloat(p.get("lat") || "");
  Object.assign(state, {
    view: VIEWS.includes(p.get("view")) ? p.get("view") : DEFAULTS.view,
    kind: KINDS.includes(p.get("kind")) ? p.get("kind") : DEFAULTS.kind,
    src: p.get("src") || "",
    dst: p.get("dst") || "",
    fail: p.get("fail") === "1",
    lat: Number.isFinite(lat) && lat >= 0 ? lat : null,
    offline: p.get("offline") !== "0",
    psrc: p.get("psrc") || "",
    pdst: p.get("pdst") || "",
  });
}

export function writeHash() {
  const p = new URLSearchParams();
  if (state.view !== DEFAULTS.view) p.set("view", state.view);
  if (state.kind !== DEFAULTS.kind) p.set("kind", state.kind);
  if (state.src) p.set("src", state.src);
  if (state.dst) p.set("dst", state.dst);
  if (state.fail) p.set("fail", "1");
  if (state.lat !== null) p.set("lat", String(state.lat));
  if (!state.offline) p.set("offline", "0");
  if (state.psrc && state.pdst) {
    p.set("psrc", state.psrc);
    p.set("pdst", state.pdst);
  }
  const hash = p.toString();
  // replaceState: filters are not navigation, and it does not fire hashchange.
  window.history.replaceState(null, "", hash ? "#" + hash : window.location.pathname + window.location.search);
}

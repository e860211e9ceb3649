// The Members view: locations with their missing members, and the registry with status badges.

import { serverNow } from "./api.js";
import { el, fill, row, seconds, shortId } from "./dom.js";
import { state } from "./state.js";

const STATUSES = ["online", "stale", "offline", "deregistered"];
const HIDDEN_UNLESS_OFFLINE = new Set(["offline", "deregistered"]);
const FAILING = new Set(["stale", "offline"]);

function inScope(locationName) {
  return !state.src || locationName === state.src;
}

export function badge(status, colours) {
  return el("span", { className: "badge status-" + status, style: `--badge: ${colours[status] || "#9ca3af"}` }, status);
}

export function ago(iso) {
  return seconds((serverNow() - Date.parse(iso)) / 1000) + " ago";
}

function renderLocations(ctx) {
  const rows = ctx.store.locations.filter((l) => inScope(l.name) && (!state.fail || l.members_missing > 0));
  rows.sort((a, b) => a.name.localeCompare(b.name)); // the API's counted list comes unordered
  fill(
    document.querySelector("#locations tbody"),
    rows.map((l) =>
      row(
        [
          el("td", { className: "loc" }, l.name),
          el("td", { className: "opt muted" }, l.description),
          el("td", { className: "opt crit crit-" + l.criticality }, l.criticality),
          el("td", { className: "num" }, l.expected_members),
          el("td", { className: "num opt" }, l.members_online),
          el("td", { className: "num" }, l.members_present),
          el("td", { className: "num" + (l.members_missing ? " missing" : "") }, l.members_missing ? `${l.members_missing} missing` : "0"),
        ],
        { className: l.members_missing ? "has-missing" : "", dataset: { location: l.name } },
      ),
    ),
  );
}

function memberRow(m, colours) {
  const lastSeen = m.deregistered_at ? "deregistered " + ago(m.deregistered_at) : ago(m.last_seen);
  return row(
    [
      el("td", { className: "loc" }, m.location),
      el("td", { className: "instance opt mono", title: m.instance_id }, shortId(m.instance_id)),
      el("td", { className: "hostname" }, m.hostname),
      el("td", { className: "opt mono" }, `${m.ip}:${m.port}`),
      el("td", { className: "opt" }, m.kind),
      el("td", null, badge(m.status, colours)),
      lastSeen,
      el("td", { className: "opt version" }, m.version),
    ],
    { className: "member status-" + m.status, tabindex: "0", dataset: { instance: m.instance_id } },
  );
}

export function renderMembers(ctx) {
  renderLocations(ctx);
  const colours = ctx.config.colours;
  const all = ctx.store.members.filter((m) => inScope(m.location));
  let shown = all.filter((m) => state.offline || !HIDDEN_UNLESS_OFFLINE.has(m.status));
  if (state.fail) shown = shown.filter((m) => FAILING.has(m.status));
  fill(document.querySelector("#members tbody"), shown.map((m) => memberRow(m, colours)));

  const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
  for (const m of all) counts[m.status] = (counts[m.status] || 0) + 1;
  const chips = STATUSES.filter((s) => counts[s]).map((s) => el("span", { className: "chip", style: `--badge: ${colours[s]}` }, `${counts[s]} ${s}`));
  const hidden = all.length - shown.length;
  fill(document.getElementById("member-summary"), chips, hidden ? el("span", { className: "muted" }, `${hidden} hidden by filters`) : null);

  const empty = document.getElementById("members-empty");
  empty.hidden = shown.length > 0;
  empty.textContent = all.length ? "No members match the filters." : "No members registered yet.";
}

// Building blocks for every view. Values become text nodes or attribute values, never markup:
// member hostnames, versions, location descriptions and target names are shown as typed.

const SVG_NS = "http://www.w3.org/2000/svg";

function setProps(node, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (/^on/i.test(key)) throw new Error("event handlers are attached with addEventListener");
    if (key === "className") node.setAttribute("class", value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

function appendAll(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
}

// el("td", {className: "x", title: "..."}, "text", otherNode)
export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  setProps(node, props);
  appendAll(node, children);
  return node;
}

export function svg(tag, props, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setProps(node, props);
  appendAll(node, children);
  return node;
}

export function fill(node, ...children) {
  node.replaceChildren();
  appendAll(node, children);
  return node;
}

export function row(cells, props) {
  return el("tr", props, cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", null, c))));
}

// --- formatting ------------------------------------------------------------------------------

export function ms(value, digits) {
  if (value === null || value === undefined) return "—";
  const d = digits === undefined ? (value < 10 ? 1 : 0) : digits;
  return value.toFixed(d) + " ms";
}

export function pct(value, digits = 2) {
  if (value === null || value === undefined) return "—";
  if (value >= 100) return "100%";
  return value.toFixed(digits) + "%";
}

export function seconds(total) {
  const s = Math.max(0, Math.round(total));
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}

export function clock(date) {
  return date.toLocaleTimeString([], { hour12: false });
}

export function shortId(id) {
  return String(id || "").slice(0, 8);
}

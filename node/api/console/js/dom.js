// DOM helpers. Every piece of data goes into the page through textContent or setAttribute on a
// fixed attribute name, never parsed as markup. A memo of "<script>" shows as those characters.

const SVG_NS = "http://www.w3.org/2000/svg";
const EVENT_ATTRS = /^on/i;

function apply(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function" && key.startsWith("on")) {
      node.addEventListener(key.slice(2), value);
    } else if (EVENT_ATTRS.test(key)) {
      throw new Error("event handler attributes are not allowed: " + key);
    } else if (key === "text") {
      node.textContent = String(value);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An HTML element: el("a", {href: "#x", class: "c"}, "text", otherNode). */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  apply(node, attrs);
  append(node, children);
  return node;
}

/** An SVG element, same calling convention. */
export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  apply(node, attrs);
  append(node, children);
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function replace(node, ...children) {
  clear(node);
  append(node, children);
  return node;
}

/** 0x1234…abcd for long hex; the full value stays in the title. */
export function short(hex, keep = 10) {
  const s = String(hex ?? "");
  return s.length > 2 * keep + 2 ? s.slice(0, keep + 2) + "…" + s.slice(-keep + 2) : s;
}

/** A monospace hex value, shortened, with the full value as title and a copy-friendly span. */
export function hexSpan(hex, keep = 10) {
  return el("span", { class: "hex", title: String(hex ?? "") }, short(hex, keep));
}

export function link(href, ...children) {
  return el("a", { href }, ...children);
}

export function txLink(hash, keep = 10) {
  return link("#tx/" + encodeURIComponent(hash), hexSpan(hash, keep));
}

export function addressLink(address, keep = 8) {
  return link("#address/" + encodeURIComponent(address), hexSpan(address, keep));
}

export function amount(n) {
  if (n === null || n === undefined) return "—";
  return Number(n).toLocaleString("en-US");
}

export function duration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + (s % 60) + " s";
  const h = Math.floor(m / 60);
  if (h < 48) return h + " h " + (m % 60) + " min";
  return Math.floor(h / 24) + " d " + (h % 24) + " h";
}

export function timeOf(ms) {
  if (!ms) return "—";
  return new Date(ms).toLocaleString("en-GB", { hour12: false });
}

/** Memo bytes (0x hex) shown as text: UTF-8 if it decodes, else the hex. */
export function memoText(hex) {
  if (!hex || hex === "0x") return "";
  try {
    const bytes = new Uint8Array(hex.slice(2).match(/../g).map((b) => parseInt(b, 16)));
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return hex;
  }
}

/** A definition list from [label, value] pairs; values may be nodes or text. */
export function facts(pairs) {
  const dl = el("dl", { class: "facts" });
  for (const [label, value] of pairs) {
    if (value === undefined) continue;
    dl.append(el("dt", {}, label), el("dd", {}, value ?? "—"));
  }
  return dl;
}

export function notice(kind, ...children) {
  const role = kind === "error" ? "alert" : "status";
  return el("p", { class: "notice " + kind, role }, ...children);
}

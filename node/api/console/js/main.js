// The console's shell: token handling, navigation, the connection indicator, the confirmation
// dialog and the router. Views live in their own modules and get a small context object.

import { mountAnchor } from "./anchor.js";
import { mountAddress, mountBlock, mountCluster, mountTx, searchTarget } from "./chain.js";
import { el, notice, replace } from "./dom.js";
import { mountHealth } from "./health.js";
import { mountQueue } from "./queue.js";
import { NetworkError, onConnection, rpc, setConnection, token, ws } from "./rpc.js";

// "#token=T" opens the console with the token entered; the fragment never reaches the server,
// and it is removed from the address bar (and history) at once.
if (location.hash.startsWith("#token=")) {
  const t = decodeURIComponent(location.hash.slice("#token=".length));
  token.set(t);
  history.replaceState(null, "", location.pathname + location.search + "#queue");
}

const $ = (id) => document.getElementById(id);
const main = $("main");
const flashBox = $("flash");
let current = null;

function flash(kind, text) {
  const node = notice(kind, text);
  replace(flashBox, node);
  setTimeout(() => {
    if (node.parentNode === flashBox) flashBox.removeChild(node);
  }, 8000);
}

// --- the admin token ----------------------------------------------------------------------------

function drawToken(message) {
  const box = $("token-box");
  if (token.get()) {
    replace(
      box,
      el("span", { class: "token-set" }, "Admin token entered (kept in this tab only)"),
      el("button", { type: "button", id: "token-forget", onclick: () => { token.set(null); drawToken(); current && current.onToken && current.onToken(); } }, "Forget"),
    );
  } else {
    const input = el("input", { type: "password", id: "token-input", autocomplete: "off", placeholder: "admin token", "aria-label": "admin token" });
    const form = el("form", { id: "token-form" }, el("label", { for: "token-input" }, "Admin token "), input, el("button", { type: "submit" }, "Use"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      token.set(t);
      drawToken();
      if (current && current.onToken) current.onToken();
    });
    replace(box, form, message ? el("span", { class: "token-refused", role: "alert" }, message) : null);
  }
}

function tokenRefused() {
  token.set(null);
  drawToken("The node refused that token.");
}

// --- confirmation dialog -------------------------------------------------------------------------

function confirmDialog(title, text, verb) {
  const dlg = $("confirm");
  replace($("confirm-title"), title);
  replace($("confirm-text"), text);
  replace($("confirm-ok"), verb);
  return new Promise((resolve) => {
    const done = () => {
      dlg.removeEventListener("close", done);
      resolve(dlg.returnValue === "ok");
    };
    dlg.returnValue = "";
    dlg.addEventListener("close", done);
    dlg.showModal();
    $("confirm-cancel").focus();
  });
}

// --- connection and node label ------------------------------------------------------------------

onConnection((state) => {
  const box = $("conn");
  box.className = "conn " + state;
  replace(box, state === "live" ? "live" : state === "reconnecting" ? "reconnecting…" : "connecting…");
});

async function label() {
  try {
    const s = await rpc("node_status");
    replace($("node-label"), `${s.chain_id} · validator ${s.node_id} · height ${s.height} · view ${s.view}`);
    setConnection("live");
  } catch (err) {
    if (err instanceof NetworkError) replace($("node-label"), "node not answering");
  }
  setTimeout(label, 3000);
}

// --- routing ------------------------------------------------------------------------------------

const ctx = { flash, confirm: confirmDialog, tokenRefused };

function route() {
  if (current) current.stop();
  current = null;
  replace(main);
  const hash = location.hash || "#queue";
  const [name, arg] = hash.slice(1).split("/");
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === "#" + name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const views = {
    queue: () => mountQueue(main, ctx),
    health: () => mountHealth(main, ctx),
    cluster: () => mountCluster(main, ctx),
    anchor: () => mountAnchor(main, ctx),
    tx: () => mountTx(main, decodeURIComponent(arg || "")),
    block: () => mountBlock(main, Number(arg)),
    address: () => mountAddress(main, decodeURIComponent(arg || "")),
  };
  const view = views[name];
  if ((name === "tx" || name === "address") && !searchTarget(decodeURIComponent(arg || ""))) {
    main.append(notice("error", "That is not a tx hash (32 bytes of hex) or an address (20 bytes)."));
  } else if (name === "block" && !(Number.isInteger(Number(arg)) && Number(arg) >= 0)) {
    main.append(notice("error", "A block height is a whole number."));
  } else if (view) {
    current = view();
  } else {
    main.append(notice("error", "No such page: " + hash));
  }
  document.title = "Vigil console · " + (name || "queue");
}

$("search").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = $("search-input").value;
  const target = searchTarget(q);
  if (target) {
    location.hash = target;
    $("search-input").value = "";
  } else {
    flash("error", "Search for a tx hash (0x + 64 hex), a block height, or an address (0x + 40 hex).");
  }
});

window.addEventListener("hashchange", () => {
  route();
  main.focus({ preventScroll: true });
});
drawToken();
route();
label();
ws.start();

// The quarantine queue: held txs newest first, why each was held, the sender's history, what
// waits behind it, and release / reject with a confirmation. Polls so that another operator's
// decision shows within a couple of seconds.

import { historyChart, scoreMeter } from "./charts.js";
import { addressLink, amount, duration, el, facts, hexSpan, memoText, notice, replace, short, timeOf, txLink } from "./dom.js";
import { NetworkError, RpcError, rpc, token } from "./rpc.js";

const POLL_MS = 2000;

export function mountQueue(main, ctx) {
  const status = el("div", { class: "queue-status", role: "status", "aria-live": "polite" });
  const errorBox = el("div", { class: "queue-error" });
  const reasonSel = el("select", { id: "filter-reason", "aria-label": "filter by reason" }, el("option", { value: "" }, "all reasons"));
  const senderIn = el("input", { id: "filter-sender", type: "search", placeholder: "sender address", "aria-label": "filter by sender", autocomplete: "off" });
  const list = el("ol", { class: "queue", id: "queue-list", "aria-label": "held transactions, newest first" });
  const decided = el("ul", { class: "decided", "aria-label": "recent decisions" });
  main.append(
    el("h2", {}, "Quarantine queue"),
    el("p", { class: "lede" }, "Transactions the anomaly detector held on this node, newest first. Release one to let it into the mempool; reject it to drop it for good."),
    errorBox,
    el("div", { class: "filters" }, el("label", { for: "filter-reason" }, "Reason "), reasonSel, el("label", { for: "filter-sender" }, "Sender "), senderIn),
    status,
    list,
    el("h3", {}, "Decisions seen from this page"),
    decided,
  );

  let items = [];
  let known = new Map();
  let ttlMs = null;
  let stopped = false;
  let timer = null;
  const histories = new Map(); // sender -> {at, data}
  const mine = new Set(); // hashes this page decided

  reasonSel.addEventListener("change", draw);
  senderIn.addEventListener("input", draw);

  async function refresh() {
    if (stopped) return;
    if (!token.get()) {
      replace(errorBox, notice("info", "Enter the admin token above to see and decide the queue. Read-only views (model health, chain and cluster, anchors) need no token."));
      replace(list);
      replace(status);
      schedule();
      return;
    }
    try {
      const [held, det] = await Promise.all([
        rpc("quarantine_list", { limit: 1000 }, { admin: true }),
        rpc("detector_status").catch(() => null),
      ]);
      if (det) ttlMs = det.quarantine_ttl_ms ?? null;
      replace(errorBox);
      const now = new Map(held.map((h) => [h.hash, h]));
      for (const [hash, old] of known) {
        if (!now.has(hash) && !mine.has(hash)) noteGone(hash, old);
      }
      known = now;
      items = held.slice().sort((a, b) => (b.quarantined_at_ms || 0) - (a.quarantined_at_ms || 0));
      draw();
      await loadHistories();
    } catch (err) {
      if (err instanceof RpcError && err.unauthorized) {
        replace(errorBox, notice("error", "The node refused the admin token: " + err.message + ". Check the token (scripts/cluster up prints it; .cluster/admin_token holds it) and enter it again."));
        replace(list);
        ctx.tokenRefused();
      } else if (err instanceof NetworkError) {
        replace(status, "Node not answering; reconnecting… (the list below may be stale)");
      } else {
        replace(errorBox, notice("error", String(err.message || err)));
      }
    }
    schedule();
  }

  function schedule() {
    clearTimeout(timer);
    if (!stopped) timer = setTimeout(refresh, POLL_MS);
  }

  async function noteGone(hash, old) {
    let what = "left the queue";
    try {
      const tx = await rpc("tx_get", [hash]);
      what = tx.status === "rejected" ? "was rejected (" + (tx.reason || "rejected") + ")" : "was released (now " + tx.status + ")";
    } catch {
      /* keep the generic words */
    }
    decided.prepend(el("li", {}, timeOf(Date.now()) + " — ", txLink(hash), " " + what + " by another operator or by expiry; sender ", addressLink(old.from)));
  }

  async function loadHistories() {
    const senders = [...new Set(items.map((h) => h.from))];
    for (const sender of senders) {
      const cached = histories.get(sender);
      if (cached && Date.now() - cached.at < 10_000) continue;
      try {
        const data = await rpc("account_txs", { address: sender, limit: 40 });
        histories.set(sender, { at: Date.now(), data });
      } catch {
        /* the chart says "no recent transfers" */
      }
    }
    draw();
  }

  function reasonsOf() {
    const all = new Set();
    for (const h of items) for (const r of h.reasons || []) all.add(r);
    return [...all].sort();
  }

  function draw() {
    const chosen = reasonSel.value;
    const options = reasonsOf();
    if (options.join("\n") !== [...reasonSel.options].slice(1).map((o) => o.value).join("\n")) {
      replace(reasonSel, el("option", { value: "" }, "all reasons"), options.map((r) => el("option", { value: r }, r)));
      reasonSel.value = options.includes(chosen) ? chosen : "";
    }
    const senderQ = senderIn.value.trim().toLowerCase();
    const shown = items.filter(
      (h) => (!reasonSel.value || (h.reasons || []).includes(reasonSel.value)) && (!senderQ || String(h.from).toLowerCase().includes(senderQ)),
    );
    replace(status, items.length === 0 ? "Nothing is held right now." : `${shown.length} of ${items.length} held transaction${items.length === 1 ? "" : "s"} shown · updated ${timeOf(Date.now()).slice(-8)}`);
    const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : null;
    replace(list, shown.map(card));
    if (focused) {
      const again = list.querySelector(`[data-key="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  function card(h) {
    const held = Date.now() - (h.quarantined_at_ms || Date.now());
    const ttlLeft = ttlMs !== null ? ttlMs - held : null;
    const hist = histories.get(h.from);
    const txs = hist ? hist.data.txs : [];
    const waiting = txs.filter((t) => t.status === "waiting" && t.blocked_by === h.hash).sort((a, b) => a.nonce - b.nonce);
    const release = el("button", { type: "button", class: "release", "data-key": "release:" + h.hash, onclick: () => decide("release", h, waiting) }, "Release…");
    const reject = el("button", { type: "button", class: "reject danger", "data-key": "reject:" + h.hash, onclick: () => decide("reject", h, waiting) }, "Reject…");
    const memo = h.kind === "anchor" ? memoText(h.memo) : null;
    return el(
      "li",
      { class: "held", "data-hash": h.hash },
      el("div", { class: "held-head" }, el("strong", {}, h.kind === "anchor" ? "Anchor " : "Transfer "), txLink(h.hash, 12), " ", el("span", { class: "score-text" }, `score ${h.score.toFixed(3)} vs threshold ${h.threshold.toFixed(3)}`), scoreMeter(h.score, h.threshold)),
      el(
        "div",
        { class: "held-body" },
        el(
          "div",
          {},
          facts([
            ["From", addressLink(h.from)],
            ["To", h.to ? addressLink(h.to) : undefined],
            ["Amount", h.amount !== undefined ? amount(h.amount) : undefined],
            ["Fee", amount(h.fee)],
            ["Nonce", String(h.nonce)],
            ["Memo", memo !== null ? el("span", { class: "memo" }, memo) : undefined],
            ["Model", h.model_id ? hexSpan(h.model_id, 8) : "—"],
            ["Held for", duration(held)],
            ["TTL left", ttlLeft === null ? "—" : ttlLeft > 0 ? duration(ttlLeft) : "expiring"],
          ]),
          el("p", { class: "why" }, "Why it was held:"),
          el("ul", { class: "reasons" }, (h.reasons || []).map((r) => el("li", {}, r))),
        ),
        el(
          "div",
          { class: "history" },
          el("p", { class: "caption" }, "Sender's recent transfers (held one marked)"),
          historyChart(txs.concat(txs.some((t) => t.hash === h.hash) ? [] : [{ ...h, status: "quarantined" }]), h.hash),
          el(
            "p",
            { class: "caption" },
            waiting.length ? `${waiting.length} later tx${waiting.length === 1 ? "" : "s"} of this sender wait behind it:` : "No later txs of this sender wait behind it.",
          ),
          waiting.length ? el("ul", { class: "waiting" }, waiting.map((t) => el("li", {}, "nonce " + t.nonce + ": ", txLink(t.hash, 8), t.amount !== undefined ? " · " + amount(t.amount) : ""))) : null,
        ),
      ),
      el("div", { class: "actions" }, release, reject),
    );
  }

  async function decide(action, h, waiting) {
    const verb = action === "release" ? "Release" : "Reject";
    const consequence =
      action === "release"
        ? `It enters the mempool and will commit on every validator${waiting.length ? `; the ${waiting.length} tx(s) waiting behind it follow` : ""}.`
        : `It is dropped for good and recorded as rejected${waiting.length ? `; the ${waiting.length} tx(s) waiting behind it fail at once` : ""}.`;
    const ok = await ctx.confirm(`${verb} ${short(h.hash, 10)}?`, `${amount(h.amount ?? 0)} from ${short(h.from, 8)}. ${consequence}`, verb);
    if (!ok) return;
    mine.add(h.hash);
    try {
      const out = await rpc(action === "release" ? "quarantine_release" : "quarantine_reject", [h.hash], { admin: true });
      decided.prepend(el("li", {}, timeOf(Date.now()) + " — you " + (action === "release" ? "released " : "rejected "), txLink(h.hash), " → " + out.status));
      ctx.flash("ok", `${action === "release" ? "Released" : "Rejected"} ${short(h.hash, 10)}: now ${out.status}.`);
    } catch (err) {
      mine.delete(h.hash);
      ctx.flash("error", `${verb} failed: ${err.message}`);
      if (err instanceof RpcError && err.unauthorized) ctx.tokenRefused();
    }
    refresh();
  }

  refresh();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
    onToken() {
      refresh();
    },
  };
}

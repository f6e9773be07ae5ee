// Chain and cluster: the validators as this node sees them, the latest blocks, and the pages of
// one tx (with its proof checked here, in the browser), one block and one address.

import { historyChart } from "./charts.js";
import { addressLink, amount, el, facts, hexSpan, link, memoText, notice, replace, short, timeOf, txLink } from "./dom.js";
import { NetworkError, RpcError, rpc, ws } from "./rpc.js";
import { ProofError, cryptoAvailable, hexToBytes, parseGenesis, verifyBlock, verifyInclusion } from "./verify.js";

const POLL_MS = 2000;
const BLOCKS_SHOWN = 10;

function poller(fn, everyMs = POLL_MS, { onBlock = true } = {}) {
  let timer = null;
  let stopped = false;
  let busy = false;
  async function tick() {
    if (stopped || busy) return;
    busy = true;
    clearTimeout(timer);
    try {
      await fn();
    } finally {
      busy = false;
      if (!stopped) timer = setTimeout(tick, everyMs);
    }
  }
  let last = 0;
  const off = onBlock
    ? ws.on((ev) => {
        if (ev.type === "block" && Date.now() - last > 500) {
          last = Date.now();
          tick();
        }
      })
    : () => {};
  tick();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      off();
    },
  };
}

// --- cluster -----------------------------------------------------------------------------------

export function mountCluster(main) {
  const state = el("p", { role: "status", "aria-live": "polite", class: "muted" });
  const table = el("div", { class: "table-wrap" });
  const blocks = el("div", { class: "table-wrap" });
  main.append(
    el("h2", {}, "Chain and cluster"),
    el("p", { class: "lede" }, "Every genesis validator as this node sees it (from its peers' status messages), and the latest blocks. Search above for a tx hash, a block height or an address."),
    state,
    el("h3", {}, "Validators"),
    table,
    el("h3", {}, "Latest blocks"),
    blocks,
  );
  const p = poller(async () => {
    try {
      const c = await rpc("cluster_status");
      drawValidators(c);
      await drawBlocks(c.height);
      replace(state, `Chain ${c.chain_id} · this console is served by validator ${c.node_id} · updated ${new Date().toLocaleTimeString("en-GB")}`);
    } catch (err) {
      replace(state, notice("warn", err instanceof NetworkError ? "This node is not answering; reconnecting… (figures below are from before)" : String(err.message)));
    }
  });

  function drawValidators(c) {
    const rows = c.validators.map((v) => {
      const up = v.connected;
      const roles = [];
      if (v.index === c.primary) roles.push("primary");
      if (v.self) roles.push("this node");
      let ready;
      if (v.self) ready = v.ready ? "ready" : v.syncing ? "catching up" : "not ready";
      else if (!up) ready = "—";
      else ready = v.lag !== null && Math.abs(v.lag) <= 1 && v.view === c.view ? "in step" : "behind";
      return el(
        "tr",
        { class: up ? "up" : "down", "data-validator": String(v.index) },
        el("th", { scope: "row" }, String(v.index)),
        el("td", {}, roles.join(", ") || "—"),
        el("td", { class: "state" }, el("span", { class: up ? "badge ok" : "badge bad" }, up ? "up" : "down")),
        el("td", {}, v.height ?? "—"),
        el("td", {}, v.view ?? "—"),
        el("td", {}, v.lag === null ? "—" : v.lag <= 0 ? "0" : String(v.lag) + " behind"),
        el("td", {}, v.self ? String(v.peers) : up ? "connected" : "not connected"),
        el("td", {}, ready),
        el("td", {}, hexSpan(v.public_key, 6)),
      );
    });
    replace(
      table,
      el(
        "table",
        { id: "validators" },
        el("caption", {}, `view ${c.view}, primary ${c.primary}, f = ${c.f} (2f+1 = ${2 * c.f + 1} needed to commit)`),
        el("thead", {}, el("tr", {}, ["#", "role", "state", "height", "view", "lag", "peers", "ready", "key"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows),
      ),
    );
  }

  async function drawBlocks(head) {
    const heights = [];
    for (let h = head; h >= 1 && heights.length < BLOCKS_SHOWN; h--) heights.push(h);
    const got = await Promise.all(heights.map((h) => rpc("block_get", { height: h }).catch(() => null)));
    replace(
      blocks,
      el(
        "table",
        { id: "blocks" },
        el("thead", {}, el("tr", {}, ["height", "time", "txs", "proposer", "view", "hash"].map((h) => el("th", { scope: "col" }, h)))),
        el(
          "tbody",
          {},
          got.filter(Boolean).map((b) =>
            el("tr", {}, el("th", { scope: "row" }, link("#block/" + b.height, String(b.height))), el("td", {}, timeOf(b.timestamp)), el("td", {}, String(b.tx_hashes.length)), el("td", {}, String(b.proposer)), el("td", {}, String(b.view)), el("td", {}, hexSpan(b.hash, 8))),
          ),
        ),
      ),
    );
  }
  return p;
}

// --- trust: the validator set proofs are checked against -------------------------------------

let trusted = null; // {source, chainId, validators, hash}

async function trustedSet() {
  if (trusted) return trusted;
  const s = await rpc("node_status");
  return {
    source: "node",
    chainId: s.chain_id,
    validators: s.validators.map((v) => hexToBytes(v.public_key, 32, "validator key")),
    hash: null,
  };
}

function genesisPicker(onChange) {
  const input = el("input", { type: "file", id: "genesis-file", accept: ".json,application/json" });
  const label = el("p", { class: "caption", id: "trust-source" });
  const show = () =>
    replace(
      label,
      trusted
        ? `Checking against the genesis file you chose (chain ${trusted.chainId}, ${trusted.validators.length} validators${trusted.hash ? ", genesis hash " + short(trusted.hash, 8) : ""}).`
        : "Checking against the validator set this node reports. To check without trusting this node, choose the genesis.json you hold: ",
    );
  input.addEventListener("change", async () => {
    const file = input.files && input.files[0];
    if (!file) return;
    try {
      const g = await parseGenesis(await file.text());
      trusted = { source: "file", ...g };
    } catch (err) {
      trusted = null;
      label.after(notice("error", "Genesis file not usable: " + err.message));
    }
    show();
    onChange();
  });
  show();
  return el("div", { class: "trust" }, label, el("label", { for: "genesis-file" }, "Genesis file "), input);
}

// --- one transaction ---------------------------------------------------------------------------

export function mountTx(main, hash) {
  const body = el("div");
  const verdict = el("div", { id: "verdict", role: "status", "aria-live": "polite" });
  main.append(el("h2", {}, "Transaction ", hexSpan(hash, 12)), body, el("h3", {}, "Proof of inclusion"), verdict);
  let lastStatus = null;
  const p = poller(async () => {
    try {
      const tx = await rpc("tx_get", [hash]);
      if (tx.status !== lastStatus) {
        lastStatus = tx.status;
        draw(tx);
        if (tx.status === "committed" || (tx.status === "rejected" && tx.height != null)) check(tx);
        else replace(verdict, el("p", { class: "muted" }, "Not in a block yet: there is nothing to prove."));
      }
    } catch (err) {
      if (err instanceof RpcError) replace(body, notice("error", "This node does not know that transaction: " + err.message));
    }
  });

  function draw(tx) {
    const a = tx.anomaly;
    replace(
      body,
      facts([
        ["Status", el("strong", { id: "tx-status" }, tx.status + (tx.reason ? " (" + tx.reason + ")" : ""))],
        ["Waiting behind", tx.blocked_by ? txLink(tx.blocked_by) : undefined],
        ["Kind", tx.kind],
        ["From", tx.from ? addressLink(tx.from) : undefined],
        ["To", tx.to ? addressLink(tx.to) : undefined],
        ["Amount", tx.amount !== undefined ? amount(tx.amount) : undefined],
        ["Fee", tx.fee !== undefined ? amount(tx.fee) : undefined],
        ["Nonce", tx.nonce !== undefined ? String(tx.nonce) : undefined],
        ["Digest", tx.digest ? hexSpan(tx.digest, 16) : undefined],
        ["Memo", tx.memo !== undefined ? el("span", { class: "memo", id: "tx-memo" }, memoText(tx.memo)) : undefined],
        ["Block", tx.height != null ? link("#block/" + tx.height, String(tx.height)) : undefined],
        ["Position", tx.index != null ? String(tx.index) : undefined],
        ["Anomaly score", a ? `${a.score.toFixed(3)} vs threshold ${a.threshold.toFixed(3)}` : undefined],
        ["Detector's reasons", a && a.reasons && a.reasons.length ? el("ul", { class: "reasons" }, a.reasons.map((r) => el("li", {}, r))) : undefined],
      ]),
    );
  }

  async function check(tx) {
    replace(verdict, el("p", { class: "muted" }, "Checking the proof in this browser…"));
    if (!cryptoAvailable()) {
      replace(verdict, notice("warn", "This browser cannot check proofs here: WebCrypto needs a secure context (HTTPS, or the node on localhost / 127.0.0.1)."));
      return;
    }
    try {
      const [proof, block, trust] = await Promise.all([rpc("tx_proof", [hash]), rpc("block_get", { height: tx.height }), trustedSet()]);
      const ok = await verifyInclusion(hash, proof, block, trust.validators, trust.chainId);
      replace(
        verdict,
        el(
          "div",
          { class: "verdict good", "data-verdict": "verified" },
          el("p", {}, el("strong", {}, "Verified. "), `This transaction is in block ${ok.header.height} at position ${proof.index}, and ${ok.signers.length} of the ${ok.n} genesis validators signed that block's commit certificate (${ok.quorum} needed).`),
          el("ul", {}, el("li", {}, "The Merkle branch leads from the tx hash to the block's tx_root."), el("li", {}, "The block's hash and tx list match its header; the certificate commits exactly this header."), el("li", {}, "Signers: validators " + ok.signers.join(", ") + " (Ed25519, checked with WebCrypto).")),
        ),
        genesisPicker(() => check(tx)),
      );
    } catch (err) {
      const why = err instanceof ProofError ? err.message : "could not fetch the proof: " + err.message;
      replace(verdict, el("div", { class: "verdict bad", "data-verdict": "failed", role: "alert" }, el("p", {}, el("strong", {}, "NOT verified. "), "Do not rely on this answer: " + why + ".")), genesisPicker(() => check(tx)));
    }
  }
  return p;
}

// --- one block ---------------------------------------------------------------------------------

export function mountBlock(main, height) {
  const body = el("div");
  const verdict = el("div", { role: "status", "aria-live": "polite" });
  main.append(el("h2", {}, "Block " + height), verdict, body);
  (async () => {
    try {
      const b = await rpc("block_get", { height });
      replace(
        body,
        facts([
          ["Hash", hexSpan(b.hash, 16)],
          ["Previous", link("#block/" + (b.height - 1), hexSpan(b.prev_hash, 16))],
          ["Time", timeOf(b.timestamp)],
          ["Proposer", String(b.proposer)],
          ["Committed in view", String(b.view)],
          ["tx_root", hexSpan(b.tx_root, 16)],
          ["Signers", b.certificate ? b.certificate.commits.map((c) => c.index).join(", ") : "—"],
        ]),
        el("h3", {}, `${b.tx_hashes.length} transaction${b.tx_hashes.length === 1 ? "" : "s"}`),
        el("ol", { start: "0", class: "txs" }, b.tx_hashes.map((h) => el("li", {}, txLink(h, 16)))),
      );
      if (b.height > 0 && cryptoAvailable()) {
        try {
          const t = await trustedSet();
          const ok = await verifyBlock(b, t.validators, t.chainId);
          replace(verdict, notice("ok", `Verified: ${ok.signers.length} of ${ok.n} genesis validators signed this block's certificate, and it commits exactly this header and tx list.`));
        } catch (err) {
          replace(verdict, notice("error", "NOT verified: " + err.message));
        }
      }
    } catch (err) {
      replace(body, notice("error", err.message));
    }
  })();
  return { stop() {} };
}

// --- one address -------------------------------------------------------------------------------

export function mountAddress(main, address) {
  const body = el("div");
  main.append(el("h2", {}, "Address ", hexSpan(address, 12)), body);
  return poller(
    async () => {
      try {
        const [acct, hist] = await Promise.all([rpc("account_get", [address]), rpc("account_txs", { address, limit: 50 })]);
        const rows = hist.txs.map((t) =>
          el(
            "tr",
            {},
            el("td", {}, txLink(t.hash, 8)),
            el("td", {}, t.status + (t.reason ? " (" + t.reason + ")" : "")),
            el("td", {}, t.height != null ? link("#block/" + t.height, String(t.height)) : "—"),
            el("td", {}, t.from === address ? "out" : "in"),
            el("td", {}, t.kind === "transfer" ? (t.from === address ? addressLink(t.to, 6) : addressLink(t.from, 6)) : el("span", { class: "memo" }, memoText(t.memo))),
            el("td", { class: "num" }, t.amount !== undefined ? amount(t.amount) : "—"),
            el("td", {}, String(t.nonce)),
            el("td", {}, timeOf(t.timestamp || t.quarantined_at_ms)),
          ),
        );
        const held = hist.txs.find((t) => t.status === "quarantined");
        replace(
          body,
          facts([
            ["Balance", amount(acct.balance)],
            ["Next nonce", String(acct.nonce)],
          ]),
          el("div", { class: "history" }, historyChart(hist.txs.filter((t) => t.from === address), held ? held.hash : null)),
          el("h3", {}, "Recent transactions"),
          el("p", { class: "caption" }, `Held, waiting and pending ones first, then committed ones from the last ${hist.blocks_scanned} blocks.`),
          el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {}, ["tx", "status", "block", "dir", "counterparty / memo", "amount", "nonce", "time"].map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, rows))),
        );
      } catch (err) {
        if (!(err instanceof NetworkError)) replace(body, notice("error", err.message));
      }
    },
    5000,
  );
}

/** Where a search string leads: a height, a tx hash (32 bytes) or an address (20 bytes). */
export function searchTarget(q) {
  const s = q.trim();
  if (/^\d+$/.test(s)) return "#block/" + Number(s);
  const hex = s.startsWith("0x") || s.startsWith("0X") ? s.slice(2) : s;
  if (/^[0-9a-fA-F]{64}$/.test(hex)) return "#tx/0x" + hex.toLowerCase();
  if (/^[0-9a-fA-F]{40}$/.test(hex)) return "#address/0x" + hex.toLowerCase();
  return null;
}

// The anchor check: a file dropped here is hashed in this browser (SHA-256, SubtleCrypto) and
// only its digest is sent to the node, which answers where that digest was first anchored.

import { el, facts, link, notice, replace, timeOf, txLink } from "./dom.js";
import { RpcError, rpc } from "./rpc.js";
import { bytesToHex, cryptoAvailable, sha256 } from "./verify.js";

const FILE_BYTES_MAX = 512 * 1024 * 1024;

export function mountAnchor(main) {
  const result = el("div", { id: "anchor-result", role: "status", "aria-live": "polite" });
  const input = el("input", { type: "file", id: "anchor-file" });
  const zone = el(
    "div",
    { class: "dropzone", id: "dropzone", tabindex: "0", role: "button", "aria-label": "drop a file here, or press Enter to choose one" },
    el("p", {}, "Drop a file here, or press Enter / click to choose one."),
    el("p", { class: "caption" }, "The file never leaves this browser: only its SHA-256 digest is sent to the node."),
  );
  main.append(el("h2", {}, "Anchor check"), el("p", { class: "lede" }, "Was this exact file anchored on the chain, and when?"), zone, el("label", { for: "anchor-file", class: "sr-only" }, "file to check"), input, result);

  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      input.click();
    }
  });
  zone.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    const file = ev.dataTransfer && ev.dataTransfer.files[0];
    if (file) check(file);
  });
  input.addEventListener("change", () => {
    if (input.files && input.files[0]) check(input.files[0]);
  });

  async function check(file) {
    if (!cryptoAvailable()) {
      replace(result, notice("warn", "This browser cannot hash files here: WebCrypto needs a secure context (HTTPS, or the node on localhost / 127.0.0.1)."));
      return;
    }
    if (file.size > FILE_BYTES_MAX) {
      replace(result, notice("error", "That file is larger than 512 MiB; use `vigil verify FILE` instead."));
      return;
    }
    replace(result, el("p", { class: "muted" }, "Hashing " + file.name + "…"));
    const digest = bytesToHex(await sha256(await file.arrayBuffer()));
    try {
      const a = await rpc("anchor_get", [digest]);
      replace(
        result,
        el("div", { class: "verdict good", "data-anchor": "found" }, el("p", {}, el("strong", {}, "Anchored. "), `This file's digest was first anchored in block ${a.height} on ${timeOf(a.timestamp)}.`)),
        facts([
          ["File", file.name],
          ["SHA-256", el("span", { class: "hex", id: "anchor-digest" }, digest)],
          ["Anchor tx", txLink(a.hash, 12)],
          ["Block", link("#block/" + a.height, String(a.height))],
        ]),
        el("p", { class: "caption" }, "Open the anchor tx to check its Merkle proof and commit certificate in this browser."),
      );
    } catch (err) {
      if (err instanceof RpcError && err.code === -32005) {
        replace(result, el("div", { class: "verdict bad", "data-anchor": "missing" }, el("p", {}, el("strong", {}, "Not anchored. "), "No committed anchor of this file's digest on this chain.")), facts([["File", file.name], ["SHA-256", el("span", { class: "hex", id: "anchor-digest" }, digest)]]));
      } else {
        replace(result, notice("error", err.message));
      }
    }
  }
  return { stop() {} };
}

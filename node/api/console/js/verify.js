// Client-side proof checking, trusting only a validator set and a chain id; the same checks as
// node/tools/proofs.py: the Merkle branch against the header's tx_root, the header against its
// hash and its commit certificate (seq, digest of the Proposal, view), and 2f+1 valid Ed25519
// COMMIT signatures of the validators (WebCrypto). Answers never throw: they say what failed.

const enc = new TextEncoder();
const NULL_DIGEST = new Uint8Array(32);
const BLOCK_VERSION = 2;

export class ProofError extends Error {}

export function cryptoAvailable() {
  return Boolean(globalThis.crypto && crypto.subtle);
}

export function hexToBytes(value, size, what = "value") {
  if (typeof value !== "string" || !/^0x([0-9a-fA-F]{2})*$/.test(value)) {
    throw new ProofError(what + ": expected 0x-prefixed hex");
  }
  const out = new Uint8Array((value.length - 2) / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(value.substr(2 + 2 * i, 2), 16);
  if (size !== undefined && out.length !== size) {
    throw new ProofError(what + ": expected " + size + " bytes, got " + out.length);
  }
  return out;
}

export function bytesToHex(bytes) {
  return "0x" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

// --- the canonical msgpack encoding of common/codec.py ------------------------------------------
// Maps sorted by the UTF-8 bytes of their keys, shortest integer and length forms, bin for bytes,
// str for text, no floats. Integers may be numbers (safe range) or BigInt.

function pushUint(out, tag8, tag16, tag32, n) {
  if (n < 0x100 && tag8 !== null) out.push(tag8, n);
  else if (n < 0x10000) out.push(tag16, n >> 8, n & 0xff);
  else out.push(tag32, (n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
}

function encodeInto(value, out) {
  if (typeof value === "number" || typeof value === "bigint") {
    if (typeof value === "number" && !Number.isSafeInteger(value)) throw new ProofError("not an integer");
    let n = BigInt(value);
    if (n < 0n) throw new ProofError("negative integers are not used here");
    if (n < 128n) out.push(Number(n));
    else if (n < 0x100n) out.push(0xcc, Number(n));
    else if (n < 0x10000n) out.push(0xcd, Number(n >> 8n), Number(n & 0xffn));
    else if (n < 0x100000000n) {
      out.push(0xce);
      for (let s = 24n; s >= 0n; s -= 8n) out.push(Number((n >> s) & 0xffn));
    } else if (n < 1n << 64n) {
      out.push(0xcf);
      for (let s = 56n; s >= 0n; s -= 8n) out.push(Number((n >> s) & 0xffn));
    } else throw new ProofError("integer out of range");
  } else if (typeof value === "string") {
    const b = enc.encode(value);
    if (b.length < 32) out.push(0xa0 | b.length);
    else pushUint(out, 0xd9, 0xda, 0xdb, b.length);
    for (const x of b) out.push(x);
  } else if (value instanceof Uint8Array) {
    pushUint(out, 0xc4, 0xc5, 0xc6, value.length);
    for (const x of value) out.push(x);
  } else if (Array.isArray(value)) {
    if (value.length < 16) out.push(0x90 | value.length);
    else pushUint(out, null, 0xdc, 0xdd, value.length);
    for (const item of value) encodeInto(item, out);
  } else if (typeof value === "boolean") {
    out.push(value ? 0xc3 : 0xc2);
  } else if (value === null) {
    out.push(0xc0);
  } else if (typeof value === "object") {
    const keys = Object.keys(value).map((k) => [enc.encode(k), k]);
    keys.sort((a, b) => {
      const n = Math.min(a[0].length, b[0].length);
      for (let i = 0; i < n; i++) if (a[0][i] !== b[0][i]) return a[0][i] - b[0][i];
      return a[0].length - b[0].length;
    });
    if (keys.length < 16) out.push(0x80 | keys.length);
    else pushUint(out, null, 0xde, 0xdf, keys.length);
    for (const [, k] of keys) {
      encodeInto(k, out);
      encodeInto(value[k], out);
    }
  } else {
    throw new ProofError("no canonical encoding for " + typeof value);
  }
}

export function encode(value) {
  const out = [];
  encodeInto(value, out);
  return new Uint8Array(out);
}

// --- Merkle tree of common/merkle.py ----------------------------------------------------------

const leafHash = (leaf) => sha256(concat(Uint8Array.of(0), leaf));
const nodeHash = (l, r) => sha256(concat(Uint8Array.of(1), l, r));

export async function merkleRoot(leaves) {
  if (!leaves.length) return sha256(new Uint8Array(0));
  let level = await Promise.all(leaves.map(leafHash));
  while (level.length > 1) {
    const next = [];
    for (let i = 0; i + 1 < level.length; i += 2) next.push(await nodeHash(level[i], level[i + 1]));
    if (level.length % 2) next.push(level[level.length - 1]);
    level = next;
  }
  return level[0];
}

/** True when ``branch`` proves ``leaf`` at ``index`` of a ``size``-leaf tree with ``root``. */
export async function verifyBranch(leaf, index, branch, root, size) {
  if (!(Number.isInteger(index) && Number.isInteger(size) && index >= 0 && index < size)) return false;
  let current = await leafHash(leaf);
  let used = 0;
  let width = size;
  while (width > 1) {
    if (index % 2 === 1) {
      if (used >= branch.length) return false;
      current = await nodeHash(branch[used++], current);
    } else if (index + 1 < width) {
      if (used >= branch.length) return false;
      current = await nodeHash(current, branch[used++]);
    }
    index = Math.floor(index / 2);
    width = Math.floor((width + 1) / 2);
  }
  return used === branch.length && equal(current, root);
}

// --- headers, certificates, signatures --------------------------------------------------------

function uintField(value, what) {
  if (!Number.isSafeInteger(value) || value < 0) throw new ProofError(what + ": expected a non-negative integer");
  return value;
}

export async function verifyEd25519(publicKey, message, signature) {
  try {
    const key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify({ name: "Ed25519" }, key, signature, message);
  } catch {
    return false;
  }
}

/**
 * Check a block_get answer: header hash, the certificate commits this header and tx list, and
 * 2f+1 validators signed it. Returns {header, txHashes, signers, quorum}; throws ProofError.
 */
export async function verifyBlock(block, validators, chainId) {
  const header = {
    version: BLOCK_VERSION,
    height: uintField(block.height, "header.height"),
    prev_hash: hexToBytes(block.prev_hash, 32, "header.prev_hash"),
    tx_root: hexToBytes(block.tx_root, 32, "header.tx_root"),
    proposer: uintField(block.proposer, "header.proposer"),
    timestamp_ms: uintField(block.timestamp, "header.timestamp"),
    payload_digest: hexToBytes(block.payload_digest, 32, "header.payload_digest"),
  };
  const hash = await sha256(encode(header));
  if (block.hash !== undefined && !equal(hash, hexToBytes(block.hash, 32, "header.hash"))) {
    throw new ProofError("the block's hash does not match its header fields");
  }
  if (!Array.isArray(block.tx_hashes)) throw new ProofError("the block lists no tx hashes");
  const txHashes = block.tx_hashes.map((h) => hexToBytes(h, 32, "block.tx_hashes[]"));
  const cert = block.certificate;
  if (!cert || typeof cert !== "object") throw new ProofError("the block has no commit certificate");
  const view = uintField(cert.view, "certificate.view");
  const seq = uintField(cert.seq, "certificate.seq");
  const digest = hexToBytes(cert.digest, 32, "certificate.digest");
  if (block.view !== undefined && block.view !== null && block.view !== view) {
    throw new ProofError("the certificate's view does not match the header");
  }
  if (seq !== header.height || !equal(digest, header.payload_digest)) {
    throw new ProofError("the certificate is for another block (height or digest differs)");
  }
  if (!equal(await merkleRoot(txHashes), header.tx_root)) {
    throw new ProofError("the block's tx list does not hash to its tx_root");
  }
  if (equal(digest, NULL_DIGEST)) {
    if (txHashes.length) throw new ProofError("a null block cannot hold transactions");
  } else {
    const proposal = {
      height: header.height,
      proposer: header.proposer,
      timestamp_ms: header.timestamp_ms,
      tx_hashes: txHashes,
    };
    if (!equal(await sha256(encode(proposal)), digest)) {
      throw new ProofError("the certificate does not commit this header and tx list");
    }
  }
  const n = validators.length;
  if (!n) throw new ProofError("no validator set to check against");
  const quorum = 2 * Math.floor((n - 1) / 3) + 1;
  if (!Array.isArray(cert.commits)) throw new ProofError("the certificate lists no signatures");
  const domain = enc.encode("vigil/pbft/commit/v1");
  let last = -1;
  const signers = [];
  for (const c of cert.commits) {
    const index = uintField(c.index, "certificate.commits.index");
    if (index <= last || index >= n) throw new ProofError("the certificate's signer list is malformed");
    last = index;
    const sig = hexToBytes(c.signature, 64, "certificate.signature");
    const content = encode({ chain: chainId, type: "commit", view, seq, digest, sender: index });
    const message = concat(domain, Uint8Array.of(0), content);
    if (!(await verifyEd25519(validators[index], message, sig))) {
      throw new ProofError("validator " + index + "'s signature on the certificate is not valid");
    }
    signers.push(index);
  }
  if (signers.length < quorum) {
    throw new ProofError("only " + signers.length + " validators signed; " + quorum + " are needed");
  }
  return { header, hash, txHashes, signers, quorum, n };
}

/** Check that ``txHash`` is proven committed in ``block``; returns the block check's result. */
export async function verifyInclusion(txHash, proof, block, validators, chainId) {
  const checked = await verifyBlock(block, validators, chainId);
  const leaf = hexToBytes(txHash, 32, "tx hash");
  if (proof.height !== checked.header.height) {
    throw new ProofError("the proof is for height " + proof.height + ", the block is " + checked.header.height);
  }
  if (!equal(hexToBytes(proof.tx_root, 32, "proof.tx_root"), checked.header.tx_root)) {
    throw new ProofError("the proof's tx_root differs from the block header's");
  }
  if (!Array.isArray(proof.branch)) throw new ProofError("the proof has no Merkle branch");
  const branch = proof.branch.map((h) => hexToBytes(h, 32, "proof.branch[]"));
  const size = checked.txHashes.length;
  if (proof.size !== undefined && proof.size !== size) {
    throw new ProofError("the proof's tree size differs from the block's tx count");
  }
  if (!(await verifyBranch(leaf, proof.index, branch, checked.header.tx_root, size))) {
    throw new ProofError("the Merkle branch does not lead to the block's tx_root");
  }
  return checked;
}

/** Validators and chain id from a genesis.json the operator trusts, plus its hash. */
export async function parseGenesis(text) {
  let g;
  try {
    g = JSON.parse(text);
  } catch {
    throw new ProofError("the genesis file is not JSON");
  }
  if (!g || !Array.isArray(g.validators) || typeof g.chain_id !== "string") {
    throw new ProofError("the genesis file has no chain_id or validators");
  }
  const validators = g.validators.map((v, i) => {
    if (v.index !== i) throw new ProofError("genesis validators are not in index order");
    return hexToBytes(v.public_key, 32, "validators[" + i + "].public_key");
  });
  let hash = null;
  try {
    const balances = (g.balances || []).map((b) => {
      // JSON numbers above 2^53 lost digits in JSON.parse: no hash rather than a wrong one.
      if (!Number.isSafeInteger(b.amount)) throw new ProofError("amount beyond 2^53");
      return [hexToBytes(b.address, 20, "address"), b.amount];
    });
    const value = {
      version: g.version,
      chain_id: g.chain_id,
      timestamp_ms: g.timestamp_ms,
      validators: g.validators.map((v, i) => ({ index: v.index, public_key: validators[i] })),
      balances,
    };
    hash = bytesToHex(await sha256(encode(value)));
  } catch {
    hash = null;
  }
  return { chainId: g.chain_id, validators, hash };
}

// ethers v6 against a running Vigil node: the wallet flow and the errors a wallet shows.
// Run by tests/test_e2e_eth_ethers.py: env RPC_URL, WS_URL, PRIVATE_KEY (funded by a native
// transfer, committed in block FUNDING_BLOCK), NATIVE_TO (a native address), ANCHOR (the anchor
// address), DIGEST (0x + 32 bytes).
// Prints one JSON transcript on stdout; exits non-zero on any failed expectation.
import { ethers } from "ethers";

const env = process.env;
const out = [];
const note = (step, fields) => out.push({ step, ...fields });
function expect(cond, what) {
  if (!cond) throw new Error("expectation failed: " + what);
}
const big = (v) => v.toString();
// ethers' tx.wait() checks the receipt once, then again on every *new* block its poller sees:
// the cluster runs with the heartbeat on ([block] empty_interval_ms, docs/rpc.md), so the head
// advances while idle and a tx committed between the two checks is still found.

// cacheTimeout -1: by default ethers answers a call identical to one made within the last 250 ms
// from its own cache; a chain that commits in tens of ms then looks stale to the script (an
// account's nonce as of two blocks before a receipt the script already holds).
const provider = new ethers.JsonRpcProvider(env.RPC_URL, undefined, { staticNetwork: true, pollingInterval: 100, cacheTimeout: -1 });
const network = await provider.getNetwork();
const alice = new ethers.Wallet(env.PRIVATE_KEY, provider);
const bob = ethers.Wallet.createRandom().connect(provider);
const fee = await provider.getFeeData();
note("connect", { chainId: big(network.chainId), gasPrice: big(fee.gasPrice), maxFeePerGas: big(fee.maxFeePerGas), maxPriorityFeePerGas: big(fee.maxPriorityFeePerGas) });
const start = await provider.getBalance(alice.address);
note("funded", { address: alice.address, balance: ethers.formatEther(start) });

// to a native address (type 2, fees from the node)
// signed here and broadcast raw, so the same bytes can be replayed below
const raw1 = await alice.signTransaction(await alice.populateTransaction({ to: env.NATIVE_TO, value: ethers.parseEther("0.25") }));
const tx1 = await provider.broadcastTransaction(raw1);
const r1 = await tx1.wait(1, 60000);
expect(r1.status === 1 && r1.gasUsed === 21000n, "native transfer receipt");
const after1 = await provider.getBalance(alice.address);
expect(after1 === start - ethers.parseEther("0.25") - r1.fee, "balance = start - value - gasUsed*effectiveGasPrice");
note("type2 to native address", { hash: tx1.hash, status: r1.status, gasUsed: big(r1.gasUsed), effectiveGasPrice: big(r1.gasPrice), fee: big(r1.fee), balance: ethers.formatEther(after1) });

// to another Ethereum account (legacy, EIP-155)
const tx2 = await alice.sendTransaction({ to: bob.address, value: ethers.parseEther("2"), type: 0, gasPrice: fee.gasPrice });
const r2 = await tx2.wait(1, 60000);
expect(r2.status === 1 && r2.type === 0, "legacy receipt");
expect((await provider.getBalance(bob.address)) === ethers.parseEther("2"), "bob's balance");
note("legacy to Ethereum account", { hash: tx2.hash, status: r2.status, bob: ethers.formatEther(await provider.getBalance(bob.address)) });

// bob pays back
const tx3 = await bob.sendTransaction({ to: alice.address, value: ethers.parseEther("1") });
expect((await tx3.wait(1, 60000)).status === 1, "bob's payment");
const nonces = { alice: await provider.getTransactionCount(alice.address), alicePending: await provider.getTransactionCount(alice.address, "pending"), bob: await provider.getTransactionCount(bob.address) };
expect(nonces.alice === 2 && nonces.alicePending === 2 && nonces.bob === 1, "nonces");
note("nonces", nonces);

// anchor: data = digest ‖ memo to the anchor address; found with getLogs
const data = ethers.concat([env.DIGEST, ethers.toUtf8Bytes("ethers")]);
const gas = await provider.estimateGas({ from: alice.address, to: env.ANCHOR, data });
const tx4 = await alice.sendTransaction({ to: env.ANCHOR, data, gasLimit: gas });
const r4 = await tx4.wait(1, 60000);
expect(r4.status === 1 && r4.gasUsed === gas, "anchor receipt");
expect(r4.logs.length === 1 && r4.logs[0].topics[0] === env.DIGEST, "anchor log");
const logs = await provider.getLogs({ address: env.ANCHOR, topics: [env.DIGEST], fromBlock: 0, toBlock: "latest" });
expect(logs.length === 1 && logs[0].transactionHash === tx4.hash, "getLogs finds the anchor");
note("anchor", { hash: tx4.hash, gasUsed: big(r4.gasUsed), block: r4.blockNumber, logs: logs.length, topic: logs[0].topics[0] });

// blocks with and without txs, by number and hash; code
const blk = await provider.getBlock(r4.blockNumber, true);
expect(blk.hash === r4.blockHash && blk.prefetchedTransactions.some((t) => t.hash === tx4.hash), "block with txs");
const byHash = await provider.getBlock(r4.blockHash);
expect(byHash.number === r4.blockNumber && byHash.transactions.includes(tx4.hash), "block by hash");
// holds the native funding transfer (not block 1: heartbeat blocks may come before it)
const first = await provider.getBlock(Number(env.FUNDING_BLOCK), true);
expect(first.prefetchedTransactions.length >= 1, "a block with a native tx parses");
expect((await provider.getCode(bob.address)) === "0x", "no code");
note("blocks", { number: blk.number, hash: blk.hash, baseFeePerGas: big(blk.baseFeePerGas), gasUsed: big(blk.gasUsed), nativeTxFrom: first.prefetchedTransactions[0].from });

// websocket: newHeads and logs
const ws = new ethers.WebSocketProvider(env.WS_URL, undefined, { staticNetwork: true });
const seen = new Promise((resolve) => ws.on("block", (n) => resolve(n)));
const gotLog = new Promise((resolve) => ws.on({ address: env.ANCHOR }, (log) => resolve(log)));
const data2 = ethers.concat([ethers.sha256(ethers.toUtf8Bytes("ws")), ethers.toUtf8Bytes("ws")]);
const tx5 = await alice.sendTransaction({ to: env.ANCHOR, data: data2 });
const head = await seen;
const wsLog = await gotLog;
expect(wsLog.transactionHash === tx5.hash, "logs subscription");
note("websocket", { newHead: head, logTx: wsLog.transactionHash });
await ws.destroy();

// errors, as ethers reports them
const pending = await provider.getTransactionCount(alice.address, "pending");
const base = { to: bob.address, value: 1000000000n, gasLimit: 21000n, gasPrice: fee.gasPrice, nonce: pending, chainId: network.chainId, type: 0 };
async function refuse(name, raw) {
  try {
    await provider.broadcastTransaction(raw);
  } catch (e) {
    const err = e.error ?? e.info?.error ?? {};
    note("error: " + name, { ethersCode: e.code, rpcCode: err.code, message: err.message ?? e.shortMessage });
    return;
  }
  throw new Error(name + ": was accepted");
}
await refuse("wrong chain id", await alice.signTransaction({ ...base, chainId: 1n }));
await refuse("replayed raw tx", raw1);
await refuse("too low a fee", await alice.signTransaction({ ...base, gasPrice: 1n }));
await refuse("malformed RLP", "0xf86b80843b9aca00");
await refuse("oversized tx", await alice.signTransaction({ ...base, to: env.ANCHOR, value: 0n, data: "0x" + "01".repeat(2000), gasLimit: 100000n }));
await refuse("insufficient funds", await alice.signTransaction({ ...base, value: ethers.parseEther("100000") }));
try {
  await provider.call({ to: bob.address, data: "0x12345678" });
  throw new Error("eth_call was accepted");
} catch (e) {
  note("error: eth_call", { ethersCode: e.code, message: e.error?.message ?? e.info?.error?.message ?? e.shortMessage });
}
console.log(JSON.stringify(out));
provider.destroy();

"""``scripts/bench``: load a cluster with signed transfers and print one JSON line of results.

Transfers are pre-signed before the clock starts (signing is not what we measure), from the
funded bench accounts of node/tools/devnet.py, round-robin over the nodes in JSON-RPC batches. With
``--rate R`` batches leave on an open-loop schedule (R tx/s whatever the answers); with
``--rate max`` each client sends its next batch as soon as the previous one is answered. Each
account is a wallet (``Wallets``): it sends in nonce order and keeps a tx back while an earlier one
of its own is unanswered or pushed back, so above capacity the schedule's txs wait in their
wallets (``kept_back``) instead of reaching a node behind a nonce gap. Commits
are timed per tx at the node that took it (its entry node): every node's ``/ws`` ``blocks``
subscription stamps each block as that node announces it (published once the block is durable,
when ``tx_get`` there says committed), and ``block_get`` (batched, every 0.2 s) tells which txs
a height holds. Latency = submit to the entry node's announcement of the block holding the tx; a
block whose announcement the entry node's feed missed (a node down) counts from the latest sign
of it: when ``block_get`` returned it (up to 0.2 s late) or another node announced it
(``commit_time_fallbacks``). ``rejected_by`` counts the rejected txs by error name, and as
``gave_up`` those still refused by back-pressure 15 s after the load ended. ``--eth-share 0.5``
makes half of the transfers Ethereum-signed (type 2, secp256k1) from accounts funded by native
transfers first.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from common.crypto import address_of
from node.chain.ethtx import WEI_PER_UNIT, eth_address, eth_chain_id, sign_dynamic_fee
from node.chain.tx import make_transfer, tx_hash_of
from node.detect.scenarios import bench_plan
from node.errors import MEMPOOL_FULL, OVERLOADED, TIMEOUT, TX_DUPLICATE
from node.tools import devnet
from node.tools.bench_probe import Probe, Profiler, format_profile, profile_table
from node.tools.client import AsyncClient, Client, ClientError, RpcError
from node.tools.devnet import Cluster, bench_eth_key

BATCH = 100
ETH_FUND_UNITS = 10**9  # what each Ethereum bench account gets (1 coin: ~47000 txs of fees)
DRAIN_S = 15.0
CLASSIFY_TXS_MAX = 20_000  # uncommitted txs whose status the bench asks for after the drain
HELD_STATUSES = frozenset({"quarantined", "waiting"})  # the detector's, and counted apart
FEEDS_WAIT_S = 5.0  # how long the load waits for every node's /ws block feed at the start
WATCH_EVERY_S = 0.2  # the watcher's block_get batches (bookkeeping; the feeds stamp commits)
WATCH_BLOCKS_MAX = 100  # blocks per block_get batch
DOWN_S = 2.0  # a node that refused a connection is skipped this long (fault drills under load)
# Admission's back-pressure answers (node/host/admission.py): the tx was not taken, send it again
# after a pause. Anything else is a final rejection.
RETRYABLE = (MEMPOOL_FULL, OVERLOADED)
RETRY_PAUSE_S = 0.05
RETRY_PAUSE_MAX_S = 2.0
# Open loop above the chain's capacity: while this many refused txs wait for their retry, no
# new batch leaves (the offered rate then follows what the chain takes, as a real client's
# would); retries must not grow into a storm that takes the validators' CPU.
RETRY_BACKLOG_MAX = 2000
# A wallet released by its settled tx sends at most this many of the txs it kept back at once.
WALLET_BURST = 16

# A presigned tx: its raw hex, its hash, and its account (the wallet that sends it).
Tx = tuple[str, str, str]


class Wallets:
    """The bench's accounts as wallets: each sends its txs in nonce order, and keeps a tx back
    while an earlier one of its own is unsettled (in flight, or refused by back-pressure and
    waiting to be sent again). A wallet does not send nonce n + 1 after n was refused: the node
    would only park it behind the gap (under load it refuses it, docs/rpc.md), and before this
    the bench did, so above capacity most of its calls were refusals of such txs (3.9 per
    committed tx per node at 1,500 tx/s offered, docs/performance.md).
    """

    def __init__(self) -> None:
        self._unsettled: dict[str, int] = {}  # account -> its txs sent and not yet settled
        self._held: dict[str, list[Tx]] = {}  # account -> txs kept back, in nonce order
        # Released by a settled tx, to go out first: one burst per wallet, never split over two
        # calls (split, the later part could reach another node first, and be taken there
        # while the earlier part was pushed back and never sent again).
        self._ready: deque[list[Tx]] = deque()
        self._stopped: set[str] = set()  # wallets whose tx the detector holds

    def take(self, fresh: Iterable[Tx], limit: int) -> list[Tx]:
        """Up to ``limit`` txs to send now: released bursts first, each whole, then ``fresh``
        ones (all of ``fresh`` is taken: what cannot go now is kept back by its wallet)."""
        out: list[Tx] = []
        while self._ready and (not out or len(out) + len(self._ready[0]) <= limit):
            out.extend(self._ready.popleft())
        for tx in fresh:
            account = tx[2]
            if self._unsettled.get(account) or account in self._held or account in self._stopped:
                self._held.setdefault(account, []).append(tx)
            elif len(out) < limit:
                self._unsettled[account] = 1
                out.append(tx)
            else:  # no room in this call: it goes first in the next one
                self._unsettled[account] = 1
                self._ready.append([tx])
        return out

    def settle(self, tx: Tx) -> None:
        """``tx`` was answered for good (taken, rejected, or given up on): once every sent tx
        of its wallet is, the txs it kept back go out together (a node takes n, n + 1 in one
        batch)."""
        account = tx[2]
        left = self._unsettled.get(account, 0) - 1
        if left > 0:
            self._unsettled[account] = left
            return
        self._unsettled.pop(account, None)
        if account in self._held and account not in self._stopped:
            self._release(account)

    def stop(self, tx: Tx) -> None:
        """The node holds ``tx`` (quarantined, or waiting behind a held tx of its sender): its
        wallet sends nothing more. Its later txs could only wait behind the hold until an
        operator releases or rejects it, verified, screened and gossiped by every validator
        (and, sent to another node, parked behind a nonce that node never saw)."""
        self._stopped.add(tx[2])

    def stopped(self) -> int:
        return len(self._stopped)

    def take_back(self, txs: list[Tx]) -> list[Tx]:
        """Of pushed-back ``txs``, the first of each wallet is sent again; the wallet takes the
        later ones back (the node would refuse them: they wait behind the first). Returns the
        txs to send again."""
        again: list[Tx] = []
        later: dict[str, list[Tx]] = {}
        for tx in txs:
            account = tx[2]
            if account in later:
                later[account].append(tx)
            else:
                later[account] = []
                again.append(tx)
        for account, back in later.items():
            if back:
                self._unsettled[account] -= len(back)
                self._held[account] = back + self._held.get(account, [])
        return again

    def _release(self, account: str) -> None:
        held = self._held.pop(account, None)
        if held:
            if len(held) > WALLET_BURST:
                self._held[account] = held[WALLET_BURST:]
                held = held[:WALLET_BURST]
            self._unsettled[account] = len(held)
            self._ready.append(held)

    def kept_back(self) -> int:
        """Txs not sent: kept back by their wallet, or released and not yet taken."""
        return sum(map(len, self._ready)) + sum(len(h) for h in self._held.values())


async def _start_nonces(session: aiohttp.ClientSession, url: str, accounts: int) -> list[int]:
    client = AsyncClient(url, session=session)
    calls = [
        ("account_get", ["0x" + address_of(devnet.bench_key(k).public_key).hex()])
        for k in range(accounts)
    ]
    nonces: list[int] = []
    for i in range(0, accounts, 100):
        for answer in await client.batch(calls[i : i + 100]):
            if isinstance(answer, Exception):
                raise SystemExit(f"cannot read bench account nonces from {url}: {answer}")
            nonces.append(int(answer["nonce"]))
    return nonces


class Bench:
    def __init__(self, cluster: Cluster, args: argparse.Namespace) -> None:
        self.c = cluster
        self.args = args
        self.sent_at: dict[str, float] = {}
        self.entry: dict[str, int] = {}  # tx hash -> the node that took it
        self.height_of: dict[str, int] = {}  # tx hash -> height of the block holding it
        self.announced: list[dict[int, float]] = [{} for _ in range(cluster.n)]  # per node
        self.fetched_at: dict[int, float] = {}  # height -> when block_get returned it
        self.feeds_up = 0  # /ws block feeds currently subscribed
        self.feed_live = [False] * cluster.n  # per node: its feed is subscribed
        self.submitted = 0
        self.quarantined = 0
        self.rejected = 0
        # Why, by error name; "gave_up": refused as retryable (back-pressure) until the give-up.
        self.rejected_by: collections.Counter[str] = collections.Counter()
        self.errors = 0
        self.call_failures = 0  # txs whose tx_submit call failed (timeout, refused) and went again
        self.timed_out: set[str] = set()  # hashes of txs answered ``timeout`` at least once
        self.timeouts_taken = 0  # of those, sent again and answered tx_duplicate
        self.retried = 0
        self.retry_backlog = 0  # refused txs waiting for their retry
        self.wallets = Wallets()
        self.down_until: dict[int, float] = {}
        self.extra: dict[str, Any] = {}
        self.deadline = 0.0

    def _live(self, first: int) -> int | None:
        """``first`` or the next node not marked down; None when every node is down."""
        now = time.monotonic()
        for k in range(self.c.n):
            node = (first + k) % self.c.n
            if self.down_until.get(node, 0.0) <= now:
                return node
        return None

    def _mark_down(self, node: int) -> None:
        self.down_until[node] = time.monotonic() + DOWN_S

    async def _any(self, s: aiohttp.ClientSession, fn: Any) -> Any:
        """``await fn(node)`` on the first node that answers (start-up reads)."""
        last: Exception | None = None
        for node in range(self.c.n):
            try:
                return await fn(node)
            except (ClientError, RpcError, KeyError, TypeError, ValueError) as exc:
                last = exc
        raise RuntimeError(f"no node answered: {last!r}")

    async def run(self) -> dict[str, Any]:
        args, c = self.args, self.c
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            meta = json.loads((c.root / "cluster.json").read_text())
            accounts = int(meta.get("bench_accounts", devnet.BENCH_ACCOUNTS))
            rate = None if args.rate == "max" else float(args.rate)
            count = int((rate or 3000) * args.duration * (1.0 if rate else 1.5)) + BATCH
            nonces = await self._any(s, lambda i: _start_nonces(s, c.rpc_url(i), accounts))
            eth_nonces = await self._fund_eth(s, nonces)
            txs = await asyncio.to_thread(self._presign, accounts - 1, count, nonces, eth_nonces)
            start_h = (await self._any(s, lambda i: self._call(s, i, "node_status")))["height"]
            watcher = asyncio.create_task(self._watch(s, start_h))
            feeds_by = time.monotonic() + FEEDS_WAIT_S  # the clock starts once they listen
            while self.feeds_up < c.n and time.monotonic() < feeds_by:
                await asyncio.sleep(0.05)
            probe = Probe(c)
            await probe.start(s)
            profiler = None
            if args.profile:
                out = Path(tempfile.mkdtemp(prefix="vigil-profile-"))
                profiler = Profiler(probe.pids, out, args.duration + DRAIN_S / 3)
            t0 = time.monotonic()
            deadline = self.deadline = t0 + args.duration
            queue = [txs[i : i + BATCH] for i in range(0, len(txs), BATCH)]
            await asyncio.gather(
                *(self._client(s, n, queue, rate, t0, deadline) for n in range(args.clients))
            )
            send_end = time.monotonic()
            drain_until = send_end + DRAIN_S
            # Only the txs still unseen are looked at again: a scan of every sent tx each
            # 0.1 s took a core for as long as the drain lasted, while the validators
            # committed the backlog whose latency it measures.
            waiting = self._unseen(self.sent_at)
            while waiting and time.monotonic() < drain_until:
                await asyncio.sleep(0.1)
                waiting = self._unseen(waiting)
            watcher.cancel()
            missing = [h for h in self.sent_at if h not in self.height_of]
            uncommitted = await self._classify(s, missing)
            await probe.stop(s)
            elapsed = max(send_end - t0, 1e-9)
        committed_at, fallbacks = self._commit_times()
        lat = sorted((committed_at[h] - self.sent_at[h]) * 1000 for h in committed_at)

        def q(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None

        committed = len(lat)
        self.extra = probe.report(committed)
        self.extra["retried"] = self.retried
        # Due by the schedule but never sent: their wallet waited on an earlier tx of its own
        # (refused, then sent again) when the load phase ended. Offered above capacity, the
        # wallets fall behind the schedule instead of sending txs the node would only park.
        self.extra["kept_back"] = self.wallets.kept_back()
        self.extra["stopped_wallets"] = self.wallets.stopped()
        self.extra["call_failures"] = self.call_failures
        self.extra["timeouts"] = {"txs": len(self.timed_out), "taken_before": self.timeouts_taken}
        self.extra["uncommitted"] = uncommitted
        # Accepted, not held, not waiting behind a held tx, and yet not committed by the end of
        # the drain: what issue 13 calls stranded (0 expected).
        self.extra["stranded"] = sum(
            n for status, n in uncommitted.items() if status not in HELD_STATUSES
        )
        self.extra["commit_time_fallbacks"] = fallbacks
        if profiler is not None:
            table = profile_table(
                profiler.finish(),
                probe.process_cpu_s(),
                probe.thread_cpu_s(),
                committed,
                probe.children_cpu_s(),
            )
            self.extra["profile"] = table
            print(format_profile(table), file=sys.stderr)
        return {
            "nodes": c.n,
            "duration_s": round(elapsed, 2),
            "submitted": self.submitted,
            "committed": committed,
            "tps": round(committed / elapsed, 1),
            "p50_ms": q(0.50),
            "p95_ms": q(0.95),
            "p99_ms": q(0.99),
            "quarantined": self.quarantined,
            "rejected": self.rejected,
            "rejected_by": dict(sorted(self.rejected_by.items())),
            "errors": self.errors,
            **self.extra,
        }

    def _presign(
        self, accounts: int, count: int, nonces: list[int], eth_nonces: list[int]
    ) -> list[Tx]:
        """Transfers round-robin over the accounts; every 1/eth_share-th one is Ethereum-signed."""
        keys = [devnet.bench_key(k) for k in range(accounts)]
        addrs = [address_of(k.public_key) for k in keys]
        eth_keys = [bench_eth_key(k) for k in range(len(eth_nonces))]
        chain = eth_chain_id(devnet.CHAIN_ID)
        share = self.args.eth_share
        out = []
        # The same plan as the detector drill's bench scenarios (node/detect/scenarios.py).
        for j, (k, to, amount) in enumerate(bench_plan(accounts, count)):
            if eth_keys and int((j + 1) * share) > int(j * share):
                e = j % len(eth_keys)
                raw = sign_dynamic_fee(
                    eth_keys[e], chain, eth_nonces[e], addrs[e % accounts], WEI_PER_UNIT
                )
                eth_nonces[e] += 1
                out.append(("0x" + raw.hex(), "0x" + tx_hash_of(raw).hex(), f"eth{e}"))
                continue
            tx = make_transfer(keys[k], devnet.CHAIN_ID, addrs[to], amount, 1, nonces[k])
            nonces[k] += 1
            out.append(("0x" + tx.encode().hex(), "0x" + tx.hash.hex(), f"native{k}"))
        return out

    async def _classify(self, s: aiohttp.ClientSession, missing: list[str]) -> dict[str, int]:
        """Why each accepted tx did not commit: its status on the node that says most of it.

        A tx is quarantined only at its entry node and waits behind a held one everywhere, so
        every node is asked; the most specific answer wins (quarantined > waiting > rejected >
        pending > unknown); a rejected tx counts under its reason (``rejected:nonce_gap``).
        Capped, so a huge backlog does not keep the bench running.
        """
        rank = {s: n for n, s in enumerate(("unknown", "pending", "rejected", "waiting"))}
        rank["quarantined"] = len(rank)
        best = dict.fromkeys(missing[:CLASSIFY_TXS_MAX], "unknown")
        why: dict[str, str] = {}  # a rejected tx's reason (``tx_get``), to tell what dropped it
        for node in range(self.c.n):
            client = AsyncClient(self.c.rpc_url(node), session=s)
            todo = [h for h, st in best.items() if st != "quarantined"]
            for i in range(0, len(todo), BATCH):
                chunk = todo[i : i + BATCH]
                try:
                    answers = await client.batch([("tx_get", [h]) for h in chunk])
                except ClientError:
                    break  # a node down: the others answer
                for h, a in zip(chunk, answers, strict=True):
                    status = a.get("status") if isinstance(a, dict) else None
                    if isinstance(status, str) and rank.get(status, -1) > rank[best[h]]:
                        best[h] = status
                        if status == "rejected":
                            why[h] = str(a.get("reason") or "?")
        counts: dict[str, int] = {}
        for h, status in best.items():
            key = f"rejected:{why.get(h, '?')}" if status == "rejected" else status
            counts[key] = counts.get(key, 0) + 1
        if len(missing) > CLASSIFY_TXS_MAX:
            counts["not_asked"] = len(missing) - CLASSIFY_TXS_MAX
        return dict(sorted(counts.items()))

    async def _fund_eth(self, s: aiohttp.ClientSession, nonces: list[int]) -> list[int]:
        """Ethereum bench accounts: funded once by native transfers; returns their nonces."""
        if self.args.eth_share <= 0:
            return []
        count = max(1, self.args.eth_accounts)
        addrs = [eth_address(bench_eth_key(e)) for e in range(count)]
        client = AsyncClient(self.c.rpc_url(0), session=s)
        infos = [await client.call("account_get", ["0x" + a.hex()]) for a in addrs]
        key = devnet.bench_key(len(nonces) - 1)  # the last native bench account pays
        pending = []
        for a, info in zip(addrs, infos, strict=True):
            if int(info["balance"]) < ETH_FUND_UNITS // 2:
                tx = make_transfer(key, devnet.CHAIN_ID, a, ETH_FUND_UNITS, 1, nonces[-1])
                nonces[-1] += 1
                pending.append((await client.call("tx_submit", ["0x" + tx.encode().hex()]))["hash"])
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            status = (await client.call("tx_get", [pending[-1]]))["status"]
            if status == "committed":
                break
            await asyncio.sleep(0.1)
        return [int(i["nonce"]) for i in infos]

    async def _call(
        self, s: aiohttp.ClientSession, node: int, method: str, params: Any = None
    ) -> Any:
        return await AsyncClient(self.c.rpc_url(node), session=s).call(method, params)

    async def _client(
        self,
        s: aiohttp.ClientSession,
        n: int,
        queue: list[list[Tx]],
        rate: float | None,
        t0: float,
        deadline: float,
    ) -> None:
        sent_batches = 0
        sent_txs = 0
        inflight: set[asyncio.Task[None]] = set()
        # Open loop sends this client's share of the rate in small groups (about 20 a second),
        # so a low rate is not turned into bursts of a whole pre-built batch.
        group = BATCH if rate is None else max(1, min(BATCH, round(rate / self.args.clients / 20)))
        while queue and time.monotonic() < deadline:
            fresh = queue.pop(0)
            if len(fresh) > group:
                queue.insert(0, fresh[group:])
                fresh = fresh[:group]
            node = (n + sent_batches) % self.c.n
            sent_batches += 1
            if rate is None:
                batch = self.wallets.take(fresh, BATCH)
                if batch:
                    await self._send(s, node, batch)
                else:
                    await asyncio.sleep(RETRY_PAUSE_S)  # every wallet waits on a refusal
                continue
            # Open loop: this client's share of the rate, whatever the answers. The clients'
            # schedules are staggered by a fraction of a group's period (independent clients
            # do not all send at the same instant; in lock-step every group reached the nodes
            # as one burst, which the primary split over several small blocks).
            # The schedule is the txs' arrival at their wallets; a wallet sends what it may
            # (released txs of its own first), the rest waits in it.
            due = t0 + (sent_txs * self.args.clients + n * group) / rate
            if due >= deadline:
                break  # due when the load phase ends: not part of it (rate x duration at most)
            sent_txs += len(fresh)
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            while self.retry_backlog > RETRY_BACKLOG_MAX and time.monotonic() < deadline:
                await asyncio.sleep(RETRY_PAUSE_S)
            if time.monotonic() >= deadline:
                break
            batch = self.wallets.take(fresh, BATCH)
            if not batch:
                continue
            task = asyncio.create_task(self._send(s, node, batch))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)

    async def _send(self, s: aiohttp.ClientSession, node: int, batch: list[Tx]) -> None:
        """Submit a batch; txs refused by back-pressure are sent again after a pause."""
        first = time.monotonic()
        give_up = self.deadline + DRAIN_S
        pause_s = RETRY_PAUSE_S
        while batch:
            batch, lost, wait_s = await self._send_once(s, node, batch, first)
            if not lost:  # refused: each wallet sends its first tx again, takes the rest back
                batch = self.wallets.take_back(batch)
            pause_s = max(pause_s, wait_s)  # the node's retry_after_ms, when it said one
            if batch:
                self.retried += len(batch)
                if time.monotonic() > give_up:
                    if lost:  # the last call failed: no node ever answered for these
                        self.errors += len(batch)
                    else:
                        self.submitted += len(batch)
                        self.rejected += len(batch)
                        self.rejected_by["gave_up"] += len(batch)
                    for tx in batch:
                        self.wallets.settle(tx)
                    return
                # Exponential back-off: retries above the chain's capacity must not become a
                # storm of RPC calls that takes the CPU the validators need.
                self.retry_backlog += len(batch)
                try:
                    # Never shorter than the node's retry_after_ms, and jittered above it:
                    # wallets refused together and paused exactly as asked came back together,
                    # and the node's load swung between floods and idle seconds.
                    await asyncio.sleep(pause_s * (1.0 + random.random()))
                finally:
                    self.retry_backlog -= len(batch)
                pause_s = min(pause_s * 2, RETRY_PAUSE_MAX_S)
                node += 1

    async def _send_once(
        self, s: aiohttp.ClientSession, node: int, batch: list[Tx], first: float
    ) -> tuple[list[Tx], bool, float]:
        """One JSON-RPC batch; returns the txs to send again (pushed back by admission, or the
        whole batch when the call itself failed), whether the call failed, and the longest
        pause the node asked for (``retry_after_ms`` of its refusals, docs/rpc.md).

        A failed call is resent like any wallet would: the same signed txs, so one the node had
        taken meanwhile answers ``tx_duplicate``, which counts as accepted. Dropping it instead
        left a nonce gap that parked every later tx of its sender for the rest of the run."""
        calls = [("tx_submit", [tx[0]]) for tx in batch]
        answers: list[Any] | None = None
        target = None
        for _ in range(2):  # the chosen node, then once more on another live one
            target = self._live(node)
            if target is None:
                break
            try:
                answers = await AsyncClient(self.c.rpc_url(target), session=s).batch(calls)
                break
            except ClientError:
                self._mark_down(target)
                node = target + 1
        if answers is None:  # no node took the batch (or it answered garbage)
            self.call_failures += len(batch)
            return batch, True, 0.0
        again: list[Tx] = []
        wait_s = 0.0
        for item, a in zip(batch, answers, strict=True):
            if isinstance(a, RpcError) and a.code in RETRYABLE:
                again.append(item)
                wait_s = max(wait_s, _retry_after_s(a))
                continue
            if isinstance(a, RpcError) and a.code == TIMEOUT:
                # The call outlived the node's per-request deadline: the tx may still be taken
                # (it waits in admission), so its outcome is unknown, as after a failed call. A
                # wallet sends the same signed bytes again; a copy the node took answers
                # tx_duplicate. Counted as rejected until stop 21.
                self.call_failures += 1
                self.timed_out.add(item[1])
                again.append(item)
                continue
            if isinstance(a, dict) and a.get("status") in HELD_STATUSES:
                self.wallets.stop(item)  # before settling: it releases nothing more
            self.wallets.settle(item)
            if isinstance(a, ClientError):
                self.errors += 1
                continue
            self.submitted += 1
            if isinstance(a, RpcError) and a.code == TX_DUPLICATE and item[1] in self.timed_out:
                self.timeouts_taken += 1  # the node had admitted it after all
            if isinstance(a, RpcError) and a.code != TX_DUPLICATE:
                self.rejected += 1
                self.rejected_by[a.name] += 1
                continue
            self.sent_at[item[1]] = first
            self.entry[item[1]] = target if target is not None else node
            if isinstance(a, dict) and a.get("status") == "quarantined":
                self.quarantined += 1
        return again, False, wait_s

    def _unseen(self, submitted: Iterable[str]) -> list[str]:
        """Of ``submitted`` txs, those whose block is not yet known and announced by their
        entry node (a tx whose entry node's feed is down counts as seen once its block is
        known: it falls back, see ``_commit_times``)."""
        out: list[str] = []
        height_of, entry, announced, live = (
            self.height_of,
            self.entry,
            self.announced,
            self.feed_live,
        )
        for h in submitted:
            height = height_of.get(h)
            node = entry[h]
            if height is None or (height not in announced[node] and live[node]):
                out.append(h)
        return out

    def _commit_times(self) -> tuple[dict[str, float], int]:
        """Each committed tx's commit time at its entry node, and how many fell back to the
        time ``block_get`` returned the block (the entry node's feed missed its announcement)."""
        out: dict[str, float] = {}
        fallbacks = 0
        for h in self.sent_at:
            height = self.height_of.get(h)
            if height is None:
                continue
            at = self.announced[self.entry[h]].get(height)
            if at is None:  # the latest sign of the block anywhere: never earlier than it was
                fallbacks += 1
                at = max(
                    [self.fetched_at[height]] + [a[height] for a in self.announced if height in a]
                )
            out[h] = at
        return out, fallbacks

    async def _watch(self, s: aiohttp.ClientSession, height: int) -> None:
        """Which txs each new block holds (``block_get``, in batches): the blocks the nodes'
        feeds announced, every ``WATCH_EVERY_S`` (or every 50 ms, polling ``node_status``,
        while no feed is up)."""
        node = 0
        feeds = [asyncio.create_task(self._block_feed(s, i)) for i in range(self.c.n)]
        try:
            while True:
                try:
                    tops = [max(a, default=0) for a in self.announced]
                    top = max(tops)
                    if not self.feeds_up:
                        top = max(top, (await self._call(s, node, "node_status"))["height"])
                    while height < top:
                        wanted = range(height + 1, min(top, height + WATCH_BLOCKS_MAX) + 1)
                        blocks = await AsyncClient(self.c.rpc_url(node), session=s).batch(
                            [("block_get", [h]) for h in wanted]
                        )
                        fetched = time.monotonic()
                        for h, block in zip(wanted, blocks, strict=True):
                            if isinstance(block, Exception):
                                raise block
                            self.fetched_at[h] = fetched
                            for tx_hash in block["tx_hashes"]:
                                self.height_of.setdefault(tx_hash, h)
                            height = h
                except (ClientError, RpcError, KeyError, TypeError, ValueError):
                    node = (node + 1) % self.c.n
                # The feeds stamp the commit times; which txs a block holds is bookkeeping,
                # fetched in one batch a few times a second. A block_get per block (30 and more
                # a second at 100 tx/s) cost the bench, and the node it asks, more CPU than the
                # feeds themselves.
                await asyncio.sleep(WATCH_EVERY_S if self.feeds_up else 0.05)
        finally:
            for f in feeds:
                f.cancel()

    async def _block_feed(self, s: aiohttp.ClientSession, node: int) -> None:
        """Stamp every block node ``node``'s /ws announces (best effort; reconnects after a
        pause when the node is down)."""
        announced = self.announced[node]
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with s.ws_connect(self.c.rpc_url(node) + "/ws") as ws:
                    await ws.send_json(
                        {"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": ["blocks"]}
                    )
                    self.feeds_up += 1
                    self.feed_live[node] = True
                    try:
                        async for msg in ws:
                            now = time.monotonic()
                            if msg.type != aiohttp.WSMsgType.TEXT:
                                continue
                            with contextlib.suppress(ValueError, KeyError, TypeError):
                                h = json.loads(msg.data)["params"]["result"]["height"]
                                if isinstance(h, int):
                                    announced.setdefault(h, now)
                    finally:
                        self.feeds_up -= 1
                        self.feed_live[node] = False
            await asyncio.sleep(0.5)


def _retry_after_s(error: RpcError) -> float:
    """The pause a refusal asks for (its data's ``retry_after_ms``), 0 when it names none."""
    data = error.data
    ms = data.get("retry_after_ms") if isinstance(data, dict) else None
    return min(ms, 60_000) / 1000 if isinstance(ms, int) and ms > 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench")
    parser.add_argument("--dir", default=".cluster")
    parser.add_argument("--rate", default="max", help="tx/s, or max")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--spawn", type=int, default=0, help="start N nodes in a temp dir")
    parser.add_argument(
        "--eth-share", type=float, default=0.0, help="share of Ethereum-signed txs, 0..1"
    )
    parser.add_argument("--eth-accounts", type=int, default=200, help="Ethereum bench accounts")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample every node with py-spy; print us per committed tx per node per stage",
    )
    args = parser.parse_args(argv)
    if args.rate != "max":
        try:
            float(args.rate)
        except ValueError:
            parser.error("--rate: a number or max")
    if args.spawn:
        with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
            import socket

            socks = [socket.socket() for _ in range(3 * args.spawn)]
            for sk in socks:
                sk.bind(("127.0.0.1", 0))
            ports = [sk.getsockname()[1] for sk in socks]
            for sk in socks:
                sk.close()
            cluster = devnet.init_cluster(
                Path(tmp) / "cluster",
                [devnet.Ports(*ports[3 * i : 3 * i + 3]) for i in range(args.spawn)],
            )
            try:
                for i in range(cluster.n):
                    devnet.start_node(cluster, i)
                _wait_connected(cluster)
                result = _run(Bench(cluster, args))
            finally:
                devnet.stop_nodes(cluster, list(range(cluster.n)))
    else:
        root = Path(args.dir)
        if not (root / "cluster.json").exists():
            print(f"no cluster in {root}; run scripts/cluster up or use --spawn N", file=sys.stderr)
            return 1
        result = _run(Bench(Cluster.load(root), args))
    print(json.dumps(result))
    return 0


def _run(bench: Bench) -> dict[str, Any]:
    """The load on uvloop, the nodes' own loop: the bench shares the machine with the nodes it
    measures, and every microsecond it spends per request is taken from them."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bench.run())


def _wait_connected(cluster: Cluster, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ok = 0
        for i in range(cluster.n):
            try:
                health = Client(cluster.rpc_url(i), timeout_s=2).health()
                ok += health["peers"] >= cluster.n - 1
            except (ClientError, KeyError, TypeError):
                pass
        if ok == cluster.n:
            return
        time.sleep(0.2)
    raise SystemExit("cluster did not become healthy")


if __name__ == "__main__":
    sys.exit(main())

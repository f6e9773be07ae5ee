"""Load for the fault lab: open-loop signed transfers round-robin to every node, and the check
that every accepted tx ends committed or rejected with a reason.

Senders are the devnet bench accounts (``node.tools.devnet.bench_key``); account k pays 1 to account
k+1 with fee 1, so the tx of (k, nonce) is always the same bytes (Ed25519 signs
deterministically) and resending it after an unclear answer is harmless.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from common.crypto import address_of
from node.chain.tx import make_transfer
from node.errors import TX_DUPLICATE, TX_NONCE
from node.tools import devnet
from node.tools.netlab import RPC_ERRORS, Lab

TICK_S = 0.1  # one batch per tick, to the next node in turn
_ACCOUNT_AT = re.compile(r"account at (\d+)")


@dataclass(frozen=True, slots=True)
class Accepted:
    hash: str
    node: int
    at: float  # time.monotonic() of the answer


class Load:
    """``rate`` tx/s in batches every 100 ms, round-robin over the nodes not avoided."""

    def __init__(self, lab: Lab, rate: float = 150.0, accounts: int = 1000) -> None:
        self.lab = lab
        self.rate = rate
        self.accounts = accounts
        self.keys = [devnet.bench_key(k) for k in range(accounts)]
        self.addresses = [address_of(k.public_key) for k in self.keys]
        self.accepted: list[Accepted] = []
        self.errors: Counter[str] = Counter()
        self._nonces = [0] * accounts
        self._next_account = 0
        self._avoid: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="load")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def avoid(self, i: int) -> None:
        self._avoid.add(i)

    def allow(self, i: int) -> None:
        self._avoid.discard(i)

    def last_accepted_by(self, i: int) -> Accepted | None:
        for a in reversed(self.accepted):
            if a.node == i:
                return a
        return None

    def _run(self) -> None:
        turn = 0
        carry = 0.0
        next_at = time.monotonic()
        while not self._stop.is_set():
            live = [i for i in range(self.lab.n) if i not in self._avoid]
            carry += self.rate * TICK_S
            count, carry = int(carry), carry - int(carry)
            if live and count:
                self._submit(live[turn % len(live)], count)
                turn += 1
            # Open loop: a slow answer shortens the next wait; more than 1 s behind, skip ahead.
            next_at = max(next_at + TICK_S, time.monotonic() - 1.0)
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _submit(self, node: int, count: int) -> None:
        batch: list[tuple[int, int]] = []  # (account, nonce)
        for _ in range(min(count, self.accounts)):
            k = self._next_account
            self._next_account = (k + 1) % self.accounts
            batch.append((k, self._nonces[k]))
            self._nonces[k] += 1
        raws = [
            make_transfer(
                self.keys[k], devnet.CHAIN_ID, self.addresses[(k + 1) % self.accounts], 1, 1, n
            ).encode()
            for k, n in batch
        ]
        try:
            answers = self.lab.rpc_batch(
                node, [("tx_submit", ["0x" + r.hex()]) for r in raws], timeout_s=5.0
            )
        except RPC_ERRORS as exc:
            self.errors[f"node_unreachable:{type(exc).__name__}"] += 1
            for k, n in batch:  # not taken (or unknown): send the same txs again later
                self._nonces[k] = min(self._nonces[k], n)
            return
        now = time.monotonic()
        for (k, n), answer in zip(batch, answers, strict=True):
            if "result" in answer:
                self.accepted.append(Accepted(str(answer["result"]["hash"]), node, now))
                continue
            code, message = answer["error"]["code"], str(answer["error"]["message"])
            self.errors[str(code)] += 1
            used = _ACCOUNT_AT.search(message) if code == TX_NONCE else None
            if used is not None:
                self._nonces[k] = max(self._nonces[k], int(used.group(1)))
            elif code != TX_DUPLICATE:
                self._nonces[k] = min(self._nonces[k], n)  # try this nonce again later


@dataclass
class Settlement:
    """Where the accepted txs ended: counts, reasons, and a few unsettled examples."""

    accepted: int = 0
    committed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count
    rejected_without_reason: int = 0
    unsettled: Counter[str] = field(default_factory=Counter)  # entry node's status -> count
    examples: list[dict[str, Any]] = field(default_factory=list)
    waited_s: float = 0.0
    rpc_errors: dict[int, str] = field(default_factory=dict)  # entry node -> last RPC failure

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "committed": self.committed,
            "rejected": dict(self.rejected),
            "rejected_without_reason": self.rejected_without_reason,
            "unsettled": dict(self.unsettled),
            "examples": self.examples,
            "waited_s": round(self.waited_s, 1),
            "rpc_errors": {str(k): v for k, v in sorted(self.rpc_errors.items())},
        }


def _statuses(
    lab: Lab, node: int, hashes: list[str], timeout_s: float = 10.0, chunk_txs: int = 25
) -> tuple[dict[str, dict[str, Any] | None], Exception | None]:
    """Each hash's tx_get result at ``node`` (None: unknown there), and the last RPC failure.

    A chunk the node did not answer in time is left out (and reported), so one slow answer does
    not hide the others."""
    out: dict[str, dict[str, Any] | None] = {}
    failed: Exception | None = None
    for start in range(0, len(hashes), chunk_txs):
        chunk = hashes[start : start + chunk_txs]
        try:
            answers = lab.rpc_batch(node, [("tx_get", [h]) for h in chunk], timeout_s=timeout_s)
        except RPC_ERRORS as exc:
            failed = exc
            continue
        for h, a in zip(chunk, answers, strict=True):
            out[h] = a.get("result")
    return out, failed


def settle(lab: Lab, accepted: list[Accepted], deadline_s: float) -> Settlement:
    """Poll each accepted tx at the node that accepted it until committed or rejected.

    A ``rejected`` status must carry a reason; a tx the node no longer knows counts as
    ``unknown``. Unsettled ones at the deadline are counted by status, and up to five are shown
    with their status on every node.
    """
    started = time.monotonic()
    result = Settlement(accepted=len({a.hash for a in accepted}))
    todo: dict[str, int] = {}
    for a in accepted:
        todo.setdefault(a.hash, a.node)
    last: dict[str, str] = {}
    while True:
        by_node: dict[int, list[str]] = {}
        for h, node in todo.items():
            by_node.setdefault(node, []).append(h)
        for node, hashes in sorted(by_node.items()):
            left_s = deadline_s - (time.monotonic() - started)
            found, failed = _statuses(lab, node, hashes, timeout_s=max(1.0, min(10.0, left_s)))
            if failed is not None:
                result.rpc_errors[node] = f"{type(failed).__name__}: {failed}"[:200]
            for h, tx in found.items():
                status = "unknown" if tx is None else str(tx.get("status"))
                last[h] = status
                if status == "committed":
                    result.committed += 1
                elif status == "rejected" and tx is not None:
                    reason = str(tx.get("reason") or "")
                    if reason:
                        result.rejected[reason] += 1
                    else:
                        result.rejected_without_reason += 1
                else:
                    continue
                del todo[h]
        if not todo or time.monotonic() - started > deadline_s:
            break
        time.sleep(0.5)  # a polling period, bounded by the deadline above
    result.waited_s = time.monotonic() - started
    for h in todo:
        result.unsettled[last.get(h, "unreachable")] += 1
    for h, node in list(todo.items())[:5]:
        per_node = {}
        for i in range(lab.n):
            tx = _statuses(lab, i, [h], timeout_s=2.0)[0].get(h)
            per_node[str(i)] = None if tx is None else tx.get("status")
        result.examples.append({"hash": h, "entry_node": node, "status_by_node": per_node})
    return result

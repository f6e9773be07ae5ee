"""``scripts/cluster demo``: ordinary traffic builds history, then abnormal transfers are held.

Against a running local cluster (``scripts/cluster up``): the demo wallets and the first bench
accounts send ordinary transfers (amounts in the hundreds to a couple of regular payees) until
the detector is warm, then a few clearly abnormal ones (a huge amount, a burst to many new
addresses, a drained account) and a few more ordinary ones. It prints what was committed and
what was quarantined, with the detector's score, threshold and reasons. Quarantined txs stay
for the operator (``quarantine_list`` / ``quarantine_release`` / ``quarantine_reject``).
Then an Ethereum wallet's part (node/tools/demo_eth.py).
"""

from __future__ import annotations

import random
import secrets
import time
from typing import Any

from common.crypto import SigningKey, address_of
from node.chain.tx import make_transfer
from node.tools import devnet
from node.tools.client import Client, ClientError, RpcError
from node.tools.demo_eth import fund_eth_account, run_eth_part
from node.tools.devnet import Cluster

BENCH_SENDERS = 40
BATCH = 20
ORDINARY_MAX = 3000  # never send more than this while waiting for warm-up
BURST_TXS = 30  # a burst this long to never-seen addresses stands far outside ordinary fan-out
DEADLINE_S = 120.0


class DemoError(Exception):
    pass


def _call(url: str, method: str, params: Any = None) -> Any:
    try:
        return Client(url, timeout_s=30).call(method, params)
    except RpcError as exc:
        raise DemoError(f"{method}: {exc.message}")


def _batch(url: str, raws: list[bytes]) -> list[Any]:
    """tx_submit of each raw tx in one request: a result dict or an error instance per slot."""
    return Client(url, timeout_s=30).batch([("tx_submit", ["0x" + r.hex()]) for r in raws])


class _Sender:
    def __init__(self, key: SigningKey, nonce: int) -> None:
        self.key = key
        self.address = address_of(key.public_key)
        self.nonce = nonce

    def transfer(self, to: bytes, amount: int) -> bytes:
        tx = make_transfer(self.key, devnet.CHAIN_ID, to, amount, 1, self.nonce)
        self.nonce += 1
        return tx.encode()


def _wait(what: str, check: Any) -> Any:
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise DemoError(f"timed out waiting for {what}")


def _fresh() -> bytes:
    return secrets.token_bytes(20)


def run(cluster: Cluster) -> int:
    try:
        return _run(cluster)
    except (DemoError, ClientError, ValueError) as exc:
        print(f"demo failed: {exc}")
        return 1


def _run(cluster: Cluster) -> int:
    url0 = cluster.rpc_url(0)
    primary = int(_call(url0, "node_status")["primary"])
    url = cluster.rpc_url(primary)
    keys = devnet.wallet_keys(cluster) + [devnet.bench_key(k) for k in range(BENCH_SENDERS)]
    senders = []
    for key in keys:
        acct = _call(url, "account_get", ["0x" + address_of(key.public_key).hex()])
        senders.append(_Sender(key, int(acct["nonce"])))
    rng = random.Random(secrets.randbits(32))
    payees = {
        s.address: [senders[(i + j) % len(senders)].address for j in (1, 2)]
        for i, s in enumerate(senders)
    }
    typical = {s.address: rng.randint(100, 1000) for s in senders}

    def ordinary(s: _Sender) -> bytes:
        base = typical[s.address]
        return s.transfer(rng.choice(payees[s.address]), rng.randint(base // 2, base * 2))

    def submit(raws: list[bytes]) -> list[dict[str, Any]]:
        return [
            {"status": "error", "error": str(a)} if isinstance(a, Exception) else a
            for a in _batch(url, raws)
        ]

    def committed(h: str) -> bool:
        return str(_call(url, "tx_get", [h])["status"]) == "committed"

    def fund(address: bytes, units: int) -> str:
        answer = submit([senders[0].transfer(address, units)])[0]
        if "hash" not in answer:
            raise DemoError(f"funding the Ethereum account: {answer.get('error')}")
        return str(answer["hash"])

    eth_key = fund_eth_account(url, fund)  # for the Ethereum-wallet part at the end
    status = _call(url, "detector_status")
    print(f"primary: node {primary}; detector warm: {status['warm']}")
    sent = 0
    while not status["warm"] and sent < ORDINARY_MAX:
        raws = [ordinary(rng.choice(senders)) for _ in range(BATCH)]
        answers = submit(raws)
        sent += len(raws)
        last = [a["hash"] for a in answers if a.get("status") == "pending"]
        if last:
            _wait("warm-up commits", lambda h=last[-1]: committed(h))
        status = _call(url, "detector_status")
        print(
            f"\rwarm-up: {sent} ordinary transfers sent, {status['committed_txs_seen']} "
            f"seen by the detector (warm-up {status['warmup_txs']})",
            end="",
            flush=True,
        )
    print()
    if not status["warm"]:
        print("detector still not warm; is [detector] enabled in the node configs?")
        return 1
    print(
        f"model v{status['model_version']} trained at height {status['trained_at_height']} "
        f"on {status['trained_rows']} txs, threshold {status['threshold']:.3f}"
    )

    cases: list[tuple[str, str]] = []  # (label, tx hash)

    def send(label: str, raws: list[bytes]) -> None:
        for a in submit(raws):
            if "hash" in a:
                cases.append((label, a["hash"]))
            else:
                print(f"  {label}: refused: {a.get('error')}")

    send("ordinary", [ordinary(s) for s in rng.sample(senders, 4)])
    huge = senders[-1]
    send("huge amount", [huge.transfer(rng.choice(payees[huge.address]), 10**11)])
    burst = senders[-2]
    send(
        "burst to new addresses",
        [burst.transfer(_fresh(), typical[burst.address]) for _ in range(BURST_TXS)],
    )
    drain = senders[-3]
    balance = int(_call(url, "account_get", ["0x" + drain.address.hex()])["balance"])
    send("drained account", [drain.transfer(_fresh(), balance - 1)])
    send("ordinary", [ordinary(s) for s in rng.sample(senders[:-3], 4)])

    def settled() -> bool:
        return all(
            _call(url, "tx_get", [h])["status"] in ("committed", "quarantined", "rejected")
            for _, h in cases
        )

    try:
        _wait("the demo transfers to settle", settled)
    except DemoError:
        print("(some transfers are still pending; shown as they are now)")
    print()
    print(f"{'kind':<24} {'tx':<14} {'status':<12} {'score':>6}  reasons")
    counts: dict[str, int] = {}
    for label, h in cases:
        info = _call(url, "tx_get", [h])
        st = str(info["status"])
        counts[st] = counts.get(st, 0) + 1
        an = info.get("anomaly") or {}
        score = f"{an['score']:.3f}" if "score" in an else "-"
        reasons = "; ".join(an.get("reasons", [])) if st == "quarantined" else ""
        print(f"{label:<24} {h[:12]:<14} {st:<12} {score:>6}  {reasons}")
    print()
    print("totals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print("review with the admin token: quarantine_list, quarantine_release, quarantine_reject")

    run_eth_part(url, eth_key, senders[1].address)
    return 0

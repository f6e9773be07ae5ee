"""The detector's history, per tx, on a load like the bench's (``scripts/bench_history``).

Every validator folds every tx into ``TxHistory`` twice: at admission (``admit``: its sender's
pending history, and the row and context it is scored on) and at commit (``observe_block``: the
training row, then the sender's committed history). This times both on pre-signed transfers from
many senders to many receivers, in blocks as a loaded chain makes them, each tx admitted shortly
before its block commits. The machine is shared and noisy: the pass runs ``--rounds`` times on a
fresh history and each figure is the fastest round's (CPU time of this process; the admit and
the commit figures may come from different rounds, ``us_per_tx`` is the fastest round's sum).
Prints one JSON object.

    scripts/bench_history [--txs 30000] [--senders 1000] [--block 150] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from common.crypto import SigningKey, address_of
from node.chain.block import Block, BlockHeader
from node.chain.tx import Transaction, make_transfer
from node.detect.history import TxHistory

CHAIN_ID = "bench-history"
BLOCK_INTERVAL_MS = 100  # ~10 blocks a second, as at max rate
ADMITTED_BEFORE_MS = 50  # each tx admitted this long before its block


def _blocks(txs: int, senders: int, receivers: int, block: int, seed: int) -> list[Block]:
    rng = random.Random(seed)
    keys = [SigningKey(rng.randbytes(32)) for _ in range(senders)]
    payees = [address_of(SigningKey(rng.randbytes(32)).public_key)]
    payees += [rng.randbytes(20) for _ in range(receivers - 1)]
    nonces = [0] * senders
    out: list[Block] = []
    t_ms = 1_800_000_000_000
    pending: list[Transaction] = []
    for n in range(txs):
        i = rng.randrange(senders)
        pending.append(
            make_transfer(keys[i], CHAIN_ID, rng.choice(payees), rng.randint(1, 1000), 1, nonces[i])
        )
        nonces[i] += 1
        if len(pending) == block or n == txs - 1:
            t_ms += BLOCK_INTERVAL_MS
            header = BlockHeader(len(out) + 1, b"\0" * 32, b"\0" * 32, 0, t_ms, b"\0" * 32)
            out.append(Block(header, tuple(pending)))
            pending = []
    return out


def _warm(blocks: list[Block]) -> None:
    """Hash every tx and derive its sender's address once: both are cached on the tx, and a node
    has done both before the history sees a tx (at decode, at the mempool check)."""
    for b in blocks:
        for tx in b.txs:
            _ = tx.hash, tx.sender_address


def _round(blocks: list[Block]) -> tuple[float, float]:
    """CPU seconds of (admit, observe) over every block, on a fresh history (the txs' cached
    hashes and addresses warm: ``_warm``)."""
    history = TxHistory(50_000, 200_000, 300_000)
    admit_s = observe_s = 0.0
    clock = time.process_time
    for b in blocks:
        t0 = clock()
        history.admit(b.txs, b.header.timestamp_ms - ADMITTED_BEFORE_MS, rows=True)
        t1 = clock()
        history.observe_block(b)
        t2 = clock()
        admit_s += t1 - t0
        observe_s += t2 - t1
    return admit_s, observe_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--txs", type=int, default=30_000)
    ap.add_argument("--senders", type=int, default=1_000)
    ap.add_argument("--receivers", type=int, default=2_000)
    ap.add_argument("--block", type=int, default=150, help="txs per block")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    for name in ("txs", "senders", "receivers", "block", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    blocks = _blocks(args.txs, args.senders, args.receivers, args.block, args.seed)
    _warm(blocks)
    rounds = [_round(blocks) for _ in range(args.rounds)]
    admit_s = min(r[0] for r in rounds)
    observe_s = min(r[1] for r in rounds)
    both_s = min(r[0] + r[1] for r in rounds)
    print(
        json.dumps(
            {
                "txs": args.txs,
                "senders": args.senders,
                "receivers": args.receivers,
                "block": args.block,
                "rounds": args.rounds,
                "admit_us_per_tx": round(admit_s / args.txs * 1e6, 2),
                "observe_us_per_tx": round(observe_s / args.txs * 1e6, 2),
                "us_per_tx": round(both_s / args.txs * 1e6, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

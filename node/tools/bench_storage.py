"""What a validator's durable writes cost per tx (``scripts/bench_storage``).

Replays into a fresh store what a validator writes for each block of a loaded chain: the
consensus log's slot record (consensus/log.py ``Slot.record``, the node's own) as the
PRE-PREPARE is accepted (with the proposal's tx bodies as metadata), once prepared and once
committed; then the block itself (``commit_block``: block and certificate, tx index, receipts,
accounts, deleting the bodies), and the slot's deletion a few blocks later. The txs are signed
transfers from many senders, and the receipts and accounts come from executing each block.
Writes are synced, as the node's are.

Reports the CPU time of the whole process per tx, LevelDB's own threads included (their table
writes and merges are where snappy compresses), the wall time, and the store's size on disk.
``--no-state-compression`` opens the state without snappy (docs/performance.md, stop 31). The
machine is shared and noisy: the replay runs ``--rounds`` times, each on a fresh store, and the
figures are the fastest round's. Prints one JSON object.

    scripts/bench_storage [--blocks 120] [--block 500] [--senders 2000] [--rounds 3]
                          [--no-state-compression]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass

from common import codec
from common.crypto import SigningKey, address_of
from consensus.log import Committed, Slot, slot_key
from consensus.messages import PreparedCert, PrePrepare
from node.chain.block import Proposal, build_block
from node.chain.ledger import Account, execute_block
from node.chain.tx import make_transfer
from storage import Store

CHAIN_ID = "bench-storage"
KEEP_SLOTS = 4  # a slot's record is deleted this many blocks after its own (after execution)
# After the last block LevelDB may still be merging tables in its own thread; its CPU counts.
SETTLE_S = 1.0
SIG = bytes(64)


@dataclass(frozen=True, slots=True)
class _Block:
    height: int
    encoded: bytes
    block_hash: bytes
    bodies: list[tuple[bytes, bytes]]  # (metadata key, tx bytes) as ProposalBodies keeps them
    records: list[bytes]  # the slot record as accepted, prepared, committed
    certificate: bytes
    receipts: list[tuple[bytes, bytes]]
    accounts: dict[bytes, bytes]


def _records(height: int, payload: bytes, digest: bytes, certificate: bytes) -> list[bytes]:
    """The slot's record (consensus/log.py) as the PRE-PREPARE is accepted, once prepared, and
    once committed: what the driver persists at those three points."""
    slot = Slot(height)
    slot.accept(PrePrepare(0, height, digest, payload, 0, SIG), validated=True)
    slot.own_prepare(1, digest, SIG)
    out = [slot.record()]
    backups = tuple((i, SIG) for i in (1, 2))
    slot.own_commit(1, digest, SIG, PreparedCert(0, height, digest, payload, SIG, backups))
    out.append(slot.record())
    slot.commit(Committed(0, digest, payload, certificate, digest))
    out.append(slot.record())
    return out


def _blocks(blocks: int, per_block: int, senders: int, seed: int) -> list[_Block]:
    rng = random.Random(seed)
    keys = [SigningKey(rng.randbytes(32)) for _ in range(senders)]
    payees = [rng.randbytes(20) for _ in range(senders)]
    balances = {address_of(k.public_key): Account(10**12, 0) for k in keys}
    proposer = address_of(SigningKey(rng.randbytes(32)).public_key)
    nonces = [0] * senders
    out: list[_Block] = []
    prev = None
    for height in range(1, blocks + 1):
        txs = []
        for _ in range(per_block):
            s = rng.randrange(senders)
            txs.append(make_transfer(keys[s], CHAIN_ID, rng.choice(payees), 10, 1, nonces[s]))
            nonces[s] += 1
        proposal = Proposal(height, 0, 1_800_000_000_000 + height * 100, tuple(t.hash for t in txs))
        block = build_block(proposal, txs, prev)
        ex = execute_block(block, proposer, CHAIN_ID, balances.get, lambda d: None)
        balances.update(ex.accounts)
        certificate = codec.encode({"view": 0, "sigs": [[i, SIG] for i in range(3)]})
        out.append(
            _Block(
                height=height,
                encoded=block.encode(),
                block_hash=block.hash,
                bodies=[(b"body" + t.hash, t.encode()) for t in txs],
                records=_records(height, proposal.encode(), block.hash, certificate),
                certificate=certificate,
                receipts=[(r.tx_hash, r.encode()) for r in ex.receipts],
                accounts={a: acct.encode() for a, acct in ex.accounts.items()},
            )
        )
        prev = block.header
    return out


def _replay(store: Store, blocks: list[_Block]) -> None:
    for b in blocks:
        key = slot_key(b.height)
        store.log_write([(key, b.records[0])], b.bodies)
        store.log_write([(key, b.records[1])])
        store.log_write([(key, b.records[2])])
        store.commit_block(
            b.height,
            b.block_hash,
            b.encoded,
            b.certificate,
            b.receipts,
            b.accounts,
            {},
            {k: None for k, _ in b.bodies},
        )
        if b.height > KEEP_SLOTS:
            store.log_write([(slot_key(b.height - KEEP_SLOTS), None)])


def _size(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
    )


def _round(blocks: list[_Block], compress_state: bool) -> tuple[float, float, int]:
    """(CPU s, wall s, bytes on disk) of one replay into a fresh store."""
    with tempfile.TemporaryDirectory(prefix="vigil-bench-storage-") as tmp:
        path = os.path.join(tmp, "db")
        store = Store(path, compress_state=compress_state)
        try:
            cpu, wall = time.process_time(), time.perf_counter()
            _replay(store, blocks)
            wall = time.perf_counter() - wall
            time.sleep(SETTLE_S)  # LevelDB's merges still running count as CPU, not as wall
            cpu = time.process_time() - cpu
        finally:
            store.close()
        return cpu, wall, _size(path)


def _count(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("expected an integer of at least 1")
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench_storage", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--blocks", type=_count, default=120)
    parser.add_argument("--block", type=_count, default=500, help="txs a block")
    parser.add_argument("--senders", type=_count, default=2000)
    parser.add_argument("--rounds", type=_count, default=3)
    parser.add_argument("--no-state-compression", action="store_true")
    args = parser.parse_args(argv)
    blocks = _blocks(args.blocks, args.block, args.senders, seed=1)
    runs = [_round(blocks, not args.no_state_compression) for _ in range(args.rounds)]
    txs = args.blocks * args.block
    cpu = min(r[0] for r in runs)
    wall = min(r[1] for r in runs)
    print(
        json.dumps(
            {
                "blocks": args.blocks,
                "block": args.block,
                "senders": args.senders,
                "rounds": args.rounds,
                "state_compression": not args.no_state_compression,
                "txs": txs,
                "cpu_us_per_tx": round(cpu / txs * 1e6, 2),
                "wall_us_per_tx": round(wall / txs * 1e6, 2),
                "store_mib": round(runs[0][2] / (1 << 20), 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

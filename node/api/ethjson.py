"""Blocks, transactions, receipts and logs in the shapes of the Ethereum execution API.

Quantities are ``0x`` hex without leading zeros, data is ``0x`` hex of bytes. Native Vigil txs
appear too (a block lists every tx): as type 0x0 with ``gas`` = ``gasUsed`` = their fee in units
and ``gasPrice`` = the base fee, so gas x price is exactly the fee they paid, and v = r = s = 0.
See docs/rpc.md ("Ethereum JSON-RPC").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_hash.auto import keccak

from node.chain.block import Block
from node.chain.ethtx import (
    ANCHOR_ADDRESS,
    BASE_FEE_WEI,
    DYNAMIC_FEE,
    GAS_LIMIT_MAX,
    LEGACY,
    WEI_PER_UNIT,
    EthTransaction,
)
from node.chain.ledger import Receipt
from node.chain.tx import Transaction

ZERO32 = "0x" + "00" * 32
EMPTY_UNCLES = "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347"
BLOOM_BYTES = 256


def q(n: int) -> str:
    """A quantity: 0x hex, no leading zeros (0 is 0x0)."""
    return hex(n)


def d(b: bytes) -> str:
    """Unformatted data: 0x hex of the bytes."""
    return "0x" + b.hex()


def gas_used(tx: Transaction, receipt: Receipt | None) -> int:
    """Gas charged: an executed tx's fee in units (1 unit per gas); a skipped tx pays nothing."""
    if receipt is not None and not receipt.ok:
        return 0
    return tx.fee


def eth_to(tx: Transaction) -> bytes:
    if isinstance(tx, EthTransaction):
        return tx.eth_to
    return tx.to if tx.kind == "transfer" else ANCHOR_ADDRESS


def tx_object(
    tx: Transaction,
    chain: int,
    block_hash: bytes | None,
    height: int | None,
    index: int | None,
) -> dict[str, Any]:
    """eth_getTransactionByHash's object (also a block's full transactions)."""
    try:
        sender: str | None = d(tx.sender_address)
    except ValueError:
        sender = None
    out: dict[str, Any] = {
        "blockHash": d(block_hash) if block_hash is not None else None,
        "blockNumber": q(height) if height is not None else None,
        "transactionIndex": q(index) if index is not None else None,
        "hash": d(tx.hash),
        "from": sender,
        "to": d(eth_to(tx)),
        "nonce": q(tx.nonce),
    }
    if isinstance(tx, EthTransaction):
        # A mined type-2 tx reports its effective price (the base fee), as the spec does.
        mined = block_hash is not None
        price = BASE_FEE_WEI if mined and tx.eth_type == DYNAMIC_FEE else tx.gas_price_wei
        out.update(
            type=q(tx.eth_type),
            chainId=q(tx.eth_chain),
            gas=q(tx.gas_limit),
            gasPrice=q(price),
            value=q(tx.value_wei),
            input=d(tx.data),
            v=q(tx.y_parity if tx.eth_type != LEGACY else tx.eth_chain * 2 + 35 + tx.y_parity),
            r=q(tx.r),
            s=q(tx.s),
        )
        if tx.eth_type != LEGACY:
            out.update(accessList=[], yParity=q(tx.y_parity))
        if tx.eth_type == DYNAMIC_FEE:
            out.update(
                maxFeePerGas=q(tx.gas_price_wei), maxPriorityFeePerGas=q(tx.priority_fee_wei)
            )
        return out
    data = tx.digest + tx.memo if tx.kind == "anchor" else b""
    out.update(
        type="0x0",
        chainId=q(chain),
        gas=q(tx.fee),
        gasPrice=q(BASE_FEE_WEI),
        value=q(tx.amount * WEI_PER_UNIT),
        input=d(data),
        v="0x0",
        r="0x0",
        s="0x0",
        vigilFormat="native",
    )
    return out


def logs_of(
    tx: Transaction,
    receipt: Receipt | None,
    block_hash: bytes,
    height: int,
    index: int,
    log_index: int,
) -> list[dict[str, Any]]:
    """An executed anchor emits one log: address = anchor address, topics =
    [digest], data = memo.
    """
    if tx.kind != "anchor" or receipt is None or not receipt.ok:
        return []
    return [
        {
            "address": d(ANCHOR_ADDRESS),
            "topics": [d(tx.digest)],
            "data": d(tx.memo),
            "blockNumber": q(height),
            "blockHash": d(block_hash),
            "transactionHash": d(tx.hash),
            "transactionIndex": q(index),
            "logIndex": q(log_index),
            "removed": False,
        }
    ]


def bloom(logs: Sequence[dict[str, Any]]) -> bytes:
    """The 2048-bit log bloom of the Yellow Paper (section 4.3.1) over addresses and topics."""
    bits = 0
    for log in logs:
        for item in (log["address"], *log["topics"]):
            h = keccak(bytes.fromhex(item[2:]))
            for i in (0, 2, 4):
                bits |= 1 << (int.from_bytes(h[i : i + 2], "big") & 2047)
    return bits.to_bytes(BLOOM_BYTES, "big")


def block_logs(block: Block, receipts: Sequence[Receipt | None]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, (tx, r) in enumerate(zip(block.txs, receipts, strict=True)):
        out += logs_of(tx, r, block.hash, block.height, i, len(out))
    return out


def receipt_object(
    tx: Transaction,
    receipt: Receipt | None,
    block: Block,
    receipts: Sequence[Receipt | None],
    index: int,
) -> dict[str, Any]:
    cumulative = sum(gas_used(t, r) for t, r in zip(block.txs[: index + 1], receipts, strict=False))
    first_log = len(block_logs(Block(block.header, block.txs[:index]), receipts[:index]))
    logs = logs_of(tx, receipt, block.hash, block.height, index, first_log)
    try:
        sender: str | None = d(tx.sender_address)
    except ValueError:
        sender = None
    return {
        "transactionHash": d(tx.hash),
        "transactionIndex": q(index),
        "blockHash": d(block.hash),
        "blockNumber": q(block.height),
        "from": sender,
        "to": d(eth_to(tx)),
        "cumulativeGasUsed": q(cumulative),
        "gasUsed": q(gas_used(tx, receipt)),
        "effectiveGasPrice": q(BASE_FEE_WEI),
        "contractAddress": None,
        "logs": logs,
        "logsBloom": d(bloom(logs)),
        "type": q(tx.eth_type if isinstance(tx, EthTransaction) else 0),
        "status": "0x1" if receipt is not None and receipt.ok else "0x0",
    }


def block_object(
    block: Block,
    receipts: Sequence[Receipt | None],
    miner: bytes,
    chain: int,
    full: bool,
) -> dict[str, Any]:
    h = block.header
    used = sum(gas_used(t, r) for t, r in zip(block.txs, receipts, strict=True))
    txs: list[Any] = (
        [tx_object(tx, chain, block.hash, h.height, i) for i, tx in enumerate(block.txs)]
        if full
        else [d(tx.hash) for tx in block.txs]
    )
    return {
        "number": q(h.height),
        "hash": d(block.hash),
        "parentHash": d(h.prev_hash),
        "nonce": "0x0000000000000000",
        "mixHash": ZERO32,
        "sha3Uncles": EMPTY_UNCLES,
        "logsBloom": d(bloom(block_logs(block, receipts))),
        "transactionsRoot": d(h.tx_root),
        "stateRoot": ZERO32,
        "receiptsRoot": ZERO32,
        "miner": d(miner),
        "difficulty": "0x0",
        "totalDifficulty": "0x0",
        "extraData": "0x",
        "size": q(len(block.encode())),
        "gasLimit": q(max(GAS_LIMIT_MAX, used)),
        "gasUsed": q(used),
        "timestamp": q(h.timestamp_ms // 1000),
        "baseFeePerGas": q(BASE_FEE_WEI),
        "transactions": txs,
        "uncles": [],
    }

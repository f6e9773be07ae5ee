"""The Ethereum JSON-RPC face: the eth_* / net_* / web3_* methods wallets and libraries call.

Served on the same endpoint (and ``/ws``) as Vigil's own methods, over an :class:`EthBackend`
that the runtime provides (node/host/eth_backend.py). Errors a wallet must understand use
code -32000 with geth's message text ("nonce too low", "insufficient funds for gas * price +
value", "already known", ...), which ethers, web3.py and MetaMask recognise. See docs/rpc.md.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from node import VERSION
from node.api import ethjson as J
from node.api.params import Method, Param, hex_bytes, params_error
from node.chain.block import Block
from node.chain.ethtx import (
    ANCHOR_ADDRESS,
    BASE_FEE_WEI,
    DIGEST_BYTES,
    GAS_LIMIT_MAX,
    GAS_TRANSFER,
    WEI_PER_UNIT,
    EthTransaction,
    EthTxError,
    decode_eth,
    eth_chain_id,
    intrinsic_gas,
)
from node.chain.ledger import Receipt
from node.chain.tx import MEMO_BYTES_MAX, TX_BYTES_MAX, Transaction
from node.errors import (
    MEMPOOL_FULL,
    METHOD_NOT_FOUND,
    SERVER_ERROR,
    TX_BALANCE,
    TX_DUPLICATE,
    TX_INVALID,
    TX_NONCE,
    VigilError,
)

RAW_TX_PARAM_BYTES_MAX = 128 * 1024  # bigger than any tx, so oversize gets geth's message
FEE_HISTORY_BLOCKS_MAX = 1024
LOG_RANGE_MAX = 10_000  # blocks per eth_getLogs query
LOG_RESULTS_MAX = 10_000
LOG_CHUNK_BLOCKS = 200  # blocks read per worker-thread call


@dataclass(frozen=True, slots=True)
class BlockView:
    block: Block
    receipts: tuple[Receipt | None, ...]
    miner: bytes


@dataclass(frozen=True, slots=True)
class TxView:
    tx: Transaction
    block: BlockView | None  # None while pending or held
    index: int | None


class EthBackend(Protocol):
    def chain_text(self) -> str: ...
    def head(self) -> int: ...
    def syncing(self) -> bool: ...
    def account(self, address: bytes) -> tuple[int, int]: ...
    def pending_nonce(self, address: bytes) -> int: ...
    def is_committed(self, tx_hash: bytes) -> bool: ...
    async def block(self, height: int) -> BlockView | None: ...
    async def blocks(self, lo: int, hi: int) -> list[BlockView]: ...
    async def height_of(self, block_hash: bytes) -> int | None: ...
    async def tx(self, tx_hash: bytes) -> TxView | None: ...
    async def submit(self, raw: bytes) -> str: ...


def eth_error(message: str, reason: str = "") -> VigilError:
    return VigilError(SERVER_ERROR, message, {"reason": reason} if reason else None)


# --- parameters ---------------------------------------------------------------------------

_QUANTITY_RE = re.compile(r"0[xX][0-9a-fA-F]{1,64}")
_TAGS = ("latest", "pending", "safe", "finalized", "earliest")


def quantity(value: Any, name: str) -> int:
    """A hex quantity ("0x1a"); plain JSON integers are accepted too."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if not isinstance(value, str) or not _QUANTITY_RE.fullmatch(value):
        raise params_error(name, "a 0x-prefixed hex quantity")
    return int(value, 16)


def block_ref(value: Any, name: str) -> str | int | bytes:
    """A block tag, a number, or an EIP-1898 object {blockNumber} / {blockHash}."""
    if isinstance(value, str) and value in _TAGS:
        return value
    if isinstance(value, dict):
        if "blockHash" in value:
            block_hash: bytes = hex_bytes(32)(value["blockHash"], name + ".blockHash")
            return block_hash
        if "blockNumber" in value:
            return quantity(value["blockNumber"], name + ".blockNumber")
    try:
        return quantity(value, name)
    except VigilError:
        raise params_error(name, 'a block number or "latest", "pending", "earliest"') from None


def boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise params_error(name, "true or false")
    return value


def json_object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise params_error(name, "an object")
    return value


def json_any(value: Any, name: str) -> Any:
    return value


_ADDRESS = hex_bytes(20)
_HASH = hex_bytes(32)
_RAW = hex_bytes(size_max=RAW_TX_PARAM_BYTES_MAX)


def _data_field(obj: dict[str, Any], name: str) -> bytes:
    value = obj.get("input", obj.get("data"))
    if value in (None, "0x", "0X"):
        return b""
    data: bytes = hex_bytes(size_max=RAW_TX_PARAM_BYTES_MAX)(value, name + ".input")
    return data


# --- helpers ------------------------------------------------------------------------------


async def _height(eth: EthBackend, ref: str | int | bytes) -> int | None:
    head = eth.head()
    if isinstance(ref, bytes):
        return await eth.height_of(ref)
    if isinstance(ref, int):
        return ref if ref <= head else None
    return 0 if ref == "earliest" else head


async def _state_at(eth: EthBackend, ref: str | int | bytes) -> None:
    """Only the latest state is kept: other blocks answer geth's "missing trie node"-like error."""
    h = await _height(eth, ref)
    if h is None:
        raise eth_error("header not found")
    if h != eth.head():
        raise eth_error(
            "historical state is not available: Vigil keeps the state at the head only"
            f" ({eth.head()})"
        )


def _chain(eth: EthBackend) -> int:
    return eth_chain_id(eth.chain_text())


# --- methods ------------------------------------------------------------------------------


async def eth_chainId(eth: EthBackend) -> str:
    return J.q(_chain(eth))


async def net_version(eth: EthBackend) -> str:
    return str(_chain(eth))


async def net_listening(eth: EthBackend) -> bool:
    return True


async def web3_clientVersion(eth: EthBackend) -> str:
    return f"Vigil/v{VERSION}/python"


async def eth_blockNumber(eth: EthBackend) -> str:
    return J.q(eth.head())


async def eth_syncing(eth: EthBackend) -> Any:
    if not eth.syncing():
        return False
    head = J.q(eth.head())
    return {"startingBlock": head, "currentBlock": head, "highestBlock": head}


async def eth_accounts(eth: EthBackend) -> list[str]:
    return []  # the node holds no user keys: wallets sign


async def eth_gasPrice(eth: EthBackend) -> str:
    return J.q(BASE_FEE_WEI)


async def eth_maxPriorityFeePerGas(eth: EthBackend) -> str:
    return "0x0"  # no tip is ever charged: the whole fee is gas used x base fee


async def eth_getBalance(eth: EthBackend, address: bytes, block: Any) -> str:
    await _state_at(eth, block)
    return J.q(eth.account(address)[0] * WEI_PER_UNIT)


async def eth_getTransactionCount(eth: EthBackend, address: bytes, block: Any) -> str:
    if block == "pending":
        return J.q(eth.pending_nonce(address))
    await _state_at(eth, block)
    return J.q(eth.account(address)[1])


async def eth_getCode(eth: EthBackend, address: bytes, block: Any) -> str:
    return "0x"  # no contracts exist


async def eth_feeHistory(
    eth: EthBackend, count: int, newest: Any, percentiles: Any
) -> dict[str, Any]:
    count = min(count, FEE_HISTORY_BLOCKS_MAX)
    last = await _height(eth, newest)
    if last is None:
        raise eth_error("header not found")
    oldest = max(0, last - count + 1)
    views = await eth.blocks(oldest, last) if count else []
    ratios = []
    for v in views:
        used = sum(J.gas_used(t, r) for t, r in zip(v.block.txs, v.receipts, strict=True))
        ratios.append(min(1.0, used / GAS_LIMIT_MAX))
    out: dict[str, Any] = {
        "oldestBlock": J.q(oldest),
        "baseFeePerGas": [J.q(BASE_FEE_WEI)] * (len(views) + 1),
        "gasUsedRatio": ratios,
    }
    if isinstance(percentiles, list):
        out["reward"] = [["0x0"] * len(percentiles) for _ in views]
    return out


def _call_shape(obj: dict[str, Any]) -> tuple[bytes | None, int, bytes]:
    to = obj.get("to")
    to_b = _ADDRESS(to, "transaction.to") if to is not None else None
    value = quantity(obj.get("value", "0x0"), "transaction.value")
    return to_b, value, _data_field(obj, "transaction")


async def eth_estimateGas(eth: EthBackend, obj: dict[str, Any], block: Any) -> str:
    """The gas the tx will use: 21000 for a transfer, Ethereum's intrinsic gas for an anchor."""
    to, value, data = _call_shape(obj)
    if to is None:
        raise eth_error("contract creation is not supported: Vigil has no EVM")
    if to == ANCHOR_ADDRESS:
        if not DIGEST_BYTES <= len(data) <= DIGEST_BYTES + MEMO_BYTES_MAX:
            raise eth_error(
                "anchor data must be a 32-byte digest followed by at most "
                f"{MEMO_BYTES_MAX} memo bytes"
            )
        if value:
            raise eth_error("an anchor carries no value: send 0 to the anchor address")
        return J.q(intrinsic_gas(data))
    if data:
        raise eth_error(
            f"data is only accepted by the anchor address {J.d(ANCHOR_ADDRESS)}: Vigil has no EVM"
        )
    sender = obj.get("from")
    if sender is not None and value:
        balance = eth.account(_ADDRESS(sender, "transaction.from"))[0] * WEI_PER_UNIT
        if value + GAS_TRANSFER * BASE_FEE_WEI > balance:
            raise eth_error("insufficient funds for gas * price + value", "tx_balance")
    return J.q(GAS_TRANSFER)


async def eth_call(eth: EthBackend, obj: dict[str, Any], block: Any) -> str:
    to, _, data = _call_shape(obj)
    if to is not None and not data:
        return "0x"  # calling an account without code returns nothing, as on Ethereum
    raise eth_error("eth_call is not supported: Vigil has no EVM (no contracts)")


def _nonce_message(exc: VigilError, tx: EthTransaction) -> str:
    if "already pending" in exc.message:
        return "replacement transaction underpriced: a tx with this nonce is already pending"
    if "too far ahead" in exc.message:
        return f"nonce too high: {exc.message}"
    return f"nonce too low: {exc.message}"


async def eth_sendRawTransaction(eth: EthBackend, raw: bytes) -> str:
    """Admit a signed Ethereum tx; returns its hash, also while the detector holds it."""
    if len(raw) > TX_BYTES_MAX:
        raise eth_error(
            f"oversized data: transaction too large, size {len(raw)}, limit {TX_BYTES_MAX}",
            "tx_invalid",
        )
    try:
        tx = decode_eth(raw)  # parse only: the signature is recovered in admission's thread
    except EthTxError as exc:
        raise eth_error(exc.reason, "tx_invalid") from None
    want = _chain(eth)
    if tx.eth_chain != want:
        raise eth_error(
            f"invalid chain id for signer: have {tx.eth_chain} want {want}", "tx_invalid"
        )
    tx_hash = tx.hash
    if eth.is_committed(tx_hash):
        raise eth_error("nonce too low: transaction already committed", "tx_nonce")
    try:
        await eth.submit(raw)
    except VigilError as exc:
        if exc.code == TX_DUPLICATE:
            raise eth_error("already known", exc.name) from None
        if exc.code == TX_NONCE:
            raise eth_error(_nonce_message(exc, tx), exc.name) from None
        if exc.code == TX_BALANCE:
            raise eth_error("insufficient funds for gas * price + value", exc.name) from None
        if exc.code == MEMPOOL_FULL:
            raise eth_error("txpool is full", exc.name) from None
        if exc.code == TX_INVALID:
            msg = exc.message.removeprefix("does not decode: ")
            if msg == "bad signature":
                msg = "invalid sender: signature does not recover a public key"
            raise eth_error(msg, exc.name) from None
        raise
    return J.d(tx_hash)


async def eth_getTransactionByHash(eth: EthBackend, tx_hash: bytes) -> Any:
    view = await eth.tx(tx_hash)
    if view is None:
        return None
    b = view.block
    return J.tx_object(
        view.tx,
        _chain(eth),
        b.block.hash if b else None,
        b.block.height if b else None,
        view.index,
    )


async def eth_getTransactionReceipt(eth: EthBackend, tx_hash: bytes) -> Any:
    view = await eth.tx(tx_hash)
    if view is None or view.block is None or view.index is None:
        return None  # unknown, pending, or held by the detector: no receipt yet
    b = view.block
    return J.receipt_object(view.tx, b.receipts[view.index], b.block, b.receipts, view.index)


async def _block_json(eth: EthBackend, height: int | None, full: bool) -> Any:
    if height is None:
        return None
    view = await eth.block(height)
    if view is None:
        return None
    return J.block_object(view.block, view.receipts, view.miner, _chain(eth), full)


async def eth_getBlockByNumber(eth: EthBackend, ref: Any, full: bool) -> Any:
    return await _block_json(eth, await _height(eth, ref), full)


async def eth_getBlockByHash(eth: EthBackend, block_hash: bytes, full: bool) -> Any:
    return await _block_json(eth, await eth.height_of(block_hash), full)


async def eth_getBlockTransactionCountByNumber(eth: EthBackend, ref: Any) -> Any:
    h = await _height(eth, ref)
    view = await eth.block(h) if h is not None else None
    return J.q(len(view.block.txs)) if view is not None else None


def _topic_filter(value: Any) -> list[set[bytes] | None]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 4:
        raise params_error("filter.topics", "an array of at most 4 topics")
    out: list[set[bytes] | None] = []
    for i, t in enumerate(value):
        name = f"filter.topics[{i}]"
        if t is None:
            out.append(None)
        elif isinstance(t, list):
            out.append({_HASH(x, name) for x in t} or None)
        else:
            out.append({_HASH(t, name)})
    return out


def _address_filter(value: Any) -> set[bytes] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return {_ADDRESS(a, "filter.address") for a in value} or None
    return {_ADDRESS(value, "filter.address")}


@dataclass(frozen=True, slots=True)
class LogFilter:
    addresses: set[bytes] | None
    topics: list[set[bytes] | None]

    @staticmethod
    def parse(obj: dict[str, Any]) -> LogFilter:
        return LogFilter(_address_filter(obj.get("address")), _topic_filter(obj.get("topics")))

    def matches(self, log: dict[str, Any]) -> bool:
        if self.addresses is not None and bytes.fromhex(log["address"][2:]) not in self.addresses:
            return False
        topics = log["topics"]
        for i, want in enumerate(self.topics):
            if want is None:
                continue
            if i >= len(topics) or bytes.fromhex(topics[i][2:]) not in want:
                return False
        return True


async def eth_getLogs(eth: EthBackend, obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Anchor logs (address = anchor address, topics = [digest], data = memo) in a block range."""
    flt = LogFilter.parse(obj)
    if obj.get("blockHash") is not None:
        if "fromBlock" in obj or "toBlock" in obj:
            raise params_error("filter", "either blockHash or fromBlock/toBlock")
        h = await eth.height_of(_HASH(obj["blockHash"], "filter.blockHash"))
        if h is None:
            raise eth_error("unknown block")
        lo = hi = h
    else:
        head = eth.head()
        lo_ref = block_ref(obj.get("fromBlock", "latest"), "filter.fromBlock")
        hi_ref = block_ref(obj.get("toBlock", "latest"), "filter.toBlock")
        lo_h, hi_h = await _height(eth, lo_ref), await _height(eth, hi_ref)
        lo = lo_h if lo_h is not None else head + 1
        hi = min(hi_h if hi_h is not None else head, head)
        if hi - lo + 1 > LOG_RANGE_MAX:
            raise eth_error(f"query exceeds max block range {LOG_RANGE_MAX}")
    out: list[dict[str, Any]] = []
    for start in range(lo, hi + 1, LOG_CHUNK_BLOCKS):
        for v in await eth.blocks(start, min(hi, start + LOG_CHUNK_BLOCKS - 1)):
            out += [x for x in J.block_logs(v.block, v.receipts) if flt.matches(x)]
            if len(out) > LOG_RESULTS_MAX:
                raise eth_error(f"query returned more than {LOG_RESULTS_MAX} results")
    return out


# --- the method table ---------------------------------------------------------------------

Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class EthMethod(Method):
    """A method answered by a function of node/api/eth.py over the service's ``eth`` backend."""

    handler: Handler | None = None

    async def call(self, service: Any, args: dict[str, Any]) -> Any:
        backend = getattr(service, "eth", None)
        if backend is None or self.handler is None:
            raise VigilError(METHOD_NOT_FOUND, "method not found")
        return await self.handler(backend, *(args[p.name] for p in self.params))


_LATEST = Param("block", block_ref, False, "latest")
_FULL = Param("full", boolean, False, False)


def _m(handler: Handler, *params: Param) -> EthMethod:
    return EthMethod(handler.__name__, params, False, handler)


ETH_METHODS: dict[str, EthMethod] = {
    m.name: m
    for m in (
        _m(eth_chainId),
        _m(net_version),
        _m(net_listening),
        _m(web3_clientVersion),
        _m(eth_blockNumber),
        _m(eth_syncing),
        _m(eth_accounts),
        _m(eth_gasPrice),
        _m(eth_maxPriorityFeePerGas),
        _m(eth_getBalance, Param("address", _ADDRESS), _LATEST),
        _m(eth_getTransactionCount, Param("address", _ADDRESS), _LATEST),
        _m(eth_getCode, Param("address", _ADDRESS), _LATEST),
        _m(
            eth_feeHistory,
            Param("blockCount", quantity),
            Param("newestBlock", block_ref, False, "latest"),
            Param("rewardPercentiles", json_any, False, None),
        ),
        _m(eth_estimateGas, Param("transaction", json_object), _LATEST),
        _m(eth_call, Param("transaction", json_object), _LATEST),
        _m(eth_sendRawTransaction, Param("transaction", _RAW)),
        _m(eth_getTransactionByHash, Param("hash", _HASH)),
        _m(eth_getTransactionReceipt, Param("hash", _HASH)),
        _m(eth_getBlockByNumber, Param("block", block_ref), _FULL),
        _m(eth_getBlockByHash, Param("hash", _HASH), _FULL),
        _m(eth_getBlockTransactionCountByNumber, Param("block", block_ref)),
        _m(eth_getLogs, Param("filter", json_object)),
    )
}

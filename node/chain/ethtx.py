"""Ethereum-signed transactions as a second transaction format of the same ledger.

A wallet (MetaMask, web3.py, ethers) signs an ordinary Ethereum transaction; Vigil accepts three
envelopes (docs/transactions.md section 8): legacy with EIP-155 replay protection, EIP-2930
(type 1, empty access list) and EIP-1559 (type 2). The decoded value is a ``Transaction`` of kind
``transfer`` or ``anchor`` so the ledger, mempool and detector treat both formats alike; only
what differs lives here: RLP parsing, the secp256k1 sender, the Keccak hash and the gas rules.

Libraries: ``rlp`` (the Ethereum Foundation's RLP codec), ``eth-hash`` over pycryptodome
(Keccak-256) and ``coincurve`` (libsecp256k1 bindings; public-key recovery in C). All install
as wheels. No EVM: a tx either moves value or, sent to ANCHOR_ADDRESS, anchors a digest.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

import rlp
from coincurve import PrivateKey, PublicKey
from eth_hash.auto import keccak
from rlp.exceptions import RLPException

from common.crypto import to_hex
from node.chain.tx import MEMO_BYTES_MAX, TX_BYTES_MAX, Transaction, TxError, register_format

# --- units and gas (docs/architecture.md, "Ethereum accounts") --------------------------------

WEI_PER_UNIT = 10**9  # one Vigil unit is one gwei; wallets show 18 decimals, so 10^9 units = 1
BASE_FEE_WEI = WEI_PER_UNIT  # a constant base fee of 1 unit (1 gwei) per gas; no fee market
GAS_TRANSFER = 21_000  # Ethereum's intrinsic gas, so wallets' hard-coded 21000 is exact
GAS_PER_ZERO_BYTE = 4  # EIP-2028 calldata costs: an anchor pays Ethereum's intrinsic gas
GAS_PER_NONZERO_BYTE = 16
GAS_LIMIT_MAX = 30_000_000  # per tx; also the gasLimit blocks report
UINT64_MAX = 2**64 - 1
DIGEST_BYTES = 32
# Anchors are txs to this address (nobody holds its key): data = 32-byte digest ‖ memo.
ANCHOR_ADDRESS = bytes.fromhex("000000000000000000000000000000000000a4c4")
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

LEGACY, ACCESS_LIST, DYNAMIC_FEE = 0, 1, 2
CHAIN_ID_DOMAIN = b"vigil/eth-chain-id/v1"


@functools.lru_cache(maxsize=16)
def eth_chain_id(chain_id: str) -> int:
    """The integer chain id wallets sign with, derived from the chain's text id.

    1_000_000 + (first 4 bytes of SHA-256("vigil/eth-chain-id/v1" ‖ 0x00 ‖ chain_id) mod 10^9):
    clear of the well-known public chain ids and below 2^31, so every wallet accepts it.
    """
    d = hashlib.sha256(CHAIN_ID_DOMAIN + b"\x00" + chain_id.encode()).digest()
    return 1_000_000 + int.from_bytes(d[:4], "big") % 1_000_000_000


def intrinsic_gas(data: bytes) -> int:
    """Gas a tx with this calldata uses: 21000 + 16 per nonzero byte + 4 per zero byte."""
    zeros = data.count(0)
    return GAS_TRANSFER + GAS_PER_ZERO_BYTE * zeros + GAS_PER_NONZERO_BYTE * (len(data) - zeros)


class EthTxError(TxError):
    """An Ethereum tx Vigil refuses; ``reason`` reads like geth's message, as wallets show it."""


def _uint(b: Any, name: str, bits: int = 256) -> int:
    if not isinstance(b, bytes):
        raise EthTxError(f"rlp: {name}: expected a byte string, got a list")
    if b[:1] == b"\x00":
        raise EthTxError(f"rlp: {name}: non-canonical integer (leading zero bytes)")
    if len(b) * 8 > bits:
        raise EthTxError(f"rlp: {name}: integer larger than {bits} bits")
    return int.from_bytes(b, "big")


def _bytes(b: Any, name: str) -> bytes:
    if not isinstance(b, bytes):
        raise EthTxError(f"rlp: {name}: expected a byte string, got a list")
    return b


@dataclass(frozen=True, slots=True)
class EthTransaction(Transaction):
    """A decoded Ethereum tx. Base fields: ``chain_id`` is "eip155:<n>" (CAIP-2), ``sender`` is
    empty (the address is recovered), ``amount`` = value / 10^9 and ``fee`` = gas used (units)."""

    eth_type: int = LEGACY
    eth_chain: int = 0
    gas_limit: int = 0
    gas_price_wei: int = 0  # legacy and type 1 gasPrice; type 2 maxFeePerGas
    priority_fee_wei: int = 0  # type 2 maxPriorityFeePerGas; else = gas_price_wei
    value_wei: int = 0
    data: bytes = b""
    eth_to: bytes = b""  # the 20-byte ``to`` as signed (the anchor address for anchors)
    y_parity: int = 0
    r: int = 0
    s: int = 0
    signing_hash: bytes = b""
    raw: bytes = b""
    _recovered: bool = field(default=False, init=False, repr=False, compare=False)

    # --- what the shared code calls -------------------------------------------------------

    def encode(self) -> bytes:
        return self.raw

    def signing_bytes(self) -> bytes:
        return self.signing_hash

    @property
    def hash(self) -> bytes:
        """Keccak-256 of the raw signed envelope: the hash every Ethereum tool computes."""
        h = self._hash
        if h is None:
            h = keccak(self.raw)
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def sender_address(self) -> bytes:
        """The recovered sender; raises EthTxError when the signature recovers no key."""
        if not self._recovered:
            self._recover()
        a = self._sender_address
        if a is None:
            raise EthTxError("invalid sender: signature does not recover a public key")
        return a

    def _recover(self) -> None:
        address: bytes | None = None
        try:
            sig = self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big") + bytes([self.y_parity])
            pub = PublicKey.from_signature_and_message(sig, self.signing_hash, hasher=None)
            address = keccak(pub.format(compressed=False)[1:])[12:]
        except ValueError:  # libsecp256k1 refuses: no such point; the tx has no sender
            address = None
        object.__setattr__(self, "_sender_address", address)
        object.__setattr__(self, "_recovered", True)

    def verify_signature(self) -> bool:
        """Recovery succeeds (the expensive part: run it in a worker thread)."""
        if not self._recovered:
            self._recover()
        return self._sender_address is not None

    def for_chain(self, chain_id: str) -> bool:
        return self.eth_chain == eth_chain_id(chain_id)

    @property
    def gas_used(self) -> int:
        return intrinsic_gas(self.data)

    def to_json(self) -> dict[str, Any]:
        """tx_get's fields: the shared ones plus the Ethereum envelope (and ``raw`` for proofs)."""
        try:
            sender = to_hex(self.sender_address)
        except EthTxError:
            sender = None
        out: dict[str, Any] = {
            "hash": to_hex(self.hash),
            "kind": self.kind,
            "format": "ethereum",
            "chain_id": self.chain_id,
            "from": sender,
            "nonce": self.nonce,
            "fee": self.fee,
        }
        if self.kind == "transfer":
            out["to"] = to_hex(self.to)
            out["amount"] = self.amount
        else:
            out["digest"] = to_hex(self.digest)
            out["memo"] = to_hex(self.memo)
        out.update(
            eth_type=self.eth_type,
            eth_chain_id=self.eth_chain,
            gas_limit=self.gas_limit,
            gas_used=self.gas_used,
            value_wei=str(self.value_wei),
            raw=to_hex(self.raw),
        )
        return out

    @staticmethod
    def decode(data: bytes) -> EthTransaction:
        return decode_eth(data)


def _fields(data: bytes) -> tuple[int, list[Any]]:
    """(type, RLP items) of a raw envelope; only canonical RLP is accepted (a hash names one tx)."""
    if not data:
        raise EthTxError("typed transaction too short")
    if len(data) > TX_BYTES_MAX:
        raise EthTxError(
            f"oversized data: transaction too large, size {len(data)}, limit {TX_BYTES_MAX}"
        )
    first = data[0]
    if first >= 0xC0:
        tx_type, payload = LEGACY, data
    elif first in (ACCESS_LIST, DYNAMIC_FEE):
        tx_type, payload = first, data[1:]
    else:
        raise EthTxError("transaction type not supported")
    try:
        items = rlp.decode(payload, strict=True)
    except RLPException as exc:
        raise EthTxError(f"rlp: {exc}") from None
    if not isinstance(items, list):
        raise EthTxError("rlp: expected input list for the transaction")
    if rlp.encode(items) != payload:
        raise EthTxError("rlp: non-canonical encoding")
    want = {LEGACY: 9, ACCESS_LIST: 11, DYNAMIC_FEE: 12}[tx_type]
    if len(items) != want:
        raise EthTxError(f"rlp: expected {want} fields for a type {tx_type} tx, got {len(items)}")
    return tx_type, items


def decode_eth(data: bytes) -> EthTransaction:
    """Parse and check a raw Ethereum tx without recovering its sender (that is verify_signature).

    Every rule that needs neither state nor the chain id is checked here, so a block carrying a
    tx that breaks one fails to decode and is invalid. Raises EthTxError (a CodecError).
    """
    data = bytes(data)
    tx_type, f = _fields(data)
    access: list[Any] = []
    if tx_type == LEGACY:
        nonce, price, gas, to, value, calldata, v, r, s = f
        v_int = _uint(v, "v")
        if v_int in (27, 28):
            raise EthTxError("only replay-protected (EIP-155) transactions allowed over RPC")
        if v_int < 37:
            raise EthTxError(f"invalid signature v {v_int}")
        chain, parity = (v_int - 35) // 2, (v_int - 35) % 2
        fee_cap = tip = _uint(price, "gasPrice")
    else:
        if tx_type == ACCESS_LIST:
            chain_b, nonce, price, gas, to, value, calldata, access, yp, r, s = f
            fee_cap = tip = _uint(price, "gasPrice")
        else:
            chain_b, nonce, tip_b, cap_b, gas, to, value, calldata, access, yp, r, s = f
            tip, fee_cap = _uint(tip_b, "maxPriorityFeePerGas"), _uint(cap_b, "maxFeePerGas")
            if tip > fee_cap:
                raise EthTxError(
                    "max priority fee per gas higher than max fee per gas: "
                    f"maxPriorityFeePerGas: {tip}, maxFeePerGas: {fee_cap}"
                )
        chain = _uint(chain_b, "chainId")
        parity = _uint(yp, "yParity", 8)
        if parity > 1:
            raise EthTxError(f"invalid signature yParity {parity}")
        if not isinstance(access, list):
            raise EthTxError("rlp: accessList: expected a list")
        if access:
            raise EthTxError("access lists are not supported (Vigil has no EVM storage)")
    nonce_i = _uint(nonce, "nonce", 64)
    if nonce_i == UINT64_MAX:
        raise EthTxError("nonce has max value")
    gas_i = _uint(gas, "gas", 64)
    value_i = _uint(value, "value")
    r_i, s_i = _uint(r, "r"), _uint(s, "s")
    to_b, calldata_b = _bytes(to, "to"), _bytes(calldata, "data")
    if chain < 1:
        raise EthTxError("invalid chain id 0")
    if not (1 <= r_i < SECP256K1_N and 1 <= s_i <= SECP256K1_N // 2):
        raise EthTxError("invalid transaction v, r, s values")  # EIP-2: low s only
    if not to_b:
        raise EthTxError("contract creation is not supported: Vigil has no EVM")
    if len(to_b) != 20:
        raise EthTxError(f"rlp: to: expected 20 bytes, got {len(to_b)}")
    if fee_cap < BASE_FEE_WEI:
        raise EthTxError(
            f"max fee per gas less than block base fee: maxFeePerGas: {fee_cap}, "
            f"baseFee: {BASE_FEE_WEI}"
        )
    need = intrinsic_gas(calldata_b)
    if gas_i < need:
        raise EthTxError(f"intrinsic gas too low: have {gas_i}, want {need}")
    if gas_i > GAS_LIMIT_MAX:
        raise EthTxError(f"exceeds block gas limit: gas {gas_i}, limit {GAS_LIMIT_MAX}")
    if value_i % WEI_PER_UNIT:
        raise EthTxError(
            f"value must be a whole number of gwei (1 Vigil unit = {WEI_PER_UNIT} wei)"
        )
    amount = value_i // WEI_PER_UNIT
    if amount > UINT64_MAX:
        raise EthTxError("insufficient funds for gas * price + value: value exceeds 2^64-1 units")
    if to_b == ANCHOR_ADDRESS:
        if value_i:
            raise EthTxError("an anchor carries no value: send 0 to the anchor address")
        if not DIGEST_BYTES <= len(calldata_b) <= DIGEST_BYTES + MEMO_BYTES_MAX:
            raise EthTxError(
                "anchor data must be a 32-byte digest followed by at most "
                f"{MEMO_BYTES_MAX} memo bytes, got {len(calldata_b)} bytes"
            )
        kind, to_field, digest, memo = "anchor", b"", calldata_b[:32], calldata_b[32:]
    else:
        if calldata_b:
            raise EthTxError(
                "data is only accepted by the anchor address 0x"
                + ANCHOR_ADDRESS.hex()
                + ": Vigil has no EVM"
            )
        kind, to_field, digest, memo = "transfer", to_b, b"", b""
    if tx_type == LEGACY:
        unsigned = rlp.encode([*f[:6], chain, 0, 0])
    else:
        unsigned = bytes([tx_type]) + rlp.encode(f[:-3])
    tx = EthTransaction(
        kind=kind,
        chain_id=f"eip155:{chain}",
        sender=b"",
        nonce=nonce_i,
        fee=need * BASE_FEE_WEI // WEI_PER_UNIT,
        to=to_field,
        amount=amount,
        digest=digest,
        memo=memo,
        signature=r_i.to_bytes(32, "big") + s_i.to_bytes(32, "big") + bytes([parity]),
        eth_type=tx_type,
        eth_chain=chain,
        gas_limit=gas_i,
        gas_price_wei=fee_cap,
        priority_fee_wei=tip,
        value_wei=value_i,
        data=calldata_b,
        eth_to=to_b,
        y_parity=parity,
        r=r_i,
        s=s_i,
        signing_hash=keccak(unsigned),
        raw=data,
    )
    object.__setattr__(tx, "_encoded", data)
    return tx


def raw_hash(data: bytes) -> bytes:
    return keccak(data)


# Typed envelopes start with their type byte (EIP-2718: 0x00..0x7f), legacy ones with an RLP
# list header (0xc0..0xff); the native msgpack map starts with 0x80..0x8f, so they never meet.
register_format(range(0x00, 0x80), decode_eth, raw_hash)
register_format(range(0xC0, 0x100), decode_eth, raw_hash)


def sign_dynamic_fee(
    private_key: bytes,
    chain: int,
    nonce: int,
    to: bytes,
    value_wei: int = 0,
    data: bytes = b"",
    gas: int | None = None,
    max_fee_wei: int = 2 * BASE_FEE_WEI,
    priority_fee_wei: int = 0,
) -> bytes:
    """A signed EIP-1559 (type 2) tx, as a wallet makes it (bench, demo and tests use it)."""
    fields: list[Any] = [chain, nonce, priority_fee_wei, max_fee_wei]
    fields += [gas if gas is not None else intrinsic_gas(data), to, value_wei, data, []]
    unsigned = bytes([DYNAMIC_FEE]) + rlp.encode(fields)
    sig = PrivateKey(private_key).sign_recoverable(keccak(unsigned), hasher=None)
    r, s, parity = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
    signed: bytes = rlp.encode([*fields, parity, r, s])
    return bytes([DYNAMIC_FEE]) + signed


def eth_address(private_key: bytes) -> bytes:
    """The 20-byte address of a secp256k1 key: Keccak-256 of the public key, last 20 bytes."""
    return keccak(PrivateKey(private_key).public_key.format(compressed=False)[1:])[12:]

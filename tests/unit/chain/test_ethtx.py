"""Ethereum-signed transactions: vectors, eth-account agreement, every refusal,
ledger and mempool.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rlp
from eth_account import Account
from eth_utils.address import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from common.codec import CodecError
from common.crypto import SigningKey, address_of
from node.chain.block import Proposal, build_block
from node.chain.ethtx import (
    ANCHOR_ADDRESS,
    BASE_FEE_WEI,
    EthTransaction,
    EthTxError,
    decode_eth,
    eth_address,
    eth_chain_id,
    intrinsic_gas,
    sign_dynamic_fee,
)
from node.chain.ledger import Account as LedgerAccount
from node.chain.ledger import BlockInvalid, check_block_stateless, execute_block
from node.chain.mempool import Mempool
from node.chain.tx import Claim, Transaction, claim_of, make_transfer, tx_hash_of
from node.errors import VigilError
from tests.vectors_gen import ETH_KEY, build_eth

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
CHAIN = "vigil-testnet"
CID = eth_chain_id(CHAIN)
ALICE = Account.from_key(ETH_KEY)
TO = "0x" + "35" * 20
ANCHOR = to_checksum_address("0x" + ANCHOR_ADDRESS.hex())
DIGEST = bytes(range(32))


def signed(**tx: object) -> bytes:
    base: dict[str, object] = {
        "type": 2,
        "chainId": CID,
        "nonce": 0,
        "to": to_checksum_address(TO),
        "value": 10**9,
        "gas": 21_000,
        "maxFeePerGas": 2 * BASE_FEE_WEI,
        "maxPriorityFeePerGas": 0,
    }
    base.update(tx)
    if base["type"] != 2:
        for k in ("maxFeePerGas", "maxPriorityFeePerGas"):
            base.pop(k, None)
        base.setdefault("gasPrice", BASE_FEE_WEI)
    if base["type"] == 0:
        base.pop("type")
    return bytes(ALICE.sign_transaction(base).raw_transaction)


@pytest.mark.parametrize("name", ["eth_transfer.json", "eth_anchor.json"])
def test_vectors_pin_the_bytes(name: str) -> None:
    v = json.loads((VECTORS / name).read_text())
    assert build_eth()[name] == v  # regenerating changes nothing
    raw = bytes.fromhex(v["raw"][2:])
    tx = Transaction.decode(raw)
    assert isinstance(tx, EthTransaction)
    assert tx.hash == bytes.fromhex(v["hash"][2:]) == tx_hash_of(raw)
    assert tx.verify_signature()
    assert tx.sender_address == bytes.fromhex(v["address"][2:])
    assert v["address"] == "0x9d8a62f656a8d1615c1294fd71e9cfb3e4855a4f"  # EIP-155's example key
    assert tx.kind == v["kind"]
    assert tx.for_chain(CHAIN)
    assert not tx.for_chain("vigil-local")


@pytest.mark.parametrize(
    "tx",
    [
        {"type": 0},
        {"type": 1, "accessList": []},
        {"type": 2},
        {"type": 2, "to": ANCHOR, "value": 0, "data": DIGEST + b"memo", "gas": 30_000},
        {"type": 0, "to": ANCHOR, "value": 0, "data": DIGEST, "gas": 22_000},
    ],
)
def test_eth_account_envelopes_decode(tx: dict[str, object]) -> None:
    raw = signed(**tx)
    t = decode_eth(raw)
    assert t.eth_type == tx["type"]
    assert t.hash == tx_hash_of(raw)
    assert t.sender_address == bytes.fromhex(ALICE.address[2:])
    if t.kind == "anchor":
        assert t.digest == DIGEST
        assert t.fee == intrinsic_gas(t.data)
        assert t.amount == 0
    else:
        assert (t.to, t.amount, t.fee) == (bytes.fromhex(TO[2:]), 1, 21_000)
    assert t.to_json()["from"] == ALICE.address.lower()


def test_own_signer_matches_eth_account_byte_for_byte() -> None:
    raw = sign_dynamic_fee(ETH_KEY, CID, 0, bytes.fromhex(TO[2:]), 10**9)
    assert raw == signed()
    assert eth_address(ETH_KEY) == bytes.fromhex(ALICE.address[2:])


@pytest.mark.parametrize(
    ("tx", "reason"),
    [
        ({"gas": 20_000}, "intrinsic gas too low"),
        ({"maxFeePerGas": BASE_FEE_WEI - 1}, "max fee per gas less than block base fee"),
        ({"type": 0, "gasPrice": 1}, "max fee per gas less than block base fee"),
        ({"maxPriorityFeePerGas": 3 * BASE_FEE_WEI}, "higher than max fee"),
        ({"value": 1}, "whole number of gwei"),
        ({"data": b"\x01", "gas": 22_000}, "only accepted by the anchor address"),
        ({"to": ANCHOR, "value": 0, "data": b"\x01" * 31, "gas": 30_000}, "32-byte digest"),
        ({"to": ANCHOR, "value": 0, "data": b"\x01" * 161, "gas": 40_000}, "32-byte digest"),
        ({"to": ANCHOR, "value": 10**9, "data": DIGEST, "gas": 30_000}, "carries no value"),
        ({"to": ANCHOR, "value": 0, "data": b"\x01" * 2000, "gas": 60_000}, "oversized data"),
        ({"gas": 30_000_001}, "exceeds block gas limit"),
        ({"type": 1, "accessList": [{"address": TO, "storageKeys": []}]}, "access lists"),
    ],
)
def test_refusals(tx: dict[str, object], reason: str) -> None:
    with pytest.raises(EthTxError, match=reason):
        Transaction.decode(signed(**tx))


def test_creation_pre_eip155_and_other_types_are_refused() -> None:
    creation = {"chainId": CID, "nonce": 0, "value": 0, "gas": 60_000, "gasPrice": BASE_FEE_WEI}
    with pytest.raises(EthTxError, match="contract creation"):
        decode_eth(bytes(ALICE.sign_transaction({**creation, "data": "0x00"}).raw_transaction))
    legacy = decode_eth(signed(type=0))
    items = rlp.decode(legacy.raw)
    items[6] = b"\x1b"  # v = 27: no chain id
    with pytest.raises(EthTxError, match="replay-protected"):
        decode_eth(rlp.encode(items))
    with pytest.raises(EthTxError, match="transaction type not supported"):
        decode_eth(b"\x03" + signed()[1:])
    items = rlp.decode(signed()[1:])
    items[1] = b"\x00"  # nonce 0 written as one zero byte instead of the empty string
    with pytest.raises(EthTxError, match="non-canonical"):
        decode_eth(b"\x02" + rlp.encode(items))
    with pytest.raises(EthTxError, match="rlp:"):
        decode_eth(signed() + b"\x00")  # trailing bytes
    bad = bytearray(signed())
    bad[-1] ^= 0x01  # a different s: recovers some other key (or none)
    tx = decode_eth(bytes(bad))
    assert not tx.verify_signature() or tx.sender_address != bytes.fromhex(ALICE.address[2:])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"\x01", b"\x02", b"\xc0", b"\xf8", b"\x00"]), st.binary(max_size=300))
def test_random_bytes_raise_only_codec_errors(first: bytes, rest: bytes) -> None:
    try:
        tx = Transaction.decode(first + rest)
    except CodecError:
        return
    tx.verify_signature()  # never raises


def test_ledger_moves_value_both_ways_and_skips_other_chains() -> None:
    native = SigningKey(bytes(32))
    native_addr = address_of(native.public_key)
    alice = bytes.fromhex(ALICE.address[2:])
    fund = make_transfer(native, CHAIN, alice, 10**6, 1, 0)
    pay = Transaction.decode(signed(nonce=0, to=to_checksum_address("0x" + native_addr.hex())))
    other_chain = Transaction.decode(signed(nonce=1, chainId=1))
    txs = [fund, pay, other_chain]
    proposal = Proposal(1, 0, 0, tuple(t.hash for t in txs))
    block = build_block(proposal, txs, None)
    state = {native_addr: LedgerAccount(10**7, 0)}
    proposer = b"\x09" * 20
    out = execute_block(block, proposer, CHAIN, state.get, lambda d: None)
    assert [r.reason for r in out.receipts] == ["", "", "wrong_chain_id"]
    assert out.accounts[alice].balance == 10**6 - 1 - 21_000
    assert out.accounts[alice].nonce == 1
    assert out.accounts[native_addr].balance == 10**7 - 10**6 - 1 + 1
    assert out.accounts[proposer].balance == 1 + 21_000
    with pytest.raises(BlockInvalid, match="wrong_chain_id"):
        check_block_stateless(proposal, txs, CHAIN)
    check_block_stateless(Proposal(1, 0, 0, (fund.hash, pay.hash)), [fund, pay], CHAIN)


def test_mempool_checks_the_integer_chain_id() -> None:
    alice = bytes.fromhex(ALICE.address[2:])
    pool = Mempool(CHAIN, 100, 10**6, lambda a: LedgerAccount(10**6, 0) if a == alice else None)
    ok = Transaction.decode(signed())
    assert ok.verify_signature()
    pool.add(ok, ok.hash, 0.0)
    assert pool.pending_nonces(alice) == [0]
    wrong = Transaction.decode(signed(nonce=1, chainId=1))
    with pytest.raises(VigilError, match="wrong chain id"):
        pool.check(wrong, wrong.hash)


def test_claim_of_an_ethereum_tx_is_its_recovered_sender() -> None:
    """An Ethereum tx's sender is in its signature: back-pressure's read decodes it in full."""
    raw = signed(nonce=5)
    tx = Transaction.decode(raw)
    assert claim_of(raw) == Claim(tx.sender_address, 5)
    assert tx.sender_address == bytes.fromhex(ALICE.address[2:])
    assert claim_of(raw[:-3]) is None

"""Ledger execution and block validity: nonces, balances, fees, anchors, replays, chain ids."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.crypto import SigningKey, address_of
from node.chain.block import Proposal, build_block
from node.chain.genesis import Genesis, Validator
from node.chain.ledger import (
    Account,
    BlockInvalid,
    Execution,
    Receipt,
    check_block_stateless,
    check_proposal,
    execute_block,
    genesis_accounts,
)
from node.chain.tx import Transaction, make_anchor, make_transfer

CHAIN = "test-chain"
KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
ADDR = [address_of(k.public_key) for k in KEYS]
PROPOSER = KEYS[3]
PROPOSER_ADDR = ADDR[3]


class State:
    """A dict-backed world state, applying executions the way node/ commits them."""

    def __init__(self, balances: dict[bytes, int]) -> None:
        self.accounts = {a: Account(b, 0) for a, b in balances.items()}
        self.anchors: dict[bytes, bytes] = {}
        self.height = 0

    def run(self, txs: list[Transaction], proposer_address: bytes = PROPOSER_ADDR) -> Execution:
        self.height += 1
        # execution reads only the txs; the header's height does not matter here
        proposal = Proposal(1, 3, 1000 + self.height, tuple(tx.hash for tx in txs))
        block = build_block(proposal, txs, None)
        ex = execute_block(block, proposer_address, CHAIN, self.accounts.get, self.anchors.get)
        self.accounts.update(ex.accounts)
        self.anchors.update(ex.anchors)
        return ex

    def balance(self, address: bytes) -> int:
        return self.accounts.get(address, Account(0, 0)).balance

    def nonce(self, address: bytes) -> int:
        return self.accounts.get(address, Account(0, 0)).nonce

    def total(self) -> int:
        return sum(a.balance for a in self.accounts.values())


def _t(i: int, to: int, amount: int, fee: int, nonce: int, chain: str = CHAIN) -> Transaction:
    return make_transfer(KEYS[i], chain, ADDR[to], amount, fee, nonce)


def test_transfer_moves_amount_and_fee() -> None:
    s = State({ADDR[0]: 100})
    ex = s.run([_t(0, 1, 30, 2, 0)])
    assert ex.receipts == [Receipt(ex.receipts[0].tx_hash, 0, True, "")]
    assert (s.balance(ADDR[0]), s.balance(ADDR[1]), s.balance(PROPOSER_ADDR)) == (68, 30, 2)
    assert s.nonce(ADDR[0]) == 1
    assert s.nonce(ADDR[1]) == 0
    assert ex.fees == 2


def test_overspend_is_skipped_without_fee() -> None:
    s = State({ADDR[0]: 100})
    ex = s.run([_t(0, 1, 99, 2, 0), _t(0, 1, 98, 2, 0)])
    assert [(r.ok, r.reason) for r in ex.receipts] == [
        (False, "insufficient_balance"),
        (True, ""),
    ]
    assert (s.balance(ADDR[0]), s.balance(ADDR[1]), s.balance(PROPOSER_ADDR)) == (0, 98, 2)
    assert s.nonce(ADDR[0]) == 1


def test_exact_balance_is_enough_and_empty_account_cannot_pay_fee() -> None:
    s = State({ADDR[0]: 10})
    ex = s.run([_t(0, 1, 9, 1, 0), _t(2, 1, 0, 1, 0)])
    assert [r.reason for r in ex.receipts] == ["", "insufficient_balance"]
    assert s.balance(ADDR[0]) == 0


def test_wrong_nonce_is_skipped() -> None:
    s = State({ADDR[0]: 100})
    ex = s.run([_t(0, 1, 1, 1, 1), _t(0, 1, 1, 1, 0), _t(0, 1, 1, 1, 0), _t(0, 1, 1, 1, 1)])
    assert [r.reason for r in ex.receipts] == ["bad_nonce", "", "bad_nonce", ""]
    assert s.nonce(ADDR[0]) == 2
    assert s.balance(ADDR[0]) == 96


def test_replay_never_executes_twice() -> None:
    s = State({ADDR[0]: 100})
    tx = _t(0, 1, 10, 1, 0)
    s.run([tx])
    ex = s.run([tx])
    assert ex.receipts[0].reason == "bad_nonce"
    assert s.balance(ADDR[1]) == 10
    # and a proposal carrying an already committed hash is invalid before execution
    proposal = Proposal(3, 0, 0, (tx.hash,))
    with pytest.raises(BlockInvalid) as err:
        check_block_stateless(proposal, [tx], CHAIN, is_committed={tx.hash}.__contains__)
    assert err.value.reason == "replay"


def test_wrong_chain_id() -> None:
    tx = _t(0, 1, 10, 1, 0, chain="other-chain")
    proposal = Proposal(1, 0, 0, (tx.hash,))
    with pytest.raises(BlockInvalid) as err:
        check_block_stateless(proposal, [tx], CHAIN)
    assert err.value.reason == "wrong_chain_id"
    s = State({ADDR[0]: 100})
    ex = s.run([tx])
    assert ex.receipts[0].reason == "wrong_chain_id"
    assert s.balance(ADDR[0]) == 100
    assert ex.fees == 0


def test_fees_go_to_the_proposer_after_the_block() -> None:
    s = State({ADDR[0]: 100, ADDR[1]: 50})
    ex = s.run([_t(0, 1, 10, 3, 0), _t(1, 0, 5, 4, 0), _t(1, 0, 500, 4, 1)])
    assert ex.fees == 7
    assert s.balance(PROPOSER_ADDR) == 7
    assert s.total() == 150


def test_proposer_paying_fees_cannot_spend_them_in_the_same_block() -> None:
    s = State({})
    s.accounts[PROPOSER_ADDR] = Account(1, 0)
    s.accounts[ADDR[0]] = Account(100, 0)
    ex = s.run([_t(0, 1, 10, 5, 0), _t(3, 1, 3, 0, 0)])
    assert [r.reason for r in ex.receipts] == ["", "insufficient_balance"]
    assert s.balance(PROPOSER_ADDR) == 6


def test_self_transfer_pays_only_the_fee() -> None:
    s = State({ADDR[0]: 100})
    s.run([_t(0, 0, 60, 1, 0)])
    assert s.balance(ADDR[0]) == 99
    assert s.nonce(ADDR[0]) == 1


def test_anchor_first_wins() -> None:
    s = State({ADDR[0]: 100, ADDR[1]: 100})
    digest = b"\x42" * 32
    a1 = make_anchor(KEYS[0], CHAIN, digest, b"first", 1, 0)
    a2 = make_anchor(KEYS[1], CHAIN, digest, b"second", 1, 0)
    ex = s.run([a1, a2])
    assert [r.ok for r in ex.receipts] == [True, True]
    assert ex.anchors == {digest: a1.hash}
    a3 = make_anchor(KEYS[1], CHAIN, digest, b"third", 1, 1)
    ex = s.run([a3])
    assert ex.receipts[0].ok
    assert ex.anchors == {}
    assert s.anchors[digest] == a1.hash
    assert s.balance(ADDR[1]) == 98
    assert s.balance(PROPOSER_ADDR) == 3


def test_failed_anchor_does_not_record() -> None:
    s = State({})
    a = make_anchor(KEYS[0], CHAIN, b"\x01" * 32, b"", 1, 0)
    ex = s.run([a])
    assert ex.receipts[0].reason == "insufficient_balance"
    assert ex.anchors == {}


@given(
    st.lists(
        st.tuples(
            st.integers(0, 3), st.integers(0, 3), st.integers(0, 60), st.integers(0, 5),
            st.integers(0, 3), st.booleans(),
        ),
        max_size=25,
    )
)  # fmt: skip
@settings(max_examples=40, deadline=None)
def test_money_is_conserved(ops: list[tuple[int, int, int, int, int, bool]]) -> None:
    s = State({ADDR[0]: 100, ADDR[1]: 50, ADDR[2]: 7})
    txs = []
    for sender, to, amount, fee, nonce_delta, anchor in ops:
        nonce = max(0, s.nonce(ADDR[sender]) + nonce_delta - 1)
        if anchor:
            txs.append(make_anchor(KEYS[sender], CHAIN, bytes([to]) * 32, b"", fee, nonce))
        else:
            txs.append(_t(sender, to, amount, fee, nonce))
    unique = list({tx.hash: tx for tx in txs}.values())
    ex = s.run(unique)
    assert s.total() == 157
    assert all(a.balance >= 0 for a in s.accounts.values())
    assert ex.fees == sum(tx.fee for tx, r in zip(unique, ex.receipts, strict=True) if r.ok)
    assert len(ex.receipts) == len(unique)


def test_check_proposal_rules() -> None:
    tx = _t(0, 1, 1, 1, 0)
    good = Proposal(5, 1, 10, (tx.hash,))
    assert check_proposal(good.encode(), 5, 1, 10) == good
    cases = [
        (b"\x00", 5, 1, 10, "bad_payload"),
        (good.encode(), 6, 1, 10, "wrong_height"),
        (good.encode(), 5, 2, 10, "wrong_proposer"),
        (Proposal(5, 1, 10, (tx.hash, tx.hash)).encode(), 5, 1, 10, "duplicate_tx"),
        (good.encode(), 5, 1, 0, "too_many_txs"),
    ]
    for payload, seq, primary, limit, reason in cases:
        with pytest.raises(BlockInvalid) as err:
            check_proposal(payload, seq, primary, limit)
        assert err.value.reason == reason


def test_check_block_stateless_rules() -> None:
    tx = _t(0, 1, 1, 1, 0)
    other = _t(0, 1, 1, 1, 1)
    proposal = Proposal(1, 0, 0, (tx.hash,))
    check_block_stateless(proposal, [tx], CHAIN, is_committed=lambda h: False)
    forged = dataclasses.replace(tx, signature=bytes(64))
    cases: list[tuple[list[Transaction | None], Proposal, str]] = [
        ([None], proposal, "missing_tx"),
        ([], proposal, "missing_tx"),
        ([other], proposal, "tx_mismatch"),
        ([forged], Proposal(1, 0, 0, (forged.hash,)), "bad_signature"),
    ]
    for txs, prop, reason in cases:
        with pytest.raises(BlockInvalid) as err:
            check_block_stateless(prop, txs, CHAIN)
        assert err.value.reason == reason


def test_genesis_accounts_and_codecs() -> None:
    g = Genesis(
        CHAIN,
        (Validator(0, KEYS[0].public_key),),
        tuple(sorted([(ADDR[0], 5), (ADDR[1], 7)])),
        0,
    )
    accounts = genesis_accounts(g)
    assert accounts == {ADDR[0]: Account(5, 0), ADDR[1]: Account(7, 0)}
    acct = Account(2**64 - 1, 3)
    assert Account.decode(acct.encode()) == acct
    r = Receipt(b"\x01" * 32, 4, False, "bad_nonce")
    assert Receipt.decode(r.encode()) == r
    assert r.status == "rejected"

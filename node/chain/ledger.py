"""Deterministic execution of committed blocks, and the stateless validity rules for proposals.

Pure: no I/O. State is read through callbacks so the caller decides where it lives (LevelDB, a
dict in tests). Rules, from docs/architecture.md and docs/transactions.md:

* A proposed block is *invalid* (never voted for) when its payload does not decode, height !=
  seq, proposer != primary, it has too many or duplicate tx hashes, any tx is missing, mismatched,
  badly signed or for another chain, or a tx hash is already committed (``check_*`` below).
* Inside a committed block each tx runs in order against the state the previous ones left: the
  nonce must equal the account nonce and the balance must cover amount + fee. A tx failing these
  is *skipped*: no state change, no fee, receipt ``ok=False`` with the reason.
* Fees of executed txs are credited to the proposer after the block's txs have run.
* An anchor records digest -> tx hash only for the first committed anchor of that digest; later
  ones still execute (nonce and fee) but do not overwrite it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from common import codec
from common.codec import CodecError
from node.chain.block import Block, Proposal
from node.chain.genesis import Genesis
from node.chain.tx import Transaction

# Receipt reasons (stable strings: metrics labels and RPC output use them).
OK = ""
BAD_NONCE = "bad_nonce"
INSUFFICIENT_BALANCE = "insufficient_balance"
WRONG_CHAIN_ID = "wrong_chain_id"

_ACCOUNT = codec.struct({"balance": codec.uint(), "nonce": codec.uint()})


def _bool(v: Any, name: str) -> bool:
    if not isinstance(v, bool):
        raise CodecError(f"{name}: expected bool")
    return v


_RECEIPT = codec.struct(
    {"tx_hash": codec.raw(32), "index": codec.uint(), "ok": _bool, "reason": codec.text(64)}
)


@dataclass(frozen=True, slots=True)
class Account:
    balance: int
    nonce: int  # the nonce the account's next transaction must carry

    def encode(self) -> bytes:
        return codec.encode_flat({"balance": self.balance, "nonce": self.nonce})

    @staticmethod
    def decode(data: bytes) -> Account:
        m = codec.decode_struct(data, _ACCOUNT, 64)
        return Account(m["balance"], m["nonce"])


EMPTY_ACCOUNT = Account(0, 0)


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: bytes
    index: int  # position in the block
    ok: bool
    reason: str  # "" when ok

    def encode(self) -> bytes:
        return codec.encode_flat(
            {"tx_hash": self.tx_hash, "index": self.index, "ok": self.ok, "reason": self.reason}
        )

    @staticmethod
    def decode(data: bytes) -> Receipt:
        m = codec.decode_struct(data, _RECEIPT, 256)
        return Receipt(m["tx_hash"], m["index"], m["ok"], m["reason"])

    @property
    def status(self) -> str:
        """The RPC status of a committed tx: ``committed`` or ``rejected``."""
        return "committed" if self.ok else "rejected"


@dataclass
class Execution:
    """What executing one block changed. Only touched accounts, only new anchors."""

    accounts: dict[bytes, Account] = field(default_factory=dict)
    anchors: dict[bytes, bytes] = field(default_factory=dict)  # digest -> tx hash
    receipts: list[Receipt] = field(default_factory=list)
    fees: int = 0

    @property
    def executed(self) -> int:
        return sum(1 for r in self.receipts if r.ok)


def genesis_accounts(genesis: Genesis) -> dict[bytes, Account]:
    return {address: Account(amount, 0) for address, amount in genesis.balances}


def execute_block(
    block: Block,
    proposer_address: bytes,
    chain_id: str,
    read_account: Callable[[bytes], Account | None],
    read_anchor: Callable[[bytes], bytes | None],
) -> Execution:
    """Run ``block``'s transactions in order; deterministic for the same state and block."""
    out = Execution()

    def account(address: bytes) -> Account:
        if address in out.accounts:
            return out.accounts[address]
        return read_account(address) or EMPTY_ACCOUNT

    for index, tx in enumerate(block.txs):
        tx_hash = tx.hash
        reason = _apply(tx, tx_hash, chain_id, account, read_anchor, out)
        out.receipts.append(Receipt(tx_hash, index, reason == OK, reason))
    if out.fees:
        proposer = account(proposer_address)
        out.accounts[proposer_address] = Account(proposer.balance + out.fees, proposer.nonce)
    return out


def _apply(
    tx: Transaction,
    tx_hash: bytes,
    chain_id: str,
    account: Callable[[bytes], Account],
    read_anchor: Callable[[bytes], bytes | None],
    out: Execution,
) -> str:
    # Stateless checks already rejected such a block; kept so execution alone never
    # moves money on another chain's transaction.
    if not tx.for_chain(chain_id):
        return WRONG_CHAIN_ID
    sender_address = tx.sender_address
    sender = account(sender_address)
    if tx.nonce != sender.nonce:
        return BAD_NONCE
    if tx.amount + tx.fee > sender.balance:
        return INSUFFICIENT_BALANCE
    out.accounts[sender_address] = Account(sender.balance - tx.amount - tx.fee, sender.nonce + 1)
    if tx.kind == "transfer":
        recipient = account(tx.to)  # after the debit, so a self-transfer only pays the fee
        out.accounts[tx.to] = Account(recipient.balance + tx.amount, recipient.nonce)
    elif tx.digest not in out.anchors and read_anchor(tx.digest) is None:
        out.anchors[tx.digest] = tx_hash
    out.fees += tx.fee
    return OK


# --- stateless validity of a proposed block --------------------------------------------------


class BlockInvalid(ValueError):
    """A proposed block that must not be voted for; ``reason`` is a stable short string."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def check_proposal(payload: bytes, seq: int, primary: int, block_txs_max: int) -> Proposal:
    """Decode a payload and check the rules that need neither transactions nor state."""
    try:
        proposal = Proposal.decode(payload)
    except CodecError as exc:
        raise BlockInvalid("bad_payload", exc.reason) from None
    if proposal.height != seq:
        raise BlockInvalid("wrong_height", f"height {proposal.height} at seq {seq}")
    if proposal.proposer != primary:
        raise BlockInvalid("wrong_proposer", f"proposer {proposal.proposer}, primary {primary}")
    if len(proposal.tx_hashes) > block_txs_max:
        raise BlockInvalid("too_many_txs", f"{len(proposal.tx_hashes)} > {block_txs_max}")
    if len(set(proposal.tx_hashes)) != len(proposal.tx_hashes):
        raise BlockInvalid("duplicate_tx")
    return proposal


def check_block_stateless(
    proposal: Proposal,
    txs: Sequence[Transaction | None],
    chain_id: str,
    is_committed: Callable[[bytes], bool] | None = None,
    verify_signatures: bool = True,
) -> None:
    """Check a proposal's resolved transactions (None = unknown); raises BlockInvalid.

    ``is_committed`` tells whether a tx hash is already in the chain (replay). Signature checks
    can be skipped by a caller that verified these exact transactions before (e.g. on admission).
    """
    if len(txs) != len(proposal.tx_hashes):
        raise BlockInvalid("missing_tx", "transaction list does not match the proposal")
    for expected, tx in zip(proposal.tx_hashes, txs, strict=True):
        if tx is None:
            raise BlockInvalid("missing_tx", "0x" + expected.hex())
        if tx.hash != expected:
            raise BlockInvalid("tx_mismatch", "0x" + expected.hex())
        if not tx.for_chain(chain_id):
            raise BlockInvalid("wrong_chain_id", "0x" + expected.hex())
        if verify_signatures and not tx.verify_signature():
            raise BlockInvalid("bad_signature", "0x" + expected.hex())
        if is_committed is not None and is_committed(expected):
            raise BlockInvalid("replay", "0x" + expected.hex())

"""The fast paths of issue 14 give exactly what the slow ones give."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from common import codec
from common.crypto import SigningKey
from node.chain.tx import Transaction, make_anchor, make_transfer
from node.tools.bench_stages import stage_of, stage_samples

KEY = SigningKey(b"\x07" * 32)


@settings(max_examples=200, deadline=None)
@given(
    st.booleans(),
    st.binary(min_size=20, max_size=20),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=128),
)
def test_spliced_signing_bytes_equal_encoded(
    transfer: bool, to: bytes, amount: int, fee: int, nonce: int, memo: bytes
) -> None:
    if transfer:
        tx = make_transfer(KEY, "vigil-local", to, amount, fee, nonce)
    else:
        tx = make_anchor(KEY, "vigil-local", b"\x01" * 32, memo, fee, nonce)
    decoded = Transaction.decode(tx.encode())
    assert decoded._spliced_signing_bytes() == codec.encode(decoded._unsigned_map())
    assert decoded.verify_signature()


def test_memo_holding_a_signature_entry_is_not_cut() -> None:
    """A memo cannot fool the splice: the signature entry's place is fixed by key order."""
    fake = b"\xa9signature\xc4\x40" + b"\x00" * 53
    tx = make_anchor(KEY, "vigil-local", b"\x02" * 32, fake, 1, 0)
    decoded = Transaction.decode(tx.encode())
    assert decoded.signing_bytes() == codec.encode(decoded._unsigned_map())


def test_schema_decode_refuses_what_the_tree_check_refused() -> None:
    tx = make_transfer(KEY, "vigil-local", b"\x03" * 20, 5, 1, 0)
    m = codec.decode(tx.encode())
    for field, value in (("amount", 1.5), ("fee", -1), ("nonce", [1]), ("to", {"a": 1})):
        bad = dict(m)
        bad[field] = value
        raw = codec._ENCODER.encode(bad)
        try:
            Transaction.decode(raw)
        except codec.CodecError:
            continue
        raise AssertionError(f"{field}={value!r} accepted")


def test_stage_mapping_prefers_the_most_specific_stage() -> None:
    reads = [
        "_run (asyncio/events.py:80)",
        "NodeServiceImpl._block (node/host/service_impl.py:88)",
        "Chain.get_block (node/chain/chain.py:110)",
        "Transaction.decode (node/chain/tx.py:160)",
    ]
    assert stage_of(reads) == "reads"
    verify = ["_worker (concurrent/futures/thread.py:83)", "verify_raw (common/crypto.py:80)"]
    assert stage_of(verify) == "verify"
    idle = ["run_forever (asyncio/base_events.py:1)", "EpollSelector.select (selectors.py:468)"]
    assert stage_of(idle) == "idle"
    assert stage_samples([";".join(verify) + " 3", ";".join(idle) + " 2"]) == {
        "verify": 3,
        "idle": 2,
    }

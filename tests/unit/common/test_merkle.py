"""Merkle roots and proofs: every index of trees 1..33 verifies; any tampering fails."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.merkle import EMPTY_ROOT, leaf_hash, merkle_proof, merkle_root, node_hash, verify_proof


def _leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]


def test_empty_single_and_pair() -> None:
    a, b, c = _leaves(3)
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert merkle_root([a]) == hashlib.sha256(b"\x00" + a).digest()
    assert merkle_root([a, b]) == hashlib.sha256(b"\x01" + leaf_hash(a) + leaf_hash(b)).digest()
    # odd level: the last node is promoted, not duplicated
    assert merkle_root([a, b, c]) == node_hash(node_hash(leaf_hash(a), leaf_hash(b)), leaf_hash(c))
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])


@pytest.mark.parametrize("size", range(1, 34))
def test_every_index_verifies_and_tampering_fails(size: int) -> None:
    leaves = _leaves(size)
    root = merkle_root(leaves)
    for index, leaf in enumerate(leaves):
        branch = merkle_proof(leaves, index)
        assert verify_proof(leaf, index, branch, root, size)
        assert not verify_proof(b"\x00" * 32, index, branch, root, size)
        assert not verify_proof(leaf, index, branch, b"\x00" * 32, size)
        if size > 1:
            assert not verify_proof(leaf, (index + 1) % size, branch, root, size)
            assert not verify_proof(leaf, index, branch[:-1], root, size)
            assert not verify_proof(leaf, index, [*branch, b"\x00" * 32], root, size)
            for k in range(len(branch)):
                bad = list(branch)
                bad[k] = bytes([bad[k][0] ^ 1]) + bad[k][1:]
                assert not verify_proof(leaf, index, bad, root, size)
        assert not verify_proof(leaf, size, branch, root, size)
        assert not verify_proof(leaf, -1, branch, root, size)


def test_proof_index_out_of_range() -> None:
    with pytest.raises(IndexError):
        merkle_proof(_leaves(3), 3)
    with pytest.raises(IndexError):
        merkle_proof([], 0)


def test_verify_is_total_on_garbage() -> None:
    leaf = _leaves(1)[0]
    assert not verify_proof(leaf, 0, ["zz"], merkle_root([leaf]), 2)  # type: ignore[list-item]
    assert not verify_proof(leaf, 0, [b"short"], merkle_root([leaf]), 2)
    assert not verify_proof(leaf, 0, [], merkle_root([leaf]), 0)
    assert not verify_proof(leaf, True, [], merkle_root([leaf]), 1)


@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40), st.data())
def test_random_trees(leaves: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(leaves) - 1))
    root = merkle_root(leaves)
    assert verify_proof(leaves[index], index, merkle_proof(leaves, index), root, len(leaves))


@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=12, unique=True))
def test_root_depends_on_order_and_content(leaves: list[bytes]) -> None:
    if len(leaves) > 1:
        assert merkle_root(leaves) != merkle_root(list(reversed(leaves)))
    assert merkle_root(leaves) != merkle_root(leaves[:-1])

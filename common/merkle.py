"""Binary Merkle tree over a block's transaction hashes, with inclusion proofs a client can check.

Hashing is domain separated so a leaf can never be passed off as an inner node (the second
preimage trick against naive trees):

    leaf hash  = SHA-256(0x00 || leaf)          (a leaf is a 32-byte tx hash)
    inner node = SHA-256(0x01 || left || right)

Levels are built left to right. When a level has an odd number of nodes, the last node is
*promoted* unchanged to the next level (it is not duplicated, so two different leaf lists never
share a root the way Bitcoin's duplicate-last rule allows). Because of promotion, verifying a
proof needs the tree size. The root of the empty tree is SHA-256 of the empty string.

A proof (``branch``) lists the sibling hashes from the leaf level upwards, skipping the levels
where the node on the path was promoted and so had no sibling.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(_LEAF + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _next_level(level: list[bytes]) -> list[bytes]:
    out = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        out.append(level[-1])  # promoted, see the module docstring
    return out


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The root over ``leaves`` in order; ``EMPTY_ROOT`` for no leaves."""
    if not leaves:
        return EMPTY_ROOT
    level = [leaf_hash(x) for x in leaves]
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def merkle_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Sibling hashes, bottom-up, proving ``leaves[index]`` is under ``merkle_root(leaves)``."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} outside a tree of {len(leaves)}")
    level = [leaf_hash(x) for x in leaves]
    branch: list[bytes] = []
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            branch.append(level[sibling])
        level = _next_level(level)
        index //= 2
    return branch


def verify_proof(leaf: bytes, index: int, branch: Sequence[bytes], root: bytes, size: int) -> bool:
    """True when ``branch`` proves ``leaf`` sits at ``index`` of a ``size``-leaf tree with ``root``.

    Standalone (no tree needed) and total: malformed input gives False, never an exception.
    """
    if not isinstance(index, int) or not isinstance(size, int) or isinstance(index, bool):
        return False
    if not 0 <= index < size or not isinstance(leaf, bytes) or not isinstance(root, bytes):
        return False
    if any(not isinstance(s, bytes) or len(s) != HASH_BYTES for s in branch):
        return False
    current = leaf_hash(leaf)
    used = 0
    width = size
    while width > 1:
        if index % 2 == 1:
            if used >= len(branch):
                return False
            current = node_hash(branch[used], current)
            used += 1
        elif index + 1 < width:
            if used >= len(branch):
                return False
            current = node_hash(current, branch[used])
            used += 1
        # else: the last node of an odd level is promoted without a sibling
        index //= 2
        width = (width + 1) // 2
    return used == len(branch) and current == root

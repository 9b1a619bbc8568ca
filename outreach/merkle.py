"""RFC 6962 / RFC 9162 Merkle tree hashing over leaf byte strings.

Why a Merkle tree at all: every case has its own hash chain, and its head changes with each
event. Time-stamping every head separately would cost one TSA round trip per case; instead the
heads are the leaves of one tree, only the root is time-stamped, and each case's evidence
bundle carries an O(log n) inclusion proof that ties its head to that root, without revealing
any other case's head.

Why RFC 6962 exactly (and not an ad-hoc tree): the construction is public, has published test
vectors (providers.md §9.6, from ``transparency-dev/merkle``), and a third party can re-check a
proof with any CT library. The 0x00/0x01 domain-separation prefixes stop an interior node from
being passed off as a leaf (second-preimage attacks); an odd node is promoted, never duplicated,
so no two different leaf lists share a root.

Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = [
    "HASH_SIZE",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_inclusion",
]

HASH_SIZE = 32
"""SHA-256 output size: every node hash and every proof element has this length."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one leaf (RFC 9162 §2.1.1)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node (RFC 9162 §2.1.1)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``): the RFC's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree_root(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH over the leaf hashes ``hashes[lo:hi]`` (``hi > lo``), without copying slices."""
    n = hi - lo
    if n == 1:
        return hashes[lo]
    k = _split(n)
    return node_hash(_subtree_root(hashes, lo, lo + k), _subtree_root(hashes, lo + k, hi))


def root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of ``leaves`` (leaf data, not leaf hashes).

    The empty tree hashes to ``SHA-256("")`` as RFC 9162 §2.1.1 prescribes, so an anchoring
    run with no cases still produces a well-defined, verifiable root.
    """
    if not leaves:
        return hashlib.sha256(b"").digest()
    hashes = [leaf_hash(leaf) for leaf in leaves]
    return _subtree_root(hashes, 0, len(hashes))


def _path(hashes: Sequence[bytes], index: int, lo: int, hi: int) -> list[bytes]:
    """PATH(m, D[lo:hi]) of RFC 9162 §2.1.3.1, ``index`` relative to ``lo``, leaf to root."""
    n = hi - lo
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*_path(hashes, index, lo, lo + k), _subtree_root(hashes, lo + k, hi)]
    return [*_path(hashes, index - k, lo + k, hi), _subtree_root(hashes, lo, lo + k)]


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path for ``leaves[index]``: sibling hashes ordered from the leaf up.

    Raises ``IndexError`` for an index outside the tree, because a proof for a leaf that is
    not there must never be produced silently.
    """
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} outside a tree of size {len(leaves)}")
    hashes = [leaf_hash(leaf) for leaf in leaves]
    return _path(hashes, index, 0, len(hashes))


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Check that ``leaf`` (leaf data) is leaf ``index`` of the tree of ``size`` with ``root``.

    This is the algorithm of RFC 9162 §2.1.3.2, step for step, so that it can be compared with
    the RFC by a reader of the evidence. It needs nothing but the proof: not the other leaves,
    which belong to other cases. Returns ``False`` (never raises) on any malformed input, since
    a verifier's answer to garbage is "not proven".
    """
    if not 0 <= index < size:
        return False
    if len(root) != HASH_SIZE or any(len(p) != HASH_SIZE for p in proof):
        return False
    fn, sn = index, size - 1
    r = leaf_hash(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, root)

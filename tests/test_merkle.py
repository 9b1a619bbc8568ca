"""RFC 6962 Merkle tree: published vectors, then properties over arbitrary trees.

The vectors (providers.md §9.6, from transparency-dev/merkle ``testonly/constants.go``) pin
the exact hashing, so a root computed here can be re-checked by any CT implementation; the
property tests cover sizes and positions the vectors do not (odd sizes, last leaf, big trees).
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outreach import merkle

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]

ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

PROOFS_SIZE_8 = {
    0: [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    5: [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}


@pytest.mark.parametrize("size", range(9))
def test_root_matches_rfc6962_vector(size: int) -> None:
    assert merkle.root(LEAVES[:size]).hex() == ROOTS[size]


def test_empty_tree_is_sha256_of_nothing() -> None:
    assert merkle.root([]) == hashlib.sha256(b"").digest()


def test_single_leaf_root_is_its_leaf_hash() -> None:
    assert merkle.root([b""]) == merkle.leaf_hash(b"") == hashlib.sha256(b"\x00").digest()


@pytest.mark.parametrize("index", sorted(PROOFS_SIZE_8))
def test_inclusion_proof_matches_rfc6962_vector(index: int) -> None:
    proof = merkle.inclusion_proof(LEAVES, index)
    assert [p.hex() for p in proof] == PROOFS_SIZE_8[index]
    root = bytes.fromhex(ROOTS[8])
    assert merkle.verify_inclusion(LEAVES[index], index, 8, proof, root)


@pytest.mark.parametrize("index", sorted(PROOFS_SIZE_8))
def test_vector_proof_fails_for_wrong_index_size_or_leaf(index: int) -> None:
    proof = [bytes.fromhex(h) for h in PROOFS_SIZE_8[index]]
    root = bytes.fromhex(ROOTS[8])
    assert not merkle.verify_inclusion(LEAVES[index], index ^ 1, 8, proof, root)
    # Sizes 5..8 give the same path shape for these leaves: the path alone does not pin the
    # size (the root does), so only sizes that change the shape are wrong here.
    assert not merkle.verify_inclusion(LEAVES[index], index, 4 + index, proof, root)
    assert not merkle.verify_inclusion(LEAVES[index], index, 9, proof, root)
    assert not merkle.verify_inclusion(LEAVES[index] + b"x", index, 8, proof, root)
    assert not merkle.verify_inclusion(LEAVES[index], index, 8, proof[:-1], root)
    assert not merkle.verify_inclusion(LEAVES[index], index, 8, [*proof, proof[0]], root)


def test_inclusion_proof_rejects_index_outside_tree() -> None:
    with pytest.raises(IndexError):
        merkle.inclusion_proof(LEAVES, 8)
    with pytest.raises(IndexError):
        merkle.inclusion_proof(LEAVES, -1)
    with pytest.raises(IndexError):
        merkle.inclusion_proof([], 0)


def test_verify_rejects_malformed_input_without_raising() -> None:
    root = bytes.fromhex(ROOTS[8])
    proof = [bytes.fromhex(h) for h in PROOFS_SIZE_8[0]]
    assert not merkle.verify_inclusion(LEAVES[0], 0, 0, [], root)
    assert not merkle.verify_inclusion(LEAVES[0], 8, 8, proof, root)
    assert not merkle.verify_inclusion(LEAVES[0], -1, 8, proof, root)
    assert not merkle.verify_inclusion(LEAVES[0], 0, 8, [p[:31] for p in proof], root)
    assert not merkle.verify_inclusion(LEAVES[0], 0, 8, proof, root[:31])


def test_leaf_cannot_pose_as_interior_node() -> None:
    # Second-preimage guard: the concatenation of two leaf hashes, presented as one leaf,
    # must not hash to the 2-leaf root.
    a, b = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    two = merkle.root([b"a", b"b"])
    assert merkle.root([a + b]) != two
    assert not merkle.verify_inclusion(a + b, 0, 1, [], two)


# --- properties ---------------------------------------------------------------------------

leaf_lists = st.lists(st.binary(max_size=40), min_size=1, max_size=70)


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[list[bytes], int]:
    leaves = draw(leaf_lists)
    return leaves, draw(st.integers(0, len(leaves) - 1))


@given(tree_and_index())
def test_every_inclusion_proof_verifies(case: tuple[list[bytes], int]) -> None:
    leaves, index = case
    proof = merkle.inclusion_proof(leaves, index)
    assert len(proof) <= max(1, len(leaves) - 1).bit_length()
    assert merkle.verify_inclusion(leaves[index], index, len(leaves), proof, merkle.root(leaves))


def _flip(data: bytes, bit: int) -> bytes:
    buf = bytearray(data)
    buf[bit // 8] ^= 1 << (bit % 8)
    return bytes(buf)


@given(tree_and_index(), st.data())
def test_flipping_any_bit_breaks_the_proof(
    case: tuple[list[bytes], int], data: st.DataObject
) -> None:
    leaves, index = case
    size = len(leaves)
    proof = merkle.inclusion_proof(leaves, index)
    tree_root = merkle.root(leaves)
    leaf = leaves[index]

    if leaf:
        bit = data.draw(st.integers(0, len(leaf) * 8 - 1), label="leaf bit")
        assert not merkle.verify_inclusion(_flip(leaf, bit), index, size, proof, tree_root)

    bit = data.draw(st.integers(0, merkle.HASH_SIZE * 8 - 1), label="root bit")
    assert not merkle.verify_inclusion(leaf, index, size, proof, _flip(tree_root, bit))

    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="proof element")
        bit = data.draw(st.integers(0, merkle.HASH_SIZE * 8 - 1), label="proof bit")
        tampered = [*proof[:i], _flip(proof[i], bit), *proof[i + 1 :]]
        assert not merkle.verify_inclusion(leaf, index, size, tampered, tree_root)


@given(st.lists(st.binary(max_size=40), min_size=2, max_size=70, unique=True), st.data())
def test_proof_does_not_verify_at_another_position(
    leaves: list[bytes], data: st.DataObject
) -> None:
    # Distinct leaves: with duplicates, [x, x] legitimately proves x at both positions.
    index = data.draw(st.integers(0, len(leaves) - 1))
    other = data.draw(st.integers(0, len(leaves) - 1).filter(lambda i: i != index))
    proof = merkle.inclusion_proof(leaves, index)
    tree_root = merkle.root(leaves)
    assert not merkle.verify_inclusion(leaves[index], other, len(leaves), proof, tree_root)

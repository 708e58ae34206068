"""RFC 9162 trees and proofs: published vectors, properties, and every malformed proof."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infrafabric.witness.merkle import (
    EMPTY_ROOT,
    LeafHashes,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    range_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# The Certificate Transparency test vectors (RFC 6962; as published in
# transparency-dev/merkle testonly/constants.go and proof/verify_test.go).
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
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
NODES = {  # (level, index): hash of every complete subtree of the 8-leaf tree
    (0, 1): "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    (0, 5): "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    (0, 7): "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    (1, 1): "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    (1, 2): "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    (1, 3): "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    (2, 1): "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    (3, 0): "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}
H = {
    name: bytes.fromhex(value)
    for name, value in {
        "96a2": "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f08": "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47": "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        "bc1a": "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca85": "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37e": "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "fac5": "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "6e34": "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "0ebc": "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "b086": "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    }.items()
}
INCLUSION = [  # (index, size, proof)
    (0, 1, []),
    (0, 8, ["96a2", "5f08", "6b47"]),
    (5, 8, ["bc1a", "ca85", "d37e"]),
    (2, 3, ["fac5"]),
    (1, 5, ["6e34", "5f08", "bc1a"]),
]
CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, ["96a2", "5f08", "6b47"]),
    (6, 8, ["0ebc", "ca85", "d37e"]),
    (2, 5, ["5f08", "bc1a"]),
    (6, 7, ["0ebc", "b086", "d37e"]),
]
LEAF_HASHES = [leaf_hash(entry) for entry in LEAVES]


def test_the_published_roots_and_subtree_hashes() -> None:
    assert ROOTS[0] == EMPTY_ROOT
    for size in range(9):
        assert root(LEAF_HASHES[:size]) == ROOTS[size], size
    nodes = LeafHashes(LEAF_HASHES)
    for (level, index), expected in NODES.items():
        assert nodes.perfect(level, index).hex() == expected


@pytest.mark.parametrize(("index", "size", "names"), INCLUSION)
def test_the_published_inclusion_proofs(index: int, size: int, names: list[str]) -> None:
    proof = [H[name] for name in names]
    assert inclusion_proof(index, size, LEAF_HASHES) == proof
    verify_inclusion(LEAF_HASHES[index], index, size, proof, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "names"), CONSISTENCY)
def test_the_published_consistency_proofs(old: int, new: int, names: list[str]) -> None:
    proof = [H[name] for name in names]
    assert consistency_proof(old, new, LEAF_HASHES) == proof
    verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


def _refused(check: Any, *arguments: Any) -> None:
    with pytest.raises(ProofError):
        check(*arguments)


def test_malformed_inclusion_proofs_are_refused_with_a_proof_error() -> None:
    index, size, proof = 5, 8, [H[n] for n in ("bc1a", "ca85", "d37e")]
    leaf, good_root = LEAF_HASHES[5], ROOTS[8]
    cases = [
        (index - 1, size, leaf, proof, good_root),
        (index + 1, size, leaf, proof, good_root),
        (index ^ 2, size, leaf, proof, good_root),
        (index, size * 2, leaf, proof, good_root),
        (index, size // 2, leaf, proof, good_root),
        (index, size, b"WrongLeaf", proof, good_root),
        (index, size, leaf, proof, EMPTY_ROOT),
        (index, size, leaf, [*proof, b""], good_root),
        (index, size, leaf, [*proof, good_root], good_root),
        (index, size, leaf, [b"", *proof], good_root),
        (index, size, leaf, [good_root, *proof], good_root),
        (index, size, leaf, proof[:-1], good_root),
        (index, size, leaf, [proof[0], EMPTY_ROOT, *proof[1:]], good_root),
        (index, size, leaf, b"".join(proof), good_root),  # not a list
        (index, size, leaf, [*proof, *proof] * 11, good_root),  # longer than any tree
        (-1, size, leaf, proof, good_root),
        (8, 8, leaf, proof, good_root),
        (0, 0, leaf, [], EMPTY_ROOT),
        (index, 2**63, leaf, proof, good_root),
        (index, size, leaf, [None, *proof[1:]], good_root),
        (index, size, "not bytes", proof, good_root),
        # numbers of the wrong type, as a bundle's JSON may hold them
        (None, size, leaf, proof, good_root),
        (str(index), size, leaf, proof, good_root),
        (float(index), size, leaf, proof, good_root),
        (index, None, leaf, proof, good_root),
        (index, "8", leaf, proof, good_root),
        (index, 8.0, leaf, proof, good_root),
        # leaf 1 of 5 with its published proof, but index `true`: not a number here
        (True, 5, LEAF_HASHES[1], [H[n] for n in ("6e34", "5f08", "bc1a")], ROOTS[5]),
    ]
    verify_inclusion(leaf, index, size, proof, good_root)  # the case each one spoils
    for case_index, case_size, case_leaf, case_proof, case_root in cases:
        _refused(verify_inclusion, case_leaf, case_index, case_size, case_proof, case_root)


def test_malformed_consistency_proofs_are_refused_with_a_proof_error() -> None:
    old, new, proof = 6, 8, [H[n] for n in ("0ebc", "ca85", "d37e")]
    r1, r2 = ROOTS[6], ROOTS[8]
    cases = [
        (old - 1, new, r1, r2, proof),
        (old + 1, new, r1, r2, proof),
        (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof),
        (old, new // 2, r1, r2, proof),
        (old, new, b"WrongRoot", r2, proof),
        (old, new, r1, b"WrongRoot", proof),
        (old, new, r2, r1, proof),  # swapped roots
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*proof, b""]),
        (old, new, r1, r2, [*proof, r1]),
        (old, new, r1, r2, [*proof, r2]),
        (old, new, r1, r2, [b"", *proof]),
        (old, new, r1, r2, [r1, *proof]),
        (old, new, r1, r2, [r2, *proof]),
        (old, new, r1, r2, [proof[0], *proof]),
        (old, new, r1, r2, proof[:-1]),
        (new, old, r2, r1, proof),  # time travel
        (1, 0, r1, r2, []),
        (0, 0, r1, r2, []),
        (1, 1, r1, r2, []),
        (0, 1, EMPTY_ROOT, r1, [EMPTY_ROOT]),
        (1, 1, r1, r1, [r1]),
        (0, 3, r1, r2, []),  # the empty tree's root is SHA-256 of nothing
        (old, 2**63, r1, r2, proof),
        (None, new, r1, r2, proof),
        (str(old), new, r1, r2, proof),
        (float(old), new, r1, r2, proof),
        (old, None, r1, r2, proof),
        (old, "8", r1, r2, proof),
        (old, float(new), r1, r2, proof),
    ]
    for case in cases:
        _refused(verify_consistency, *case)
    verify_consistency(0, 3, EMPTY_ROOT, ROOTS[3], [])
    verify_consistency(4, 4, ROOTS[4], ROOTS[4], [])


def test_proof_generation_refuses_sizes_out_of_range() -> None:
    for index, size in ((0, 0), (8, 8), (-1, 8)):
        _refused(inclusion_proof, index, size, LEAF_HASHES)
    for old, new in ((9, 8), (-1, 3)):
        _refused(consistency_proof, old, new, LEAF_HASHES)
    # sizes beyond the leaves given (IndexError before), and numbers that are not
    # integers (a ValueError, or a proof for leaf 0.5)
    three = LEAF_HASHES[:3]
    _refused(inclusion_proof, 0, 5, three)
    for old, new in ((1, 5), (0, 5), (5, 5)):
        _refused(consistency_proof, old, new, three)
    for index, size in ((0.5, 2), (0, 2.0), (True, 2), (None, 2), ("0", 2)):
        _refused(inclusion_proof, index, size, LEAF_HASHES)
    for old, new in ((1.5, 3), (1, 3.0), (False, 3)):
        _refused(consistency_proof, old, new, LEAF_HASHES)


MANY = [leaf_hash(i.to_bytes(4, "big")) for i in range(4096)]
MANY_NODES = LeafHashes(MANY)


def _flip(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 3000), data=st.data())
def test_every_inclusion_proof_verifies_and_no_bit_flip_does(size: int, data: Any) -> None:
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(index, size, MANY_NODES)
    tree_root = root_of(size)
    verify_inclusion(MANY[index], index, size, proof, tree_root)
    for position, node in enumerate(proof):
        for bit in range(256):
            changed = [*proof[:position], _flip(node, bit), *proof[position + 1 :]]
            _refused(verify_inclusion, MANY[index], index, size, changed, tree_root)
    for bit in range(256):
        _refused(verify_inclusion, MANY[index], index, size, proof, _flip(tree_root, bit))
        _refused(verify_inclusion, _flip(MANY[index], bit), index, size, proof, tree_root)
    # A log claiming another size must show that size's root (a checkpoint signs both):
    # against it, the proof fails. (The proof alone does not fix the size: leaf 0 of
    # trees of 5 and 6 leaves have paths of the same shape.)
    for bit in range(12):
        other = size ^ (1 << bit)
        if index < other <= len(MANY):
            _refused(verify_inclusion, MANY[index], index, other, proof, root_of(other))


@settings(max_examples=40, deadline=None)
@given(new=st.integers(2, 3000), data=st.data())
def test_every_consistency_proof_verifies_and_no_bit_flip_does(new: int, data: Any) -> None:
    old = data.draw(st.integers(1, new - 1))
    proof = consistency_proof(old, new, MANY_NODES)
    old_root, new_root = root_of(old), root_of(new)
    verify_consistency(old, new, old_root, new_root, proof)
    for position, node in enumerate(proof):
        for bit in range(256):
            changed = [*proof[:position], _flip(node, bit), *proof[position + 1 :]]
            _refused(verify_consistency, old, new, old_root, new_root, changed)
    for bit in range(256):
        _refused(verify_consistency, old, new, _flip(old_root, bit), new_root, proof)
        _refused(verify_consistency, old, new, old_root, _flip(new_root, bit), proof)
    for bit in range(12):
        for other_old, other_new in ((old ^ (1 << bit), new), (old, new ^ (1 << bit))):
            if 0 < other_old < other_new <= len(MANY):
                _refused(
                    verify_consistency,
                    other_old,
                    other_new,
                    root_of(other_old),
                    root_of(other_new),
                    proof,
                )


_ROOTS: dict[int, bytes] = {}


def root_of(size: int) -> bytes:
    """The root of the first ``size`` of MANY, from its stored subtrees."""
    if size not in _ROOTS:
        _ROOTS[size] = range_hash(0, size, MANY_NODES)
    return _ROOTS[size]


def test_roots_from_stored_subtrees_match_roots_from_leaves() -> None:
    for size in (1, 2, 3, 7, 8, 9, 100, 1023, 1024, 1025, 4096):
        assert root_of(size) == root(MANY[:size])

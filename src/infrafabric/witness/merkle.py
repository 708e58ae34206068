"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing and proofs, with no I/O.

* ``leaf_hash(entry) = SHA-256(0x00 || entry)``, ``node_hash(l, r) = SHA-256(0x01 || l || r)``;
  the tree of ``n`` leaves splits at ``k``, the largest power of two below ``n`` (section 2.1.1).
* Proofs are built from the hashes of *perfect* subtrees: a subtree of ``2**level``
  leaves starting at a multiple of its size. A log stores each one once it is complete
  (one per level per append, amortized), so a root or a proof needs O(log n) of them and
  never the whole log. Here they come from a :class:`Nodes` source: :class:`LeafHashes`
  computes them from a list in memory; the witness log reads them from its store.
* Verification follows sections 2.1.3.2 and 2.1.4.2 step by step, and refuses every
  malformed proof (wrong length, a hash of the wrong size, sizes out of range, swapped
  roots) with :class:`ProofError`, never another exception.

This module imports nothing of InfraFabric: a verifier may copy it alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final, Protocol

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "LeafHashes",
    "Nodes",
    "ProofError",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
#: The root of the empty tree: SHA-256 of nothing (RFC 9162, 2.1.1).
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
#: Largest tree size a proof may claim (2**63 - 1, as RFC 9162's uint64 sizes allow).
MAX_SIZE: Final = (1 << 63) - 1


class ProofError(ValueError):
    """A proof that does not verify, or is malformed; the message says which and why."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class Nodes(Protocol):
    """Where perfect subtree hashes come from."""

    def perfect(self, level: int, index: int) -> bytes:
        """The hash of leaves ``[index * 2**level, (index + 1) * 2**level)``, a complete
        subtree (level 0: a leaf hash)."""


class LeafHashes:
    """:class:`Nodes` over leaf hashes held in memory (subtree hashes are cached)."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self.leaves = leaf_hashes
        self._cache: dict[tuple[int, int], bytes] = {}

    def perfect(self, level: int, index: int) -> bytes:
        if level == 0:
            return self.leaves[index]
        key = (level, index)
        cached = self._cache.get(key)
        if cached is None:
            cached = node_hash(
                self.perfect(level - 1, 2 * index), self.perfect(level - 1, 2 * index + 1)
            )
            self._cache[key] = cached
        return cached


def range_hash(start: int, end: int, nodes: Nodes) -> bytes:
    """MTH(D[start:end]) for a range of the RFC's tree shape: ``start`` a multiple of the
    largest power of two not above ``end - start`` (as every subtree of the tree is)."""
    size = end - start
    if size <= 0:
        return EMPTY_ROOT
    if size & (size - 1) == 0:  # a perfect subtree, aligned by construction
        level = size.bit_length() - 1
        return nodes.perfect(level, start >> level)
    split = _split(size)
    return node_hash(range_hash(start, start + split, nodes), range_hash(start + split, end, nodes))


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of ``leaf_hashes`` (RFC 9162 MTH)."""
    return range_hash(0, len(leaf_hashes), LeafHashes(leaf_hashes))


def inclusion_proof(index: int, size: int, nodes: Nodes | Sequence[bytes]) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of the first ``size`` leaves
    (RFC 9162 2.1.3.1), from ``nodes`` or a list of leaf hashes."""
    _check_integers(index=index, size=size)
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    source = _nodes(nodes, size)
    path: list[bytes] = []
    start, end = 0, size
    # Walk down from the root; each sibling subtree on the way joins the path, which is
    # then read leaf-upwards.
    while end - start > 1:
        split = _split(end - start)
        if index < start + split:
            path.append(range_hash(start + split, end, source))
            end = start + split
        else:
            path.append(range_hash(start, start + split, source))
            start += split
    path.reverse()
    return path


def consistency_proof(old_size: int, new_size: int, nodes: Nodes | Sequence[bytes]) -> list[bytes]:
    """The proof that the tree of ``old_size`` leaves is a prefix of the tree of
    ``new_size`` leaves (RFC 9162 2.1.4.1); empty when the sizes are equal or the old
    tree is empty."""
    _check_integers(old_size=old_size, new_size=new_size)
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    source = _nodes(nodes, new_size)
    if old_size in (0, new_size):
        return []
    path: list[bytes] = []
    start, end, whole = 0, new_size, True
    old_end = old_size
    # SUBPROOF(m, D[start:end], whole), iteratively; m counts leaves of the old tree
    # inside [start, end).
    while True:
        size = end - start
        m = old_end - start
        if m == size:
            if not whole:
                path.append(range_hash(start, end, source))
            break
        split = _split(size)
        if m <= split:
            path.append(range_hash(start + split, end, source))
            end = start + split
        else:
            path.append(range_hash(start, start + split, source))
            start += split
            whole = False
    path.reverse()
    return path


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """Check that ``leaf`` (a leaf hash) is leaf ``index`` of the tree of ``size`` leaves
    whose root is ``expected_root`` (RFC 9162 2.1.3.2); :class:`ProofError` if not."""
    _check_hashes(leaf=leaf, root=expected_root)
    _check_path(proof)
    _check_integers(index=index, size=size)
    if not 0 <= index < size <= MAX_SIZE:
        raise ProofError(f"leaf index {index} is out of range for tree size {size}")
    fn, sn = index, size - 1
    computed = leaf
    for sibling in proof:
        if sn == 0:
            raise ProofError("the proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            computed = node_hash(sibling, computed)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            computed = node_hash(computed, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the proof is shorter than the tree is deep")
    if computed != expected_root:
        raise ProofError("the proof leads to a different root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``old_size`` leaves with root ``old_root`` is a prefix of the
    tree of ``new_size`` leaves with root ``new_root`` (RFC 9162 2.1.4.2)."""
    _check_hashes(old_root=old_root, new_root=new_root)
    _check_path(proof)
    _check_integers(old_size=old_size, new_size=new_size)
    if not 0 <= old_size <= new_size <= MAX_SIZE:
        raise ProofError(f"sizes {old_size} -> {new_size} are out of range")
    if old_size == new_size:
        if proof:
            raise ProofError("trees of the same size need an empty proof")
        if old_root != new_root:
            raise ProofError("two trees of the same size have different roots")
        return
    if old_size == 0:
        if proof:
            raise ProofError("the empty tree needs an empty proof")
        if old_root != EMPTY_ROOT:
            raise ProofError("the old root is not the root of the empty tree")
        return
    if not proof:
        raise ProofError("the proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is itself a node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    first_root = second_root = path[0]
    for node in path[1:]:
        if sn == 0:
            raise ProofError("the proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            first_root = node_hash(node, first_root)
            second_root = node_hash(node, second_root)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            second_root = node_hash(second_root, node)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the proof is shorter than the tree is deep")
    if first_root != old_root:
        raise ProofError("the proof does not lead to the old root")
    if second_root != new_root:
        raise ProofError("the proof does not lead to the new root")


def _split(size: int) -> int:
    """The largest power of two strictly below ``size`` (``size`` >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def _nodes(nodes: Nodes | Sequence[bytes], size: int) -> Nodes:
    """``nodes``, or a list of leaf hashes as nodes: one that holds the tree of ``size``
    (a shorter list raised IndexError deep in the walk)."""
    if not isinstance(nodes, Sequence):
        return nodes
    if size > len(nodes):
        raise ProofError(f"a tree of size {size} from {len(nodes)} leaf hashes")
    return LeafHashes(nodes)


def _check_hashes(**hashes: object) -> None:
    for name, value in hashes.items():
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            raise ProofError(f"{name} must be {HASH_SIZE} bytes")


def _check_integers(**numbers: object) -> None:
    # a bundle's JSON may hold anything: None, "3", 3.0 or true must not reach a comparison
    # (TypeError) or pass for a number
    for name, value in numbers.items():
        if type(value) is not int:
            raise ProofError(f"{name} must be an integer, not {type(value).__name__}")


def _check_path(proof: Sequence[bytes]) -> None:
    if isinstance(proof, (bytes, str)) or not isinstance(proof, Sequence):
        raise ProofError("a proof is a list of hashes")
    if len(proof) > 64:
        raise ProofError("a proof of more than 64 hashes cannot belong to any tree")
    for position, node in enumerate(proof):
        if not isinstance(node, bytes) or len(node) != HASH_SIZE:
            raise ProofError(f"proof hash {position} must be {HASH_SIZE} bytes")

"""Proof bundles: one witnessed entry, its inclusion proof and the signed checkpoint,
checked offline with nothing but the fabric's verifier key.

A bundle is JSON::

    {"format": "infrafabric-witness-proof/1", "index": 17, "size": 1024,
     "entry": "<the entry, base64>", "proof": ["<hash, base64>", ...],
     "checkpoint": "<the signed note>"}

Imports only the standard library, PyNaCl, :mod:`.merkle` and :mod:`.checkpoint`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Final

from infrafabric.witness.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from infrafabric.witness.merkle import ProofError, leaf_hash, verify_inclusion

__all__ = ["FORMAT", "BundleError", "VerifiedEntry", "make_bundle", "verify_bundle"]

FORMAT: Final = "infrafabric-witness-proof/1"


class BundleError(ValueError):
    """A bundle that is malformed or does not prove what it claims; the message says why."""


@dataclass(frozen=True, slots=True)
class VerifiedEntry:
    index: int
    entry: bytes
    checkpoint: Checkpoint


def make_bundle(
    index: int, entry: bytes, size: int, proof: list[bytes], note: str
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "index": index,
        "size": size,
        "entry": base64.b64encode(entry).decode(),
        "proof": [base64.b64encode(node).decode() for node in proof],
        "checkpoint": note,
    }


def verify_bundle(bundle: dict[str, Any] | str, key: str) -> VerifiedEntry:
    """Check a bundle against the verifier key ``key``: the checkpoint is signed by it,
    and the entry is leaf ``index`` of the tree the checkpoint commits to."""
    try:
        document = json.loads(bundle) if isinstance(bundle, str) else bundle
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        raise BundleError("a bundle is a JSON object") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BundleError(f"not a {FORMAT} bundle")
    index, size = document.get("index"), document.get("size")
    if not isinstance(index, int) or not isinstance(size, int) or bool in (type(index), type(size)):
        raise BundleError("index and size are integers")
    try:
        entry = base64.b64decode(document["entry"], validate=True)
        proof = [base64.b64decode(node, validate=True) for node in document["proof"]]
        note = document["checkpoint"]
    except (KeyError, TypeError, ValueError):  # ValueError: binascii.Error, or non-ASCII
        raise BundleError("entry, proof and checkpoint are base64 and text") from None
    try:
        checkpoint = open_checkpoint(note, key)
    except CheckpointError as exc:
        raise BundleError(f"checkpoint: {exc}") from None
    if checkpoint.size != size:
        raise BundleError(f"the checkpoint is for size {checkpoint.size}, the proof for {size}")
    try:
        verify_inclusion(leaf_hash(entry), index, size, proof, checkpoint.root)
    except ProofError as exc:
        raise BundleError(f"inclusion: {exc}") from None
    return VerifiedEntry(index, entry, checkpoint)

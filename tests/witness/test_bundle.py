"""Proof bundles checked offline: any malformed bundle is a BundleError, never a crash."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import nacl.signing
import pytest

from infrafabric.witness.bundle import BundleError, make_bundle, verify_bundle
from infrafabric.witness.checkpoint import Checkpoint, sign_checkpoint, verifier_key
from infrafabric.witness.log import WitnessLog

ORIGIN = "example.org/log"


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """A bundle for entry 4 of a log of 9, and the verifier key that checks it."""
    key = nacl.signing.SigningKey.generate()
    log = WitnessLog(tmp_path_factory.mktemp("bundle") / "witness.db", synchronous="NORMAL")
    log.append([f'{{"n":{n}}}'.encode() for n in range(9)])
    note = sign_checkpoint(Checkpoint(ORIGIN, 9, log.root()), ORIGIN, key)
    bundle = make_bundle(4, b'{"n":4}', 9, log.inclusion_proof(4), note)
    return bundle, verifier_key(ORIGIN, bytes(key.verify_key))


def test_the_bundle_itself_verifies(signed: tuple[dict[str, Any], str]) -> None:
    bundle, key = signed
    assert verify_bundle(json.dumps(bundle), key).entry == b'{"n":4}'


@pytest.mark.parametrize(
    ("field", "change", "problem"),
    [
        ("entry", lambda _: "\u00e9", "base64"),
        ("proof", lambda _: ["\u00e9"], "base64"),
        ("checkpoint", lambda note: note[:-3] + "\u00e9\n", "a signature is not base64"),
    ],
    ids=["entry", "proof", "signature"],
)
def test_non_ascii_where_base64_belongs_is_a_bundle_error(
    signed: tuple[dict[str, Any], str],
    field: str,
    change: Callable[[Any], Any],
    problem: str,
) -> None:
    bundle, key = signed
    with pytest.raises(BundleError, match=problem):
        verify_bundle(json.dumps({**bundle, field: change(bundle[field])}), key)


def test_json_nested_too_deep_is_a_bundle_error(signed: tuple[dict[str, Any], str]) -> None:
    _, key = signed
    with pytest.raises(BundleError, match="JSON object"):
        verify_bundle("[" * 100_000 + "]" * 100_000, key)

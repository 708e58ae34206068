"""Interoperability: our signatures verify with an independent Ed25519 implementation
(``cryptography``/OpenSSL) over bytes built independently (the documented prefix plus the
``rfc8785`` package's canonical JSON), and the other way round."""

from __future__ import annotations

import json
from collections.abc import Callable

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from infrafabric import Keyring, Outbox, Verifier, encode_json, key_id, new_key_record
from infrafabric.protocol.identity import b64url_decode, b64url_encode
from tests.conftest import NOW

DOCUMENTED_PREFIX = b"IFMessage-v2.1-signature\n"  # docs/protocol.md, spelled out on purpose


def test_our_signature_verifies_with_openssl(make_agent: Callable[..., Outbox]) -> None:
    alice = make_agent("alice")
    message = alice.message(
        now=NOW,
        performative="inform",
        receiver="if://agent/bob",
        content={"x": [1.5, "é", None], "y": 1e-7},
    )
    envelope = json.loads(encode_json(message))
    signature = envelope.pop("signature")
    public = Ed25519PublicKey.from_public_bytes(alice.identity.public_key)
    public.verify(b64url_decode(signature["sig"]), DOCUMENTED_PREFIX + rfc8785.dumps(envelope))
    assert signature["kid"] == key_id(alice.identity.public_key)


def test_an_openssl_signature_verifies_with_our_verifier() -> None:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    keyring = Keyring([new_key_record("if://agent/carol", public, version=1, now=NOW - 60)])
    envelope = {
        "v": "2.1",
        "id": "external-1",
        "performative": "propose",
        "sender": "if://agent/carol",
        "receiver": ["if://agent/alice", "if://topic/plans/**"],
        "conversation_id": "if://conversation/ext",
        "content": {"plan": "ship it", "confidence": 0.75, "€": 100},
        "timestamp": "2026-11-23T11:59:59.5Z",
        "sequence_num": 1,
        "nonce": "abcdefabcdefabcdefabcdef",
        "ttl": 60,
        "scope": {"priority": "high", "domain": "release"},
    }
    sig = private.sign(DOCUMENTED_PREFIX + rfc8785.dumps(envelope))
    envelope["signature"] = {"alg": "ed25519", "kid": key_id(public), "sig": b64url_encode(sig)}
    # Whitespace and member order on the wire do not matter; only the canonical form does.
    raw = json.dumps(dict(reversed(list(envelope.items()))), indent=2).encode()
    verdict = Verifier(keyring).check(raw, now=NOW)
    assert verdict.ok, verdict

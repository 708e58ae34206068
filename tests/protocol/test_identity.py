"""Identities: RFC 8032 vectors through the identity layer, key ids, base64url, signing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infrafabric import MessageError, SigningIdentity, agent_id, key_id
from infrafabric.errors import CallerError
from infrafabric.protocol.identity import b64url_decode, b64url_encode
from tests.conftest import plain_message

RFC8032 = json.loads((Path(__file__).parent / "vectors" / "rfc8032_ed25519.json").read_text())


@pytest.mark.parametrize("vector", RFC8032, ids=[v["name"] for v in RFC8032])
def test_rfc8032_vectors(vector: dict[str, str]) -> None:
    identity = SigningIdentity.from_seed(agent_id("rfc"), bytes.fromhex(vector["secret_key"]))
    assert identity.public_key.hex() == vector["public_key"]
    assert identity.sign_bytes(bytes.fromhex(vector["message"])).hex() == vector["signature"]
    assert identity.seed.hex() == vector["secret_key"]


def test_key_id_is_16_base64url_chars_of_sha256() -> None:
    public = bytes.fromhex(RFC8032[0]["public_key"])
    kid = key_id(public)
    assert len(kid) == 16
    assert kid == b64url_encode(__import__("hashlib").sha256(public).digest())[:16]
    with pytest.raises(CallerError):
        key_id(public[:31])


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff" * 31, bytes(range(64))])
def test_base64url_round_trip(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text
    assert "+" not in text
    assert "/" not in text
    assert b64url_decode(text) == data


@pytest.mark.parametrize("text", ["A", "AB=", "AB+/", "é", "AR"])  # "AR" has non-zero padding bits
def test_base64url_refuses_non_canonical_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        b64url_decode(text)


def test_seeds_must_be_32_bytes() -> None:
    with pytest.raises(CallerError):
        SigningIdentity.from_seed(agent_id("a"), b"short")


def test_sign_refuses_another_senders_message() -> None:
    alice = SigningIdentity.generate(agent_id("alice"))
    message = plain_message(agent_id("bob"))
    with pytest.raises(MessageError, match="cannot sign"):
        alice.sign(message)


def test_repr_never_shows_the_private_key() -> None:
    identity = SigningIdentity.generate(agent_id("alice"))
    assert identity.seed.hex() not in repr(identity)
    assert identity.kid in repr(identity)

"""Agent identities: Ed25519 keys (RFC 8032) and signing of IFMessages.

Ed25519 comes from libsodium through PyNaCl, measured faster than ``cryptography`` for
verification on this project's machines (``make bench`` prints both). This module holds
keys in memory only; :mod:`infrafabric.keystore` stores them encrypted on disk.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.signing

from infrafabric.errors import CallerError, MessageError
from infrafabric.protocol.message import (
    IFMessage,
    build_message,
    signed_copy,
    signing_input,
)
from infrafabric.types import AgentId, KeyId, Timestamp

__all__ = [
    "Outbox",
    "SigningIdentity",
    "b64url_decode",
    "b64url_encode",
    "key_id",
    "verify_signature",
]

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 4648 section 5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of :func:`b64url_encode`; raises ``ValueError`` on anything else."""
    if not text.isascii():
        raise ValueError("base64url text must be ASCII")
    padded = text + "=" * (-len(text) % 4)
    decoded = base64.b64decode(padded, altchars=b"-_", validate=True)
    if b64url_encode(decoded) != text:
        raise ValueError("non-canonical base64url")
    return decoded


def key_id(public_key: bytes) -> KeyId:
    """The key id of a raw Ed25519 public key: 16 base64url characters (96 bits) of SHA-256."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise CallerError(
            f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, not {len(public_key)}"
        )
    return b64url_encode(hashlib.sha256(public_key).digest())[:16]


def verify_signature(verify_key: nacl.signing.VerifyKey, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``data`` under ``verify_key``
    (a "signature" that is not 64 bytes is simply not one: PyNaCl raises its own
    ``ValueError`` for it, which reached a caller as a 500)."""
    if len(signature) != nacl.bindings.crypto_sign_BYTES:
        return False
    try:
        verify_key.verify(data, signature)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


@dataclass(frozen=True, repr=False)
class SigningIdentity:
    """One agent key pair in memory: who it is (``agent``), which key (``kid``, ``version``).

    The private key never appears in ``repr``; persist it only through the keystore.
    """

    agent: AgentId
    version: int
    _signing_key: nacl.signing.SigningKey = field(compare=False)

    @classmethod
    def generate(cls, agent: AgentId, *, version: int = 1) -> SigningIdentity:
        """A fresh key from the operating system's CSPRNG (libsodium ``randombytes``)."""
        return cls(agent, version, nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, agent: AgentId, seed: bytes, *, version: int = 1) -> SigningIdentity:
        """The key whose RFC 8032 private key (the 32-byte seed) is ``seed``."""
        if len(seed) != SEED_BYTES:
            raise CallerError(f"an Ed25519 seed is {SEED_BYTES} bytes, not {len(seed)}")
        return cls(agent, version, nacl.signing.SigningKey(seed))

    @property
    def seed(self) -> bytes:
        """The 32-byte private key. Handle with care."""
        return bytes(self._signing_key)

    # Computed once: every signed message names its kid (a SHA-256 of the public key).
    @functools.cached_property
    def public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @functools.cached_property
    def kid(self) -> KeyId:
        return key_id(self.public_key)

    def sign_bytes(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._signing_key.sign(data).signature

    def sign(self, message: IFMessage) -> IFMessage:
        """Return ``message`` signed by this identity (any previous signature replaced).

        Raises :class:`~infrafabric.errors.MessageError` when the message's ``sender`` is
        not this identity's agent, or its content has no canonical form.
        """
        if message.sender != self.agent:
            raise MessageError(
                f"{self.agent} cannot sign a message whose sender is {message.sender}"
            )
        signature = self.sign_bytes(signing_input(message))
        return signed_copy(message, kid=self.kid, sig=b64url_encode(signature))

    def __repr__(self) -> str:
        return f"SigningIdentity(agent={self.agent!r}, version={self.version}, kid={self.kid!r})"


class Outbox:
    """Numbers, stamps and signs the messages one identity sends.

    ``sequence_num`` rises by one per message, starting after ``last_sequence`` (persist
    it, or reserve blocks from the keystore, so a restarted agent keeps rising).

    ``follow_clock``: each number is also at least the message's time in milliseconds.
    Then several senders of one identity (an agent and ``ifab ... --as`` it, say) keep
    to one rising order, the order in time, and none falls below the others' window
    (see :mod:`~infrafabric.protocol.replay`). Counting by one from its start, a sender
    that started earlier stayed below a later one's numbers for good: every message it
    sent after the other's first was ``OUT_OF_SEQUENCE``. Two senders may still draw one
    number (the same millisecond), or one be behind the other by more than the window (a
    clock apart, or a sender sending faster than one a millisecond); the SDK then signs
    the refused message again past the highest the refusal names (see
    :class:`~infrafabric.client.Client`). A mesh peer's window is wider (65,536): a
    message may arrive there up to 65 s of its sender's clock behind a newer one.
    """

    def __init__(
        self, identity: SigningIdentity, *, last_sequence: int = 0, follow_clock: bool = False
    ) -> None:
        self.identity = identity
        self.last_sequence = last_sequence
        self.follow_clock = follow_clock

    def message(self, *, now: Timestamp, **fields: Any) -> IFMessage:
        """Build and sign a message from ``identity``; ``fields`` as for :func:`build_message`."""
        number = self.last_sequence + 1
        if self.follow_clock:
            number = max(number, int(now * 1000))
        unsigned = build_message(sender=self.identity.agent, sequence_num=number, now=now, **fields)
        signed = self.identity.sign(unsigned)
        self.last_sequence = number
        return signed

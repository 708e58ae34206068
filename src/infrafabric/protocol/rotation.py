"""Key rotation announcements: signed by the new key, countersigned by the old one.

A rotation is an ordinary IFMessage (``inform`` to :data:`ROTATION_TOPIC`) whose
``content`` holds a :class:`RotationStatement` and a :class:`Countersignature`:

* the envelope is signed by the **new** key, proving its holder asked for it;
* the statement is countersigned by the **old** key (scheduled and emergency rotation),
  proving the current holder agrees; or, when the old key is compromised and cannot be
  trusted to speak, by an **operator** key from the keyring.

Scheduled rotation deprecates the old key with a grace period (default 7 days);
emergency rotation revokes it at once; a compromised rotation marks it compromised. The
change takes effect at the announcement's ``timestamp``, so every keyring that applies
it computes the same grace window.
"""

from __future__ import annotations

import contextlib
from enum import StrEnum
from typing import Annotated, Final

import msgspec
import nacl.signing
from msgspec import Meta, Struct

from infrafabric.errors import KeyringError, MessageError, RotationError
from infrafabric.protocol.canonical import canonical_json
from infrafabric.protocol.identity import (
    SigningIdentity,
    b64url_decode,
    b64url_encode,
    key_id,
    verify_signature,
)
from infrafabric.protocol.keyring import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_ROTATION_SECONDS,
    KeyRecord,
    Keyring,
    KeyRole,
    KeyState,
)
from infrafabric.protocol.message import IFMessage, build_message, signing_input
from infrafabric.protocol.patterns import AgentField, KidField, PublicKeyField, SignatureField
from infrafabric.protocol.reasons import Reason
from infrafabric.protocol.timefmt import format_timestamp
from infrafabric.types import Timestamp

__all__ = [
    "COUNTERSIGN_PREFIX",
    "MAX_GRACE_SECONDS",
    "ROTATION_TOPIC",
    "Countersignature",
    "RotationKind",
    "RotationStatement",
    "announce_rotation",
    "apply_rotation",
]

ROTATION_TOPIC: Final = "if://topic/fabric/keys"
#: Domain separation for countersignatures, distinct from message signatures.
COUNTERSIGN_PREFIX: Final = b"IFMessage-v2.1-key-rotation\n"
MAX_GRACE_SECONDS: Final = 30 * 86_400
DEFAULT_CLOCK_SKEW: Final = 30.0


class RotationKind(StrEnum):
    SCHEDULED = "scheduled"  # old key deprecated, still verifies during the grace period
    EMERGENCY = "emergency"  # old key revoked at once; its holder countersigns
    COMPROMISED = "compromised"  # old key marked compromised; an operator countersigns


class RotationStatement(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    agent: AgentField
    kind: RotationKind
    old_kid: KidField
    new_kid: KidField
    new_public_key: PublicKeyField
    new_version: Annotated[int, Meta(ge=2)]
    grace_seconds: Annotated[int, Meta(ge=0, le=MAX_GRACE_SECONDS)]


class Countersignature(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kid: KidField
    sig: SignatureField


class _RotationContent(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    rotation: RotationStatement
    countersignature: Countersignature


def countersigning_input(statement: RotationStatement) -> bytes:
    """The bytes a countersignature covers: prefix, then the statement's canonical JSON."""
    return COUNTERSIGN_PREFIX + canonical_json(msgspec.to_builtins(statement))


def announce_rotation(
    old_kid: str,
    old_version: int,
    new: SigningIdentity,
    *,
    countersigner: SigningIdentity,
    kind: RotationKind,
    now: Timestamp,
    sequence_num: int,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
) -> IFMessage:
    """Build the signed announcement that key ``old_kid`` is replaced by ``new``.

    ``countersigner`` is the old identity for scheduled and emergency rotations, an
    operator identity for a compromised one. ``new.version`` must exceed ``old_version``.
    """
    if new.version <= old_version:
        raise KeyringError(f"new version {new.version} must exceed {old_version}", kid=old_kid)
    statement = RotationStatement(
        agent=new.agent,
        kind=kind,
        old_kid=old_kid,
        new_kid=new.kid,
        new_public_key=b64url_encode(new.public_key),
        new_version=new.version,
        grace_seconds=grace_seconds if kind is RotationKind.SCHEDULED else 0,
    )
    countersignature = Countersignature(
        kid=countersigner.kid,
        sig=b64url_encode(countersigner.sign_bytes(countersigning_input(statement))),
    )
    content = msgspec.to_builtins(
        _RotationContent(rotation=statement, countersignature=countersignature)
    )
    unsigned = build_message(
        performative="inform",
        sender=new.agent,
        receiver=ROTATION_TOPIC,
        content=content,
        now=now,
        sequence_num=sequence_num,
    )
    return new.sign(unsigned)


def apply_rotation(
    keyring: Keyring, message: IFMessage, now: Timestamp, *, clock_skew: float = DEFAULT_CLOCK_SKEW
) -> KeyRecord:
    """Check a rotation announcement and apply it to ``keyring``; returns the new key's record.

    Applying the same announcement twice is a no-op. Raises :class:`RotationError` whose
    ``reason`` is a :class:`Reason` code (``MALFORMED``, ``FROM_FUTURE``, ``UNSIGNED``,
    ``UNKNOWN_KEY``, ``KEY_REVOKED``, ``BAD_SIGNATURE``, ``UNAUTHORIZED``); the keyring is
    unchanged then. Unlike ordinary messages an announcement does not expire: every key
    is judged as of the announcement's own timestamp, so a keyring that applies it late
    (in the order the announcements were made) reaches the same state.
    """
    statement, countersignature = _parse(message)
    _check_clock(message, now, clock_skew)
    new_key = b64url_decode(statement.new_public_key)
    _check_new_key(message, statement, new_key)
    known = keyring.get(statement.new_kid)
    if known is not None and (known.agent, known.public_key, known.version) == (
        statement.agent,
        statement.new_public_key,
        statement.new_version,
    ):
        return known  # already applied (only the new key's holder could have signed this)
    old = keyring.get(statement.old_kid)
    if old is None or old.agent != statement.agent:
        raise RotationError(Reason.UNKNOWN_KEY, f"no key {statement.old_kid} for {statement.agent}")
    effective = message.sent_at
    _check_succession(keyring, statement, old, known)
    _check_countersignature(keyring, statement, countersignature, old, effective)
    return _apply(keyring, statement, old, effective)


def _check_succession(
    keyring: Keyring, statement: RotationStatement, old: KeyRecord, known: KeyRecord | None
) -> None:
    """One successor per key, versions rising: no fork of an identity into two live keys."""
    if known is not None:
        raise RotationError(Reason.UNAUTHORIZED, f"key {statement.new_kid} is already known")
    if old.role is KeyRole.DELEGATE:  # lent for a while: it never becomes the identity
        raise RotationError(Reason.UNAUTHORIZED, f"key {old.kid} is delegated, not the agent's own")
    newest = max(record.version for record in keyring.for_agent(statement.agent))
    if statement.new_version <= newest:
        raise RotationError(
            Reason.MALFORMED, f"new_version must exceed {newest}, the newest version"
        )
    if statement.kind is RotationKind.COMPROMISED:
        return  # an operator may replace any key; _apply retires its successors too
    if old.state is not KeyState.ACTIVE or old.replaced_by is not msgspec.UNSET:
        raise RotationError(Reason.KEY_REVOKED, f"key {old.kid} is {old.state}, already replaced")


def _parse(message: IFMessage) -> tuple[RotationStatement, Countersignature]:
    if message.performative != "inform" or ROTATION_TOPIC not in message.receivers:
        raise RotationError(Reason.MALFORMED, f"a rotation is an inform to {ROTATION_TOPIC}")
    try:
        content = msgspec.convert(message.content, _RotationContent)
    except msgspec.ValidationError as exc:
        raise RotationError(Reason.MALFORMED, f"rotation content: {exc}") from None
    if content.rotation.agent != message.sender:
        raise RotationError(Reason.UNAUTHORIZED, "an agent may only rotate its own key")
    return content.rotation, content.countersignature


def _check_clock(message: IFMessage, now: Timestamp, clock_skew: float) -> None:
    # No EXPIRED check: a keyring that was offline must still be able to catch up, and
    # a stale announcement is harmless (it needs its old key in the state it claims, and
    # its effective time is the announcement's own timestamp). A pre-dated one is not: it
    # would move grace windows, so FROM_FUTURE stays.
    sent_at = message.sent_at
    if sent_at > now + clock_skew:
        raise RotationError(Reason.FROM_FUTURE, "announcement is dated in the future")


def _check_new_key(message: IFMessage, statement: RotationStatement, new_key: bytes) -> None:
    if key_id(new_key) != statement.new_kid:
        raise RotationError(Reason.MALFORMED, "new_kid does not match new_public_key")
    if message.signature is msgspec.UNSET:
        raise RotationError(Reason.UNSIGNED, "a rotation must be signed by the new key")
    if message.signature.kid != statement.new_kid:
        raise RotationError(Reason.BAD_SIGNATURE, "the envelope must be signed by the new key")
    try:
        data = signing_input(message)
        signature = b64url_decode(message.signature.sig)
    except (MessageError, ValueError) as exc:
        raise RotationError(Reason.MALFORMED, str(exc)) from None
    if not verify_signature(nacl.signing.VerifyKey(new_key), data, signature):
        raise RotationError(
            Reason.BAD_SIGNATURE, "envelope signature does not verify with the new key"
        )


def _check_countersignature(
    keyring: Keyring,
    statement: RotationStatement,
    countersignature: Countersignature,
    old: KeyRecord,
    effective: Timestamp,
) -> None:
    if statement.kind is RotationKind.COMPROMISED:
        signer = keyring.get(countersignature.kid)
        if signer is None or signer.role is not KeyRole.OPERATOR:
            raise RotationError(
                Reason.UNAUTHORIZED,
                "a compromised key's rotation needs an operator countersignature",
            )
        if signer.kid in _successors(keyring, old):
            raise RotationError(Reason.UNAUTHORIZED, "a compromised key cannot vouch for itself")
    elif countersignature.kid == old.kid:
        signer = old
    else:
        raise RotationError(Reason.UNAUTHORIZED, "the old key must countersign its own rotation")
    resolution = keyring.resolve(signer.agent, signer.kid, effective)
    if resolution.reason is not None or resolution.verify_key is None:
        raise RotationError(resolution.reason or Reason.UNKNOWN_KEY, resolution.detail)
    try:
        signature = b64url_decode(countersignature.sig)
    except ValueError as exc:
        raise RotationError(Reason.MALFORMED, str(exc)) from None
    if not verify_signature(resolution.verify_key, countersigning_input(statement), signature):
        raise RotationError(Reason.BAD_SIGNATURE, "countersignature does not verify")


def _successors(keyring: Keyring, record: KeyRecord) -> list[str]:
    """``record``'s kid and the kids it vouched for, following ``replaced_by``."""
    chain = [record.kid]
    while (
        current := keyring.get(chain[-1])
    ) is not None and current.replaced_by is not msgspec.UNSET:
        if current.replaced_by in chain:
            break
        chain.append(current.replaced_by)
    return chain


def _apply(
    keyring: Keyring, statement: RotationStatement, old: KeyRecord, effective: Timestamp
) -> KeyRecord:
    new_record = KeyRecord(
        agent=statement.agent,
        kid=statement.new_kid,
        version=statement.new_version,
        public_key=statement.new_public_key,
        role=old.role,
        state=KeyState.ACTIVE,
        created_at=format_timestamp(effective),
        rotate_after=format_timestamp(effective + DEFAULT_ROTATION_SECONDS),
    )
    retired = _successors(keyring, old)  # computed before the new key joins the chain
    keyring.add(new_record)
    if statement.kind is RotationKind.SCHEDULED:
        keyring.deprecate(
            old.kid, effective, grace_seconds=statement.grace_seconds, replaced_by=statement.new_kid
        )
    elif statement.kind is RotationKind.EMERGENCY:
        keyring.revoke(old.kid, effective, replaced_by=statement.new_kid)
    else:
        # Whatever a compromised key vouched for is tainted: a thief may have rotated it
        # to a key of their own. The old key and all its successors are retired together.
        for kid in retired:
            successor = None if kid != retired[-1] else statement.new_kid  # keep the history
            with contextlib.suppress(KeyringError):  # already compromised
                keyring.revoke(kid, effective, compromised=True, replaced_by=successor)
    return new_record

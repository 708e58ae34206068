"""The keyring: every public key the fabric knows, with its version, role and state.

Pure state, time passed in. A key moves only forward through its states::

    active --(scheduled rotation)--> deprecated --(grace ends)--> (rejected as KEY_EXPIRED)
    active/deprecated --(emergency rotation)--> revoked
    any --(declared compromised)--> compromised

so merging records from several sources can never bring a revoked key back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Final

import msgspec
import nacl.signing
from msgspec import UNSET, Meta, Struct, UnsetType

from infrafabric.errors import KeyringError
from infrafabric.protocol.identity import b64url_decode, b64url_encode, key_id
from infrafabric.protocol.patterns import AgentField, KidField, PublicKeyField, TimestampField
from infrafabric.protocol.reasons import Reason
from infrafabric.protocol.timefmt import format_timestamp, parse_timestamp
from infrafabric.types import AgentId, KeyId, Timestamp

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_ROTATION_SECONDS",
    "KEYRING_FORMAT",
    "KeyRecord",
    "KeyResolution",
    "KeyRole",
    "KeyState",
    "Keyring",
    "KeyringFile",
    "delegated_key",
    "new_key_record",
]

DAY: Final = 86_400
#: Scheduled rotation period: a key is due for rotation 90 days after creation.
DEFAULT_ROTATION_SECONDS: Final = 90 * DAY
#: How long a deprecated key still verifies after a scheduled rotation.
DEFAULT_GRACE_SECONDS: Final = 7 * DAY
KEYRING_FORMAT: Final = "infrafabric-keyring/1"


class KeyState(StrEnum):
    ACTIVE = "active"
    DEPRECATED = "deprecated"
    REVOKED = "revoked"
    COMPROMISED = "compromised"


_STATE_ORDER: Final = {
    KeyState.ACTIVE: 0,
    KeyState.DEPRECATED: 1,
    KeyState.REVOKED: 2,
    KeyState.COMPROMISED: 3,
}


class KeyRole(StrEnum):
    AGENT = "agent"
    #: An operator key may countersign the rotation of a compromised key.
    OPERATOR = "operator"
    #: A key an agent lent for a while (``valid_until``) to something acting for it, such
    #: as an MCP client of the server's ``/mcp`` endpoint: it signs that agent's messages
    #: but is never the agent's identity (no rotation, no further delegation).
    DELEGATE = "delegate"


class KeyRecord(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One public key as the keyring and ``ifab identity export-public`` show it."""

    agent: AgentField
    kid: KidField
    version: Annotated[int, Meta(ge=1)]
    public_key: PublicKeyField
    role: KeyRole
    state: KeyState
    created_at: TimestampField
    rotate_after: TimestampField
    deprecated_at: TimestampField | UnsetType = UNSET
    valid_until: TimestampField | UnsetType = UNSET
    revoked_at: TimestampField | UnsetType = UNSET
    replaced_by: KidField | UnsetType = UNSET
    lent_by: KidField | UnsetType = UNSET  # a delegated key: the agent's key that lent it

    def __post_init__(self) -> None:
        if key_id(self.public_key_bytes) != self.kid:
            raise ValueError(f"kid {self.kid} does not match the public key")

    @property
    def public_key_bytes(self) -> bytes:
        return b64url_decode(self.public_key)


class KeyringFile(Struct, frozen=True, forbid_unknown_fields=True):
    """The JSON document of a keyring file or an exported public identity."""

    format: str
    keys: tuple[KeyRecord, ...]


def new_key_record(
    agent: AgentId,
    public_key: bytes,
    *,
    version: int,
    now: Timestamp,
    role: KeyRole = KeyRole.AGENT,
    rotation_seconds: int = DEFAULT_ROTATION_SECONDS,
) -> KeyRecord:
    """The record of a freshly created, active key."""
    return KeyRecord(
        agent=agent,
        kid=key_id(public_key),
        version=version,
        public_key=b64url_encode(public_key),
        role=role,
        state=KeyState.ACTIVE,
        created_at=format_timestamp(now),
        rotate_after=format_timestamp(now + rotation_seconds),
    )


def delegated_key(
    agent: AgentId, public_key: bytes, lender: KeyRecord, now: Timestamp, seconds: float
) -> KeyRecord:
    """The record of a key ``agent`` lends from ``now`` for ``seconds`` with its key
    ``lender`` (see :attr:`KeyRole.DELEGATE`): it dies with that key's revocation."""
    return KeyRecord(
        agent=agent,
        kid=key_id(public_key),
        version=lender.version,
        public_key=b64url_encode(public_key),
        role=KeyRole.DELEGATE,
        state=KeyState.ACTIVE,
        created_at=format_timestamp(now),
        rotate_after=format_timestamp(now + seconds),
        valid_until=format_timestamp(now + seconds),
        lent_by=lender.kid,
    )


@dataclass(frozen=True, slots=True)
class KeyResolution:
    """What the keyring says about a (sender, kid) pair at a given time."""

    record: KeyRecord | None
    verify_key: nacl.signing.VerifyKey | None
    reason: Reason | None  # None: the key may verify this sender's messages now
    detail: str = ""

    @property
    def deprecated(self) -> bool:
        """True when the key verifies but only inside its grace period."""
        return self.record is not None and self.record.state is KeyState.DEPRECATED


@dataclass(slots=True)
class _Entry:
    record: KeyRecord
    verify_key: nacl.signing.VerifyKey
    valid_until: Timestamp | None  # parsed once; resolve() is on the verification hot path


class Keyring:
    """Public keys by kid, with per-agent versions. Not thread-safe; one owner mutates it."""

    def __init__(self, records: tuple[KeyRecord, ...] | list[KeyRecord] = ()) -> None:
        self._entries: dict[KeyId, _Entry] = {}
        for record in records:
            self.add(record)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, kid: object) -> bool:
        return kid in self._entries

    def get(self, kid: KeyId) -> KeyRecord | None:
        entry = self._entries.get(kid)
        return None if entry is None else entry.record

    def records(self) -> list[KeyRecord]:
        """All records, by agent then version."""
        return sorted(
            (e.record for e in self._entries.values()), key=lambda r: (r.agent, r.version)
        )

    def for_agent(self, agent: AgentId) -> list[KeyRecord]:
        return [record for record in self.records() if record.agent == agent]

    def active(self, agent: AgentId) -> KeyRecord | None:
        """The agent's newest active key (not a delegated one), if any."""
        actives = [
            r
            for r in self.for_agent(agent)
            if r.state is KeyState.ACTIVE and r.role is not KeyRole.DELEGATE
        ]
        return actives[-1] if actives else None

    def due_for_rotation(self, now: Timestamp) -> list[KeyRecord]:
        """Active keys whose scheduled rotation time has passed."""
        return [
            r
            for r in self.records()
            if r.state is KeyState.ACTIVE
            and r.role is not KeyRole.DELEGATE
            and parse_timestamp(r.rotate_after) <= now
        ]

    def add(self, record: KeyRecord) -> KeyRecord:
        """Add a record, or merge it with the one of the same kid; returns the stored record.

        Merging keeps the more advanced state (a keyring never un-revokes). Raises
        :class:`KeyringError` when a record of the same kid disagrees on agent, key,
        version or role.
        """
        existing = self._entries.get(record.kid)
        if existing is not None:
            old = existing.record
            identity = (old.agent, old.public_key, old.version, old.role)
            if identity != (record.agent, record.public_key, record.version, record.role):
                raise KeyringError(
                    "a different record with this kid is already known", kid=record.kid
                )
            if _STATE_ORDER[record.state] <= _STATE_ORDER[old.state]:
                return old
        self._store(record)
        return record

    def deprecate(
        self,
        kid: KeyId,
        now: Timestamp,
        *,
        grace_seconds: int = DEFAULT_GRACE_SECONDS,
        replaced_by: KeyId | None = None,
    ) -> KeyRecord:
        """Mark an active key deprecated: it still verifies until ``now + grace_seconds``."""
        record = self._require(kid)
        if record.state is not KeyState.ACTIVE:
            raise KeyringError(
                f"only an active key can be deprecated, not a {record.state} one", kid=kid
            )
        return self._store(
            msgspec.structs.replace(
                record,
                state=KeyState.DEPRECATED,
                deprecated_at=format_timestamp(now),
                valid_until=format_timestamp(now + grace_seconds),
                replaced_by=UNSET if replaced_by is None else replaced_by,
            )
        )

    def revoke(
        self,
        kid: KeyId,
        now: Timestamp,
        *,
        compromised: bool = False,
        replaced_by: KeyId | None = None,
    ) -> KeyRecord:
        """Revoke a key at once (``compromised`` marks it known to be in other hands)."""
        record = self._require(kid)
        state = KeyState.COMPROMISED if compromised else KeyState.REVOKED
        if _STATE_ORDER[record.state] >= _STATE_ORDER[state]:
            raise KeyringError(f"key is already {record.state}", kid=kid)
        return self._store(
            msgspec.structs.replace(
                record,
                state=state,
                revoked_at=format_timestamp(now),
                replaced_by=record.replaced_by if replaced_by is None else replaced_by,
            )
        )

    def resolve(self, sender: AgentId, kid: KeyId, now: Timestamp) -> KeyResolution:
        """May key ``kid`` verify a message from ``sender`` at time ``now``?

        ``UNKNOWN_KEY`` when the kid is unknown or belongs to another agent,
        ``KEY_REVOKED`` when revoked or compromised, ``KEY_EXPIRED`` when deprecated and
        past its grace period, or a delegated key past its ``valid_until``.
        """
        entry = self._entries.get(kid)
        if entry is None or entry.record.agent != sender:
            return KeyResolution(None, None, Reason.UNKNOWN_KEY, f"no key {kid} for {sender}")
        state = entry.record.state
        if state is KeyState.ACTIVE:
            if entry.record.role is KeyRole.DELEGATE:
                refusal = self._lent(entry, now)
                if refusal is not None:
                    return refusal
            return KeyResolution(entry.record, entry.verify_key, None)
        if state is KeyState.DEPRECATED:
            if entry.valid_until is not None and now <= entry.valid_until:
                return KeyResolution(
                    entry.record, entry.verify_key, None, "deprecated key in grace"
                )
            return KeyResolution(
                entry.record, None, Reason.KEY_EXPIRED, f"key {kid} deprecated, grace ended"
            )
        return KeyResolution(entry.record, None, Reason.KEY_REVOKED, f"key {kid} is {state}")

    def _lent(self, entry: _Entry, now: Timestamp) -> KeyResolution | None:
        """Why a lent key may not verify now: its term is over, or the key that lent it
        was revoked (a thief's loans die with the stolen key); ``None`` if it may."""
        record = entry.record
        if entry.valid_until is not None and now > entry.valid_until:
            return KeyResolution(
                record, None, Reason.KEY_EXPIRED, f"key {record.kid} was lent until then"
            )
        lender = self._entries.get(record.lent_by) if record.lent_by is not UNSET else None
        if lender is None or lender.record.state in (KeyState.REVOKED, KeyState.COMPROMISED):
            return KeyResolution(
                record, None, Reason.KEY_REVOKED, f"key {record.kid} was lent by a revoked key"
            )
        return None

    def to_file(self, agent: AgentId | None = None) -> KeyringFile:
        """This keyring (or one agent's keys) as a JSON-ready document."""
        records = self.records() if agent is None else self.for_agent(agent)
        return KeyringFile(format=KEYRING_FORMAT, keys=tuple(records))

    def _require(self, kid: KeyId) -> KeyRecord:
        entry = self._entries.get(kid)
        if entry is None:
            raise KeyringError("unknown key", kid=kid)
        return entry.record

    def _store(self, record: KeyRecord) -> KeyRecord:
        valid_until = None if record.valid_until is UNSET else parse_timestamp(record.valid_until)
        verify_key = nacl.signing.VerifyKey(record.public_key_bytes)
        self._entries[record.kid] = _Entry(record, verify_key, valid_until)
        return record

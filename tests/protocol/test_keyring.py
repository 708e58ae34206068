"""The keyring: states only move forward, lookups say why a key may not verify."""

from __future__ import annotations

import msgspec
import pytest

from infrafabric import (
    KeyRecord,
    Keyring,
    KeyRole,
    KeyState,
    SigningIdentity,
    agent_id,
    new_key_record,
)
from infrafabric.errors import KeyringError
from infrafabric.protocol.keyring import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_ROTATION_SECONDS,
    KeyringFile,
    delegated_key,
)
from infrafabric.protocol.reasons import Reason
from tests.conftest import NOW


def record_for(name: str, *, version: int = 1, role: KeyRole = KeyRole.AGENT) -> KeyRecord:
    identity = SigningIdentity.generate(agent_id(name), version=version)
    return new_key_record(identity.agent, identity.public_key, version=version, now=NOW, role=role)


def test_active_key_resolves_for_its_own_agent_only() -> None:
    record = record_for("alice")
    keyring = Keyring([record])
    assert keyring.resolve("if://agent/alice", record.kid, NOW).reason is None
    assert keyring.resolve("if://agent/bob", record.kid, NOW).reason is Reason.UNKNOWN_KEY
    assert keyring.resolve("if://agent/alice", "A" * 16, NOW).reason is Reason.UNKNOWN_KEY


def test_deprecated_key_verifies_until_its_grace_ends() -> None:
    record = record_for("alice")
    keyring = Keyring([record])
    keyring.deprecate(record.kid, NOW)
    inside = keyring.resolve("if://agent/alice", record.kid, NOW + DEFAULT_GRACE_SECONDS)
    assert inside.reason is None
    assert inside.deprecated
    after = keyring.resolve("if://agent/alice", record.kid, NOW + DEFAULT_GRACE_SECONDS + 1)
    assert after.reason is Reason.KEY_EXPIRED


@pytest.mark.parametrize("compromised", [False, True])
def test_revoked_and_compromised_keys_never_verify(compromised: bool) -> None:
    record = record_for("alice")
    keyring = Keyring([record])
    revoked = keyring.revoke(record.kid, NOW, compromised=compromised)
    assert revoked.state is (KeyState.COMPROMISED if compromised else KeyState.REVOKED)
    assert keyring.resolve("if://agent/alice", record.kid, NOW).reason is Reason.KEY_REVOKED


def test_merging_keeps_the_most_advanced_state() -> None:
    record = record_for("alice")
    keyring = Keyring([record])
    keyring.revoke(record.kid, NOW)
    assert keyring.add(record).state is KeyState.REVOKED  # an old "active" copy cannot un-revoke
    other = Keyring([record])
    other.add(keyring.get(record.kid))  # type: ignore[arg-type]
    assert other.get(record.kid).state is KeyState.REVOKED  # type: ignore[union-attr]


def test_a_conflicting_record_for_a_known_kid_is_refused() -> None:
    record = record_for("alice")
    keyring = Keyring([record])
    with pytest.raises(KeyringError):
        keyring.add(msgspec.structs.replace(record, agent="if://agent/mallory"))


def test_illegal_state_changes_are_refused() -> None:
    record = record_for("alice")
    keyring = Keyring([record])
    keyring.revoke(record.kid, NOW)
    with pytest.raises(KeyringError, match="only an active key"):
        keyring.deprecate(record.kid, NOW)
    with pytest.raises(KeyringError, match="already"):
        keyring.revoke(record.kid, NOW)
    with pytest.raises(KeyringError, match="unknown"):
        keyring.revoke("A" * 16, NOW)


def test_rotation_is_due_after_90_days() -> None:
    record = record_for("alice")
    keyring = Keyring([record])
    assert keyring.due_for_rotation(NOW + DEFAULT_ROTATION_SECONDS - 1) == []
    assert keyring.due_for_rotation(NOW + DEFAULT_ROTATION_SECONDS) == [record]


def test_records_check_their_kid_against_the_key() -> None:
    record = record_for("alice")
    document = msgspec.to_builtins(record)
    document["kid"] = "A" * 16
    with pytest.raises(msgspec.ValidationError, match="kid"):
        msgspec.convert(document, KeyRecord)


def test_keyring_documents_round_trip() -> None:
    keyring = Keyring([record_for("alice"), record_for("bob", role=KeyRole.OPERATOR)])
    document = msgspec.json.decode(msgspec.json.encode(keyring.to_file()), type=KeyringFile)
    assert Keyring(document.keys).records() == keyring.records()
    assert [r.agent for r in keyring.to_file("if://agent/bob").keys] == ["if://agent/bob"]
    assert keyring.active("if://agent/bob") is not None
    assert len(keyring) == 2


def test_a_lent_key_verifies_for_its_term_only_and_is_never_the_identity() -> None:
    own = record_for("alice")
    lent = SigningIdentity.generate(agent_id("alice"))
    record = delegated_key(lent.agent, lent.public_key, own, NOW, 3600)
    keyring = Keyring([own, record])
    assert record.role is KeyRole.DELEGATE
    assert keyring.resolve(lent.agent, lent.kid, NOW + 3600).reason is None
    late = keyring.resolve(lent.agent, lent.kid, NOW + 3600.5)
    assert late.reason is Reason.KEY_EXPIRED
    assert late.verify_key is None
    assert keyring.active(lent.agent) == own  # the agent's own key, not the lent one
    assert keyring.due_for_rotation(NOW + DEFAULT_ROTATION_SECONDS + 1) == [own]
    keyring.revoke(lent.kid, NOW + 1)
    assert keyring.resolve(lent.agent, lent.kid, NOW + 2).reason is Reason.KEY_REVOKED
    assert record.lent_by == own.kid
    round_trip = msgspec.json.decode(msgspec.json.encode(keyring.to_file()), type=KeyringFile)
    assert Keyring(list(round_trip.keys)).get(lent.kid) == keyring.get(lent.kid)


def test_a_lent_key_dies_with_the_key_that_lent_it_but_not_with_its_rotation() -> None:
    own = record_for("alice")
    lent = [SigningIdentity.generate(agent_id("alice")) for _ in range(2)]
    keyring = Keyring([own])
    for identity in lent:
        keyring.add(delegated_key(identity.agent, identity.public_key, own, NOW, 3600))
    keyring.deprecate(own.kid, NOW + 1)  # a scheduled rotation: loans run their term
    assert keyring.resolve(lent[0].agent, lent[0].kid, NOW + 2).reason is None
    keyring.revoke(own.kid, NOW + 3, compromised=True)  # in other hands: so are its loans
    for identity in lent:
        resolution = keyring.resolve(identity.agent, identity.kid, NOW + 4)
        assert resolution.reason is Reason.KEY_REVOKED
        assert "lent by a revoked key" in resolution.detail

"""Key rotation announcements: scheduled, emergency and compromised, and forgeries of each."""

from __future__ import annotations

import msgspec
import pytest

from infrafabric import (
    IFMessage,
    Keyring,
    KeyRole,
    KeyState,
    RotationError,
    RotationKind,
    SigningIdentity,
    Verifier,
    agent_id,
    announce_rotation,
    apply_rotation,
    encode_json,
    new_key_record,
)
from infrafabric.errors import KeyringError
from infrafabric.protocol.keyring import DEFAULT_GRACE_SECONDS, delegated_key
from infrafabric.protocol.reasons import Reason
from tests.conftest import NOW, plain_message


class World:
    def __init__(self) -> None:
        self.alice = SigningIdentity.generate(agent_id("alice"))
        self.operator = SigningIdentity.generate(agent_id("ops"))
        self.keyring = Keyring(
            [
                new_key_record(self.alice.agent, self.alice.public_key, version=1, now=NOW - 100),
                new_key_record(
                    self.operator.agent,
                    self.operator.public_key,
                    version=1,
                    now=NOW - 100,
                    role=KeyRole.OPERATOR,
                ),
            ]
        )
        self.new = SigningIdentity.generate(self.alice.agent, version=2)

    def announce(
        self, kind: RotationKind, countersigner: SigningIdentity | None = None, **kwargs: object
    ):  # type: ignore[no-untyped-def]
        return announce_rotation(
            self.alice.kid,
            1,
            kwargs.pop("new", self.new),  # type: ignore[arg-type]
            countersigner=countersigner or self.alice,
            kind=kind,
            now=kwargs.pop("now", NOW),  # type: ignore[arg-type]
            sequence_num=5,
        )

    def message_from(self, identity: SigningIdentity, sequence: int, now: float = NOW) -> bytes:
        message = plain_message(identity.agent, now=now, sequence_num=sequence)
        return encode_json(identity.sign(message))


def refusal(keyring: Keyring, announcement: IFMessage, now: float = NOW) -> str:
    """The reason apply_rotation refuses ``announcement`` for (it must refuse)."""
    with pytest.raises(RotationError) as caught:
        apply_rotation(keyring, announcement, now)
    return caught.value.reason


@pytest.fixture
def world() -> World:
    return World()


def test_scheduled_rotation_keeps_the_old_key_for_the_grace_period(world: World) -> None:
    record = apply_rotation(world.keyring, world.announce(RotationKind.SCHEDULED), NOW)
    assert record.kid == world.new.kid
    assert record.version == 2
    assert record.state is KeyState.ACTIVE
    old = world.keyring.get(world.alice.kid)
    assert old is not None
    assert old.state is KeyState.DEPRECATED
    assert old.replaced_by == world.new.kid
    later = NOW + DEFAULT_GRACE_SECONDS
    assert Verifier(world.keyring).check(world.message_from(world.alice, 1, later), now=later).ok
    assert Verifier(world.keyring).check(world.message_from(world.new, 2, later), now=later).ok
    too_late = later + 1
    verdict = Verifier(world.keyring).check(
        world.message_from(world.alice, 1, too_late), now=too_late
    )
    assert verdict.reason is Reason.KEY_EXPIRED


def test_emergency_rotation_revokes_at_once(world: World) -> None:
    apply_rotation(world.keyring, world.announce(RotationKind.EMERGENCY), NOW)
    assert world.keyring.get(world.alice.kid).state is KeyState.REVOKED  # type: ignore[union-attr]
    assert (
        Verifier(world.keyring).check(world.message_from(world.alice, 1), now=NOW).reason
        is Reason.KEY_REVOKED
    )


def test_compromised_rotation_needs_an_operator(world: World) -> None:
    assert refusal(world.keyring, world.announce(RotationKind.COMPROMISED)) == Reason.UNAUTHORIZED
    assert world.keyring.get(world.new.kid) is None  # nothing applied
    apply_rotation(world.keyring, world.announce(RotationKind.COMPROMISED, world.operator), NOW)
    assert world.keyring.get(world.alice.kid).state is KeyState.COMPROMISED  # type: ignore[union-attr]


def test_an_operator_cannot_countersign_an_ordinary_rotation(world: World) -> None:
    assert (
        refusal(world.keyring, world.announce(RotationKind.SCHEDULED, world.operator))
        == Reason.UNAUTHORIZED
    )


def test_applying_twice_is_a_no_op(world: World) -> None:
    announcement = world.announce(RotationKind.SCHEDULED)
    first = apply_rotation(world.keyring, announcement, NOW)
    assert apply_rotation(world.keyring, announcement, NOW + 10 * 86_400) == first
    assert len(world.keyring) == 3


def test_a_stale_announcement_is_applied_late_with_its_own_time(world: World) -> None:
    announcement = world.announce(RotationKind.SCHEDULED)
    apply_rotation(world.keyring, announcement, NOW + 3 * 86_400)  # the keyring was offline
    old = world.keyring.get(world.alice.kid)
    assert old is not None
    assert old.deprecated_at == announcement.timestamp


def test_an_old_announcement_cannot_roll_back_a_later_rotation(world: World) -> None:
    apply_rotation(world.keyring, world.announce(RotationKind.SCHEDULED), NOW)
    third = SigningIdentity.generate(world.alice.agent, version=3)
    assert (
        refusal(world.keyring, world.announce(RotationKind.SCHEDULED, new=third))
        == Reason.KEY_REVOKED
    )


def test_a_replaced_key_cannot_fork_the_identity(world: World) -> None:
    # Whoever holds the old key during its grace must not mint a second live successor.
    apply_rotation(world.keyring, world.announce(RotationKind.SCHEDULED), NOW)
    fork = SigningIdentity.generate(world.alice.agent, version=3)
    late = world.announce(RotationKind.EMERGENCY, new=fork, now=NOW + 3600)
    assert refusal(world.keyring, late, NOW + 3600) == Reason.KEY_REVOKED
    active = [
        r.kid for r in world.keyring.for_agent(world.alice.agent) if r.state is KeyState.ACTIVE
    ]
    assert active == [world.new.kid]


def test_versions_must_rise_past_every_known_key(world: World) -> None:
    same_version = SigningIdentity.generate(world.alice.agent, version=1)
    with pytest.raises(KeyringError):
        world.announce(RotationKind.SCHEDULED, new=same_version)


def test_late_application_reaches_the_same_state(world: World) -> None:
    first = world.announce(RotationKind.SCHEDULED)
    third = SigningIdentity.generate(world.alice.agent, version=3)
    second = announce_rotation(
        world.new.kid,
        2,
        third,
        countersigner=world.new,
        kind=RotationKind.EMERGENCY,
        now=NOW + 3600,
        sequence_num=6,
    )
    offline = Keyring(world.keyring.records())
    apply_rotation(world.keyring, first, NOW)
    apply_rotation(world.keyring, second, NOW + 3600)
    late = NOW + 8 * 86_400  # after the first rotation's grace period
    apply_rotation(offline, first, late)
    apply_rotation(offline, second, late)
    assert offline.records() == world.keyring.records()


def test_an_operator_takes_an_identity_back_from_a_thief(world: World) -> None:
    thief = SigningIdentity.generate(world.alice.agent, version=2)  # rotated with the stolen key
    apply_rotation(world.keyring, world.announce(RotationKind.EMERGENCY, new=thief), NOW)
    rescue = SigningIdentity.generate(world.alice.agent, version=3)
    apply_rotation(
        world.keyring,
        world.announce(RotationKind.COMPROMISED, world.operator, new=rescue),
        NOW + 60,
    )
    states = {r.kid: r.state for r in world.keyring.for_agent(world.alice.agent)}
    assert states == {
        world.alice.kid: KeyState.COMPROMISED,
        thief.kid: KeyState.COMPROMISED,
        rescue.kid: KeyState.ACTIVE,
    }
    assert (
        Verifier(world.keyring).check(world.message_from(thief, 9, NOW + 60), now=NOW + 60).reason
        is Reason.KEY_REVOKED
    )
    assert Verifier(world.keyring).check(world.message_from(rescue, 10, NOW + 60), now=NOW + 60).ok


def test_a_compromised_operator_cannot_vouch_for_itself(world: World) -> None:
    new_operator = SigningIdentity.generate(world.operator.agent, version=2)
    announcement = announce_rotation(
        world.operator.kid,
        1,
        new_operator,
        countersigner=world.operator,
        kind=RotationKind.COMPROMISED,
        now=NOW,
        sequence_num=1,
    )
    assert refusal(world.keyring, announcement) == Reason.UNAUTHORIZED


def test_someone_elses_key_cannot_be_claimed_as_a_successor(world: World) -> None:
    mallory = SigningIdentity.generate(agent_id("mallory"))
    world.keyring.add(new_key_record(mallory.agent, mallory.public_key, version=1, now=NOW - 100))
    as_alice = SigningIdentity.from_seed(
        world.alice.agent, mallory.seed, version=2
    )  # same key, alice's name
    assert (
        refusal(world.keyring, world.announce(RotationKind.SCHEDULED, new=as_alice))
        == Reason.UNAUTHORIZED
    )


def test_predated_announcements_are_refused(world: World) -> None:
    assert (
        refusal(world.keyring, world.announce(RotationKind.SCHEDULED, now=NOW + 3600))
        == Reason.FROM_FUTURE
    )


def test_a_forged_countersignature_is_refused(world: World) -> None:
    mallory = SigningIdentity.generate(world.alice.agent)  # claims alice's old kid, wrong key
    announcement = world.announce(RotationKind.SCHEDULED)
    forged_sig = announce_rotation(
        world.alice.kid,
        1,
        world.new,
        countersigner=mallory,
        kind=RotationKind.SCHEDULED,
        now=NOW,
        sequence_num=5,
    ).content["countersignature"]["sig"]
    content = {
        **announcement.content,
        "countersignature": {"kid": world.alice.kid, "sig": forged_sig},
    }
    forged = world.new.sign(
        msgspec.structs.replace(announcement, content=content, signature=msgspec.UNSET)
    )
    assert refusal(world.keyring, forged) == Reason.BAD_SIGNATURE


def test_the_envelope_must_be_signed_by_the_new_key(world: World) -> None:
    announcement = world.announce(RotationKind.SCHEDULED)
    resigned = world.alice.sign(msgspec.structs.replace(announcement, signature=msgspec.UNSET))
    assert refusal(world.keyring, resigned) == Reason.BAD_SIGNATURE
    unsigned = msgspec.structs.replace(announcement, signature=msgspec.UNSET)
    assert refusal(world.keyring, unsigned) == Reason.UNSIGNED


def test_an_agent_cannot_rotate_someone_elses_key(world: World) -> None:
    bob_new = SigningIdentity.generate(agent_id("bob"), version=2)
    announcement = announce_rotation(
        world.alice.kid,
        1,
        bob_new,
        countersigner=world.alice,
        kind=RotationKind.SCHEDULED,
        now=NOW,
        sequence_num=1,
    )
    assert refusal(world.keyring, announcement) == Reason.UNKNOWN_KEY


def test_content_that_is_not_a_rotation_is_malformed(world: World) -> None:
    announcement = world.announce(RotationKind.SCHEDULED)
    tampered = world.new.sign(
        msgspec.structs.replace(
            announcement, content={"rotation": "please"}, signature=msgspec.UNSET
        )
    )
    assert refusal(world.keyring, tampered) == Reason.MALFORMED


def test_the_announcement_is_an_ordinary_verifiable_message_once_applied(world: World) -> None:
    announcement = world.announce(RotationKind.SCHEDULED)
    assert (
        Verifier(world.keyring).check(encode_json(announcement), now=NOW).reason
        is Reason.UNKNOWN_KEY
    )
    apply_rotation(world.keyring, announcement, NOW)
    assert Verifier(world.keyring).check(encode_json(announcement), now=NOW).ok


def test_a_lent_key_cannot_rotate_the_identity_it_acts_for(world: World) -> None:
    lent = SigningIdentity.generate(world.alice.agent)
    own = world.keyring.get(world.alice.kid)
    assert own is not None
    world.keyring.add(delegated_key(lent.agent, lent.public_key, own, NOW - 10, 3600))
    announcement = announce_rotation(
        lent.kid, 1, world.new, countersigner=lent, kind=RotationKind.EMERGENCY,
        now=NOW, sequence_num=6,
    )  # fmt: skip
    assert refusal(world.keyring, announcement) == Reason.UNAUTHORIZED
    assert world.keyring.get(world.new.kid) is None

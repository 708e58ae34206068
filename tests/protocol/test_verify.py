"""The verification pipeline: one test per reason code, the modes, and the check order."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from infrafabric import (
    IFMessage,
    Keyring,
    Mode,
    Outbox,
    Reason,
    Rule,
    RuleAuthorizer,
    Signature,
    Verdict,
    Verifier,
    encode_json,
    signing_input,
)
from infrafabric.protocol.identity import b64url_encode
from infrafabric.protocol.keyring import DEFAULT_GRACE_SECONDS
from infrafabric.protocol.replay import NonceCache, SequenceWindows
from tests.conftest import NOW, plain_message

Make = Callable[..., Outbox]


def send(outbox: Outbox, now: float = NOW, **fields: Any) -> bytes:
    fields.setdefault("performative", "inform")
    fields.setdefault("receiver", "if://agent/bob")
    fields.setdefault("content", {"text": "hello"})
    return encode_json(outbox.message(now=now, **fields))


def edit(raw: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    envelope = json.loads(raw)
    change(envelope)
    return json.dumps(envelope).encode()


def unsigned(outbox: Outbox, now: float = NOW) -> bytes:
    outbox.last_sequence += 1
    message = plain_message(outbox.identity.agent, now=now, sequence_num=outbox.last_sequence)
    return encode_json(message)


def test_a_good_message_passes_every_check(keyring: Keyring, make_agent: Make) -> None:
    verdict = Verifier(keyring).check(send(make_agent("alice")), now=NOW)
    assert verdict.ok
    assert verdict.reason is None
    assert verdict.accepted
    assert isinstance(verdict.message, IFMessage)
    assert verdict.key is not None


# -- one test per reason code -------------------------------------------------------------


def test_tampered_content_is_bad_signature(keyring: Keyring, make_agent: Make) -> None:
    raw = edit(send(make_agent("alice")), lambda e: e["content"].update(text="pay mallory"))
    assert Verifier(keyring).check(raw, now=NOW).reason is Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.update(receiver="if://agent/mallory"),
        lambda e: e.update(performative="request"),
        lambda e: e.update(ttl=3600),
        lambda e: e.update(scope={"priority": "critical"}),
        lambda e: e.update(trace_id="added-later"),
    ],
    ids=["receiver", "performative", "ttl", "scope", "added-member"],
)
def test_tampered_header_is_bad_signature(
    keyring: Keyring, make_agent: Make, change: Callable[[dict[str, Any]], None]
) -> None:
    raw = edit(send(make_agent("alice")), change)
    assert Verifier(keyring).check(raw, now=NOW).reason is Reason.BAD_SIGNATURE


def test_wrong_key_is_bad_signature(keyring: Keyring, make_agent: Make) -> None:
    alice, mallory = make_agent("alice"), make_agent("mallory")
    message = plain_message(alice.identity.agent)
    # mallory signs alice's message with her own key and labels it with alice's kid
    sig = b64url_encode(mallory.identity.sign_bytes(signing_input(message)))
    forged = msgspec.structs.replace(
        message, signature=Signature(alg="ed25519", kid=alice.identity.kid, sig=sig)
    )
    assert Verifier(keyring).check(encode_json(forged), now=NOW).reason is Reason.BAD_SIGNATURE


def test_unknown_key(keyring: Keyring, make_agent: Make) -> None:
    stranger = make_agent("stranger", trusted=False)
    assert Verifier(keyring).check(send(stranger), now=NOW).reason is Reason.UNKNOWN_KEY


def test_someone_elses_kid_is_an_unknown_key(keyring: Keyring, make_agent: Make) -> None:
    alice, bob = make_agent("alice"), make_agent("bob")
    raw = edit(send(alice), lambda e: e["signature"].update(kid=bob.identity.kid))
    assert Verifier(keyring).check(raw, now=NOW).reason is Reason.UNKNOWN_KEY


def test_revoked_key(keyring: Keyring, make_agent: Make) -> None:
    alice = make_agent("alice")
    keyring.revoke(alice.identity.kid, NOW - 1)
    assert Verifier(keyring).check(send(alice), now=NOW).reason is Reason.KEY_REVOKED


def test_compromised_key(keyring: Keyring, make_agent: Make) -> None:
    alice = make_agent("alice")
    keyring.revoke(alice.identity.kid, NOW - 1, compromised=True)
    assert Verifier(keyring).check(send(alice), now=NOW).reason is Reason.KEY_REVOKED


def test_deprecated_key_inside_grace_is_accepted(keyring: Keyring, make_agent: Make) -> None:
    alice = make_agent("alice")
    keyring.deprecate(alice.identity.kid, NOW)
    later = NOW + DEFAULT_GRACE_SECONDS - 1
    verdict = Verifier(keyring).check(send(alice, later), now=later)
    assert verdict.ok
    assert "grace" in verdict.detail


def test_deprecated_key_after_grace_is_expired(keyring: Keyring, make_agent: Make) -> None:
    alice = make_agent("alice")
    keyring.deprecate(alice.identity.kid, NOW)
    later = NOW + DEFAULT_GRACE_SECONDS + 1
    assert Verifier(keyring).check(send(alice, later), now=later).reason is Reason.KEY_EXPIRED


def test_expired(keyring: Keyring, make_agent: Make) -> None:
    raw = send(make_agent("alice"), NOW - 301, ttl=300)
    assert Verifier(keyring).check(raw, now=NOW).reason is Reason.EXPIRED
    assert (
        Verifier(keyring).check(send(make_agent("bob"), NOW - 300, ttl=300), now=NOW).ok
    )  # boundary


def test_from_the_future(keyring: Keyring, make_agent: Make) -> None:
    assert (
        Verifier(keyring).check(send(make_agent("alice"), NOW + 31), now=NOW).reason
        is Reason.FROM_FUTURE
    )
    assert Verifier(keyring).check(send(make_agent("bob"), NOW + 30), now=NOW).ok  # within skew


def test_replayed_nonce(keyring: Keyring, make_agent: Make) -> None:
    alice = make_agent("alice")
    verifier = Verifier(keyring)
    first = alice.message(now=NOW, performative="inform", receiver="if://agent/bob", content={})
    assert verifier.check(encode_json(first), now=NOW).ok
    # The same nonce again, under a fresh sequence number the window would accept.
    again = alice.message(
        now=NOW, performative="inform", receiver="if://agent/bob", content={}, nonce=first.nonce
    )
    verdict = verifier.check(encode_json(again), now=NOW + 1)
    assert verdict.reason is Reason.REPLAY
    assert "nonce" in verdict.detail
    assert not verdict.accepted


def test_a_huge_sequence_jump_is_accepted_cheaply(keyring: Keyring, make_agent: Make) -> None:
    alice = make_agent("alice")
    verifier = Verifier(keyring)
    assert verifier.check(send(alice), now=NOW).ok
    alice.last_sequence = 2**53 - 2
    assert verifier.check(send(alice), now=NOW).ok
    assert verifier.sequences.highest(alice.identity.agent) == 2**53 - 1


def test_replayed_sequence_number_with_a_fresh_nonce(keyring: Keyring, make_agent: Make) -> None:
    alice = make_agent("alice")
    verifier = Verifier(keyring)
    assert verifier.check(send(alice), now=NOW).ok
    alice.last_sequence -= 1  # a buggy or malicious sender reuses number 1
    assert verifier.check(send(alice), now=NOW).reason is Reason.REPLAY


def test_out_of_sequence(keyring: Keyring, make_agent: Make) -> None:
    alice = make_agent("alice")
    verifier = Verifier(keyring, sequences=SequenceWindows(window=4))
    old = send(alice)  # sequence 1, held back in transit
    alice.last_sequence = 10
    assert verifier.check(send(alice), now=NOW).ok  # sequence 11
    assert verifier.check(old, now=NOW).reason is Reason.OUT_OF_SEQUENCE


def test_two_senders_of_one_identity_that_follow_the_clock_keep_one_order(
    keyring: Keyring, make_agent: Make
) -> None:
    """An agent and a shell command signing as it: counting by one from its start, the
    one that started first was below the other's window for good."""
    agent = make_agent("alice")
    verifier = Verifier(keyring)
    agent.last_sequence = int((NOW - 600) * 1000)  # started ten minutes ago, sent little
    shell = Outbox(agent.identity, last_sequence=int(NOW * 1000))
    assert verifier.check(send(shell, NOW + 1), now=NOW + 1).ok
    counting = Outbox(agent.identity, last_sequence=agent.last_sequence)
    assert verifier.check(send(counting, NOW + 2), now=NOW + 2).reason is Reason.OUT_OF_SEQUENCE
    agent.follow_clock = shell.follow_clock = True
    for second in range(3, 9):  # in turn, a second apart
        sender = agent if second % 2 else shell
        assert verifier.check(send(sender, NOW + second), now=NOW + second).ok
    assert agent.last_sequence == int((NOW + 7) * 1000)
    burst = [send(agent, NOW + 9) for _ in range(5)]  # faster than the clock: by one
    assert [json.loads(raw)["sequence_num"] for raw in burst] == [
        int((NOW + 9) * 1000) + n for n in range(5)
    ]
    assert all(verifier.check(raw, now=NOW + 9).ok for raw in burst)


def test_a_refusal_for_the_number_alone_names_the_highest_a_replay_does_not(
    keyring: Keyring, make_agent: Make
) -> None:
    alice = make_agent("alice")
    verifier = Verifier(keyring, sequences=SequenceWindows(window=4))
    alice.last_sequence = 10
    first = send(alice)  # 11
    assert verifier.check(first, now=NOW).ok
    again = verifier.check(first, now=NOW)  # the very bytes: its nonce seen
    assert (again.reason, again.highest) == (Reason.REPLAY, None)
    alice.last_sequence = 10
    taken = verifier.check(send(alice), now=NOW)  # 11 again, a fresh nonce
    assert (taken.reason, taken.highest) == (Reason.REPLAY, 11)
    alice.last_sequence = 1
    old = verifier.check(send(alice), now=NOW)  # 2: below the window
    assert (old.reason, old.highest) == (Reason.OUT_OF_SEQUENCE, 11)
    alice.last_sequence = 11
    assert verifier.check(send(alice), now=NOW).highest is None  # accepted: no highest


def test_no_highest_for_bytes_the_nonce_cache_cannot_vouch_for(
    keyring: Keyring, make_agent: Make
) -> None:
    """An evicted nonce, or windows restored after a restart: the very bytes accepted
    then come back refused by the window alone, and must not carry a highest (a client
    would sign the operation anew: done twice)."""
    alice = make_agent("alice")
    verifier = Verifier(keyring, nonces=NonceCache(max_entries=1))
    first, second = send(alice), send(alice, NOW + 1)
    assert verifier.check(first, now=NOW + 1).ok
    assert verifier.check(second, now=NOW + 1).ok  # the cache is full: first's nonce goes
    again = verifier.check(first, now=NOW + 1)
    assert (again.reason, again.highest) == (Reason.REPLAY, None)
    restarted = Verifier(keyring)
    window = verifier.sequences.snapshot(alice.identity.agent)
    assert window is not None
    restarted.sequences.restore(alice.identity.agent, *window)
    restarted.nonces.unknown_before(alice.identity.agent, NOW + 1)  # as ifab serve does
    replayed = restarted.check(second, now=NOW + 2)
    assert (replayed.reason, replayed.highest) == (Reason.REPLAY, None)
    alice.last_sequence -= 1  # a fresh message, sent after the restart, a number taken
    fresh = restarted.check(send(alice, NOW + 2), now=NOW + 2)
    assert (fresh.reason, fresh.highest) == (Reason.REPLAY, alice.last_sequence)


def test_reordered_messages_inside_the_window_are_accepted_once(
    keyring: Keyring, make_agent: Make
) -> None:
    alice = make_agent("alice")
    verifier = Verifier(keyring)
    first, second = send(alice), send(alice)
    assert verifier.check(second, now=NOW).ok
    assert verifier.check(first, now=NOW).ok  # overtaken on the way: still fine
    assert verifier.check(first, now=NOW).reason is Reason.REPLAY


def test_strict_window_of_one_refuses_any_reordering(keyring: Keyring, make_agent: Make) -> None:
    alice = make_agent("alice")
    verifier = Verifier(keyring, sequences=SequenceWindows(window=1))
    first, second = send(alice), send(alice)
    assert verifier.check(second, now=NOW).ok
    assert verifier.check(first, now=NOW).reason is Reason.OUT_OF_SEQUENCE


def test_oversized(keyring: Keyring, make_agent: Make) -> None:
    raw = send(make_agent("alice"), content={"blob": "x" * 70_000})
    verdict = Verifier(keyring).check(raw, now=NOW)
    assert verdict.reason is Reason.TOO_LARGE
    assert verdict.message is None
    assert Verifier(keyring, max_bytes=len(raw)).check(raw, now=NOW).ok


@pytest.mark.parametrize(
    "raw", [b"{not json", b"\x00\x01", b"[1,2]", b"null", "é".encode("latin-1")]
)
def test_malformed_json(keyring: Keyring, raw: bytes) -> None:
    assert Verifier(keyring).check(raw, now=NOW).reason is Reason.MALFORMED


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.update(sequence_num="1"),
        lambda e: e.update(ttl=1.5),
        lambda e: e.update(content="text"),
        lambda e: e.update(receiver=42),
        lambda e: e["signature"].update(sig=12),
        lambda e: e.update(
            timestamp="2026-02-30T00:00:00Z"
        ),  # the pattern passes, the calendar does not
    ],
    ids=["seq-str", "ttl-float", "content-str", "receiver-int", "sig-int", "feb-30"],
)
def test_wrong_types_are_malformed(
    keyring: Keyring, make_agent: Make, change: Callable[[dict[str, Any]], None]
) -> None:
    raw = edit(send(make_agent("alice")), change)
    assert Verifier(keyring).check(raw, now=NOW).reason is Reason.MALFORMED


def test_unsupported_version(keyring: Keyring, make_agent: Make) -> None:
    raw = edit(send(make_agent("alice")), lambda e: e.update(v="2.0"))
    assert Verifier(keyring).check(raw, now=NOW).reason is Reason.UNSUPPORTED_VERSION


def test_unauthorized(keyring: Keyring, make_agent: Make) -> None:
    rules = [
        Rule("if://agent/planner", frozenset({"request"}), ("if://agent/*",)),
        Rule("if://agent/*", frozenset({"inform"})),
    ]
    verifier = Verifier(keyring, authorizer=RuleAuthorizer(rules))
    planner, coder = make_agent("planner"), make_agent("coder")
    assert verifier.check(send(planner, performative="request"), now=NOW).ok
    assert verifier.check(send(coder, performative="inform"), now=NOW).ok
    verdict = verifier.check(send(coder, performative="request"), now=NOW)
    assert verdict.reason is Reason.UNAUTHORIZED
    assert "coder" in verdict.detail
    topic = send(planner, performative="request", receiver="if://topic/all")
    assert verifier.check(topic, now=NOW).reason is Reason.UNAUTHORIZED


# -- unsigned messages in each mode ------------------------------------------------------


def test_unsigned_in_strict_mode(keyring: Keyring, make_agent: Make) -> None:
    alice = make_agent("alice")
    for local in (False, True):
        verdict = Verifier(keyring).check(unsigned(alice), now=NOW, local=local)
        assert verdict.reason is Reason.UNSIGNED
        assert not verdict.accepted


def test_unsigned_in_permissive_mode_only_from_local_agents(
    keyring: Keyring, make_agent: Make
) -> None:
    alice = make_agent("alice")
    verifier = Verifier(keyring, mode=Mode.PERMISSIVE)
    remote = verifier.check(unsigned(alice), now=NOW, local=False)
    assert remote.reason is Reason.UNSIGNED
    assert not remote.accepted
    local = verifier.check(unsigned(alice), now=NOW, local=True)
    assert local.accepted
    assert local.reason is Reason.UNSIGNED
    assert not local.ok


def test_permissive_mode_still_rejects_forgeries(keyring: Keyring, make_agent: Make) -> None:
    raw = edit(send(make_agent("alice")), lambda e: e["content"].update(text="x"))
    verdict = Verifier(keyring, mode=Mode.PERMISSIVE).check(raw, now=NOW, local=True)
    assert verdict.reason is Reason.BAD_SIGNATURE
    assert not verdict.accepted


def test_unsigned_messages_never_move_replay_state(keyring: Keyring, make_agent: Make) -> None:
    alice = make_agent("alice")
    verifier = Verifier(keyring, mode=Mode.PERMISSIVE)
    alice.last_sequence = 1000
    assert verifier.check(unsigned(alice), now=NOW, local=True).accepted
    alice.last_sequence = 0
    assert verifier.check(send(alice), now=NOW).ok  # sequence 1 still welcome


def test_unsigned_in_audit_mode_is_accepted_and_reported(
    keyring: Keyring, make_agent: Make
) -> None:
    reported: list[Verdict] = []
    verifier = Verifier(keyring, mode=Mode.AUDIT, on_reject=reported.append)
    verdict = verifier.check(unsigned(make_agent("alice")), now=NOW)
    assert verdict.accepted
    assert verdict.reason is Reason.UNSIGNED
    assert reported == [verdict]


def test_audit_mode_accepts_what_parses_and_reports_every_would_be_rejection(
    keyring: Keyring, make_agent: Make
) -> None:
    reported: list[Verdict] = []
    verifier = Verifier(keyring, mode=Mode.AUDIT, on_reject=reported.append)
    alice = make_agent("alice")
    good = send(alice)
    forged = edit(send(alice), lambda e: e["content"].update(text="x"))
    assert verifier.check(good, now=NOW).ok
    assert verifier.check(forged, now=NOW).accepted
    assert verifier.check(good, now=NOW).accepted  # replay, accepted in audit mode
    garbage = verifier.check(b"garbage", now=NOW)
    assert not garbage.accepted  # nothing to act on
    assert [v.reason for v in reported] == [Reason.BAD_SIGNATURE, Reason.REPLAY, Reason.MALFORMED]
    assert verifier.counts[None] == 1
    assert verifier.counts[Reason.REPLAY] == 1


# -- order of checks -----------------------------------------------------------------------


def test_a_forged_message_cannot_poison_the_nonce_cache(keyring: Keyring, make_agent: Make) -> None:
    alice = make_agent("alice")
    verifier = Verifier(keyring)
    genuine = send(alice)
    # The attacker saw the nonce and sends a forgery with it before the genuine message arrives.
    forged = edit(genuine, lambda e: e["content"].update(text="forged"))
    assert verifier.check(forged, now=NOW).reason is Reason.BAD_SIGNATURE
    assert verifier.check(genuine, now=NOW).ok
    assert len(verifier.nonces) == 1


def test_cheap_checks_run_first(keyring: Keyring, make_agent: Make) -> None:
    stranger = make_agent("stranger", trusted=False)
    raw = edit(send(stranger, NOW - 1000), lambda e: e["content"].update(x=1))
    assert (
        Verifier(keyring).check(raw, now=NOW).reason is Reason.EXPIRED
    )  # before UNKNOWN_KEY, BAD_SIGNATURE


def test_a_nonce_is_forgotten_once_its_message_would_be_expired(
    keyring: Keyring, make_agent: Make
) -> None:
    alice = make_agent("alice")
    verifier = Verifier(keyring, nonces=NonceCache(max_entries=10))
    for _ in range(25):
        assert verifier.check(send(alice, ttl=1), now=NOW).ok
    assert len(verifier.nonces) == 10
    assert verifier.nonces.evictions == 15
    assert verifier.check(send(alice, NOW + 10, ttl=1), now=NOW + 10).ok
    assert len(verifier.nonces) == 1  # the expired ones were pruned


def test_text_input_is_accepted_too(keyring: Keyring, make_agent: Make) -> None:
    raw = send(make_agent("alice"))
    assert Verifier(keyring).check(raw.decode(), now=NOW).ok
    assert Verifier(keyring).check("\ud800", now=NOW).reason is Reason.MALFORMED

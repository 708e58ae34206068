"""Session challenges and tokens: MACed, so any server of a fabric accepts them."""

from __future__ import annotations

from infrafabric import Keyring, SigningIdentity, agent_id, new_key_record
from infrafabric.protocol.identity import b64url_decode, b64url_encode
from infrafabric.server.auth import AuthError, Sessions, auth_input

NOW = 1_800_000_000.0


def setup() -> tuple[Keyring, SigningIdentity]:
    keyring = Keyring()
    alice = SigningIdentity.generate(agent_id("alice"))
    keyring.add(new_key_record(alice.agent, alice.public_key, version=1, now=NOW - 60))
    return keyring, alice


def answer(sessions: Sessions, alice: SigningIdentity, challenge: str, now: float = NOW) -> str:
    signature = b64url_encode(alice.sign_bytes(auth_input(b64url_decode(challenge), alice.agent)))
    return sessions.token(alice.agent, alice.kid, challenge, signature, now)


def refused(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except AuthError as exc:
        return exc.code
    raise AssertionError("not refused")


def test_a_challenge_from_one_server_is_answered_to_another_and_its_token_opens_both() -> None:
    keyring, alice = setup()
    one, two = Sessions(keyring, "operator token"), Sessions(keyring, "operator token")
    token = answer(two, alice, one.challenge(alice.agent, NOW))
    assert one.agent_of(token, NOW + 10) == alice.agent
    assert two.agent_of(token, NOW + 10) == alice.agent
    assert one.agent_of(token, NOW + 901) is None  # 15 minutes, then gone
    other_fabric = Sessions(keyring, "another fabric's token")
    assert other_fabric.agent_of(token, NOW) is None


def test_forged_tampered_expired_and_reused_challenges_and_tokens_are_refused() -> None:
    keyring, alice = setup()
    spent: set[str] = set()

    def used_once(challenge: str, until: float, now: float) -> bool:  # the shared record
        if challenge in spent:
            return False
        spent.add(challenge)
        return True

    one = Sessions(keyring, "t", used_once=used_once)
    two = Sessions(keyring, "t", used_once=used_once)
    challenge = one.challenge(alice.agent, NOW)
    answer(one, alice, challenge)
    assert refused(lambda: answer(two, alice, challenge)) == "BAD_CHALLENGE"  # spent
    late = one.challenge(alice.agent, NOW)
    assert refused(lambda: answer(one, alice, late, NOW + 61)) == "BAD_CHALLENGE"
    bob = SigningIdentity.generate(agent_id("bob"))
    for_bob = one.challenge(bob.agent, NOW)  # answered as alice: bound to bob
    assert refused(lambda: answer(one, alice, for_bob)) == "BAD_CHALLENGE"
    raw = bytearray(b64url_decode(one.challenge(alice.agent, NOW)))
    raw[20] ^= 1  # a later expiry, say
    assert refused(lambda: answer(one, alice, b64url_encode(bytes(raw)))) == "BAD_CHALLENGE"
    token = answer(one, alice, one.challenge(alice.agent, NOW))
    body, mac = token.split(".")
    forged_body = bytearray(b64url_decode(body))
    forged_body[-1] ^= 1  # another agent's name
    assert one.agent_of(b64url_encode(bytes(forged_body)) + "." + mac, NOW) is None
    for junk in ("", ".", "a.b.c", "!!.!!", "x" * 5000, body):
        assert one.agent_of(junk, NOW) is None


def test_a_token_that_is_not_ascii_is_simply_not_the_admin_token() -> None:
    """``hmac.compare_digest`` raised TypeError on such a str: a 500 for any header."""
    keyring, _ = setup()
    sessions = Sessions(keyring, "operator token")
    assert sessions.is_admin("operator token")
    for token in ("\xe9t\xe9", "op\u00e9rator token", "\udce9"):
        assert not sessions.is_admin(token)
        assert sessions.agent_of(token, NOW) is None
        assert not sessions.is_operator_session(token, NOW)


def test_a_token_and_an_operator_session_say_when_they_expire() -> None:
    """A WebSocket lives until then (the server reads it at the handshake and renewal)."""
    keyring, alice = setup()
    sessions = Sessions(keyring, "operator token", token_seconds=30.0)
    token = answer(sessions, alice, sessions.challenge(alice.agent, NOW))
    assert sessions.token_expiry(token, NOW + 10) == (alice.agent, NOW + 30)
    assert sessions.token_expiry(token, NOW + 31) is None
    assert sessions.token_expiry(token[:-2], NOW) is None  # forged
    session = sessions.operator_session(NOW)
    until = sessions.operator_session_expiry(session, NOW)
    assert until is not None
    assert until > NOW + 3600
    assert sessions.operator_session_expiry(token, NOW) is None  # a token is no session
    assert sessions.token_expiry(session, NOW) is None  # nor a session a token

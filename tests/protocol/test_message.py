"""IFMessage v2.1: construction, validation, encodings and the signing input."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from infrafabric import (
    SIGNING_PREFIX,
    Hazard,
    IFMessage,
    MessageError,
    Provenance,
    Scope,
    Signature,
    agent_id,
    build_message,
    decode_json,
    decode_msgpack,
    encode_json,
    encode_msgpack,
    signing_input,
)
from infrafabric.protocol.message import (
    PERFORMATIVES,
    decode_with_signing_input,
    new_message_id,
    new_nonce,
)
from tests.conftest import NOW, plain_message


def minimal(**overrides: Any) -> dict[str, Any]:
    """A valid wire envelope as a plain dict (unsigned)."""
    envelope: dict[str, Any] = {
        "v": "2.1",
        "id": "01JABCDEFGHJKMNPQRSTVWXYZ0",
        "performative": "inform",
        "sender": "if://agent/alice",
        "receiver": "if://agent/bob",
        "conversation_id": "if://conversation/c-1",
        "content": {"text": "hello"},
        "timestamp": "2026-11-23T12:00:00.000Z",
        "sequence_num": 1,
        "nonce": "00112233445566778899aabb",
        "ttl": 300,
        "scope": {"priority": "medium"},
    }
    envelope.update(overrides)
    return {key: value for key, value in envelope.items() if value is not ...}


def wire(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope).encode()


def test_build_message_fills_defaults() -> None:
    message = build_message(
        performative="request",
        sender=agent_id("alice"),
        receiver="if://topic/tasks/*",
        content={},
        now=NOW,
        sequence_num=7,
    )
    assert message.v == "2.1"
    assert message.ttl == 300
    assert message.scope == Scope(priority="medium")
    assert message.timestamp == "2026-11-23T12:00:00.000Z"
    assert message.receivers == ("if://topic/tasks/*",)
    assert len(message.nonce) == 24
    assert message.conversation_id.startswith("if://conversation/")
    assert not message.is_signed
    assert message.expires_at == NOW + 300


def test_every_optional_field_round_trips() -> None:
    message = build_message(
        performative="escalate",
        sender=agent_id("alice"),
        receiver=["if://agent/bob", "if://service/governor"],
        content={"confidence": 0.1, "nested": [1, {"a": None}]},
        now=NOW,
        sequence_num=2,
        scope=Scope(priority="critical", mission_id="m-1", workflow="review", domain="code"),
        hazard=Hazard(
            type="data-loss", severity="high", auto_escalate=True, rationale="drops a table"
        ),
        trace_id="trace-9",
        provenance=Provenance(model="gpt-x", tokens_in=10, tokens_out=20, cost_usd=0.002),
        citation_ids=["doc-1", "doc-2"],
    )
    assert decode_json(encode_json(message)) == message
    assert decode_msgpack(encode_msgpack(message)) == message


def test_messages_are_immutable() -> None:
    message = decode_json(wire(minimal()))
    with pytest.raises(AttributeError):
        message.sender = "if://agent/mallory"  # type: ignore[misc]


def test_the_wire_form_keeps_exactly_the_members_sent() -> None:
    envelope = minimal(citation_ids=[], trace_id="t")
    assert json.loads(encode_json(decode_json(wire(envelope)))) == envelope


def test_every_performative_is_accepted() -> None:
    assert len(PERFORMATIVES) == 15
    for performative in PERFORMATIVES:
        assert decode_json(wire(minimal(performative=performative))).performative == performative


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"performative": "shout"}, "performative"),
        ({"sender": "alice"}, "sender"),
        ({"sender": "if://agent/alice\n"}, "sender"),  # Python's `$` would let this through
        ({"receiver": "mailto:bob"}, "receiver"),
        ({"receiver": "if://agent/bob\n"}, "receiver"),
        ({"receiver": []}, "receiver"),
        ({"receiver": ["if://agent/b"] * 65}, "receiver"),
        ({"nonce": "xyz"}, "nonce"),
        ({"nonce": "00112233445566778899AABB"}, "nonce"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": 3601}, "ttl"),
        ({"ttl": "300"}, "ttl"),
        ({"sequence_num": 0}, "sequence_num"),
        ({"sequence_num": 2**53}, "sequence_num"),
        ({"timestamp": "2026-11-23 12:00:00Z"}, "timestamp"),
        ({"timestamp": "2026-11-23T12:00:00+00:00"}, "timestamp"),
        ({"timestamp": "٢٠٢٦-11-23T12:00:00Z"}, "timestamp"),
        ({"content": []}, "content"),
        ({"scope": {}}, "scope"),
        ({"scope": {"priority": "urgent"}}, "priority"),
        ({"hazard": None}, "hazard"),  # optional members are absent, never null
        ({"hazard": {"type": "x", "severity": "high"}}, "auto_escalate"),
        ({"provenance": {"model": "m", "cost_usd": -1}}, "cost_usd"),
        ({"signature": {"alg": "rsa", "kid": "A" * 16, "sig": "A" * 86}}, "alg"),
        (
            {"signature": {"alg": "ed25519", "kid": "A" * 16, "sig": "B" * 86}},
            "sig",
        ),  # non-canonical base64url
        ({"extra": 1}, "extra"),
        ({"v": ...}, "v"),
        ({"scope": ...}, "scope"),
        ({"ttl": ...}, "ttl"),
    ],
)
def test_invalid_envelopes_are_malformed(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MessageError) as caught:
        decode_json(wire(minimal(**overrides)))
    assert caught.value.reason == "MALFORMED"
    assert fragment in caught.value.detail


def test_keyword_construction_validates_too() -> None:
    with pytest.raises(MessageError, match="performative"):
        IFMessage(
            **{**msgspec.structs.asdict(decode_json(wire(minimal()))), "performative": "shout"}
        )  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="receiver"):
        plain_message(receiver="bob")


def test_other_versions_are_unsupported_not_malformed() -> None:
    with pytest.raises(MessageError) as caught:
        decode_json(wire(minimal(v="3.0")))
    assert caught.value.reason == "UNSUPPORTED_VERSION"


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[]", b'"x"', b"{", b"\xff\xfe", b'{"v":"2.1"}', b"1e999"],
)
def test_garbage_is_malformed(data: bytes) -> None:
    with pytest.raises(MessageError) as caught:
        decode_json(data)
    assert caught.value.reason == "MALFORMED"


@pytest.mark.parametrize(
    "content",
    [{"n": 2**53}, {"n": float(2**60)}, {"deep": json.loads("[" * 70 + "]" * 70)}],
    ids=["unsafe-int", "unsafe-float", "too-deep"],
)
def test_content_without_a_canonical_form_is_malformed(content: dict[str, Any]) -> None:
    with pytest.raises(MessageError, match="canonical"):
        decode_json(wire(minimal(content=content)))


def test_agent_names_are_checked() -> None:
    assert agent_id("planner-1.b_c") == "if://agent/planner-1.b_c"
    for bad in ["", "-x", "a/b", "a b", "x" * 65, "é"]:
        with pytest.raises(MessageError):
            agent_id(bad)


def test_signing_input_is_prefix_plus_jcs_of_the_body_without_signature() -> None:
    envelope = minimal(content={"b": 1.5, "a": "€", "z": [True, None]})
    message = decode_json(wire(envelope))
    expected = SIGNING_PREFIX + rfc8785.dumps(envelope)  # independent canonicalizer
    assert signing_input(message) == expected
    signed = msgspec.structs.replace(
        message, signature=Signature(alg="ed25519", kid="A" * 16, sig="A" * 86)
    )
    assert signing_input(signed) == expected


# -- duplicate member names (I-JSON) ----------------------------------------------------


def test_duplicate_envelope_members_are_refused() -> None:
    raw = wire(minimal()).replace(
        b'"sender": "if://agent/alice"', b'"sender": "if://agent/alice", "sender": "if://agent/eve"'
    )
    with pytest.raises(MessageError, match="duplicate"):
        decode_json(raw)


def test_duplicate_content_members_are_refused() -> None:
    raw = wire(minimal(content={"amount": 1})).replace(
        b'{"amount": 1}', b'{"amount": 1, "amount": 1000}'
    )
    with pytest.raises(MessageError, match="duplicate"):
        decode_json(raw)


@pytest.mark.parametrize(
    ("find", "replace"),
    [
        (
            b'"priority": "medium"',
            b'"priority": "medium", "priority": "critical"',
        ),  # envelope member
        (b'"deep": {"k": 1}', b'"deep": {"k": 1, "k": 2}'),  # nested in content
        (b'[{"k": 1}]', b'[{"k": 1, "k": 1}]'),  # inside an array, same value twice
    ],
    ids=["scope", "nested-content", "in-array"],
)
def test_duplicates_are_refused_at_any_depth(find: bytes, replace: bytes) -> None:
    raw = wire(minimal(content={"deep": {"k": 1}, "list": [{"k": 1}]}))
    assert find in raw
    with pytest.raises(MessageError, match="duplicate"):
        decode_json(raw.replace(find, replace))


def test_keyword_construction_of_parts_validates_too() -> None:
    with pytest.raises(MessageError, match="priority"):
        Scope(priority="urgent")  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="severity"):
        Hazard(type="x", severity="meh", auto_escalate=False)  # type: ignore[arg-type]


def test_escaped_colons_take_the_exact_path() -> None:
    # An escaped colon lowers the raw colon count by one, a duplicate raises it by one:
    # the exact parser must see through the pair.
    raw = wire(minimal(content={"a": "x:y", "b": 1})).replace(b'"x:y"', b'"x\\u003ay"')
    assert decode_json(raw).content == {"a": "x:y", "b": 1}
    forged = raw.replace(b'"b": 1', b'"b": 1, "b": 2')
    with pytest.raises(MessageError, match="duplicate"):
        decode_json(forged)


# "~" stands for a colon that the test may write escaped (\u003a) in the raw JSON.
json_leaf = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(alphabet='ab:~\\"{}[],')
json_names = st.text(alphabet="ab:~", max_size=3)
json_tree = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_names, inner, max_size=4),
    max_leaves=20,
)


@given(content=st.dictionaries(json_names, json_tree, max_size=5), data=st.data())
def test_duplicate_detection_agrees_with_an_exact_parser(
    content: dict[str, Any], data: st.DataObject
) -> None:
    raw = wire(minimal(content=content))
    text = raw.decode()
    if data.draw(st.booleans()) and content:
        # duplicate one content member by splicing it in again
        name = data.draw(st.sampled_from(sorted(content)))
        member = json.dumps({name: content[name]})[1:-1]
        text = text.replace('"content": {', '"content": {' + member + ", ", 1)
    text = text.replace("~", "\\u003a" if data.draw(st.booleans()) else ":")
    pairs_seen: list[bool] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        pairs_seen.append(len(dict(pairs)) != len(pairs))
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    has_duplicates = any(pairs_seen)
    if has_duplicates:
        with pytest.raises(MessageError, match="duplicate"):
            decode_json(text.encode())
    else:
        assert decode_json(text.encode()).content == json.loads(text)["content"]


def test_decode_with_signing_input_returns_the_same_bytes_as_signing_input() -> None:
    message, data = decode_with_signing_input(wire(minimal()))
    assert data == signing_input(message)


def test_fresh_ids_and_nonces_differ() -> None:
    assert len({new_message_id() for _ in range(1000)}) == 1000
    assert len({new_nonce() for _ in range(1000)}) == 1000
    assert all(len(new_message_id()) == 26 for _ in range(10))


def test_a_message_id_spells_its_millisecond_first_in_crockford_base32() -> None:
    """48 bits of milliseconds then 80 random bits: the first 10 characters (50 bits, two
    of them zero) are the time, so ids sort by when they were made."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    before = int(time.time() * 1000)
    made = new_message_id()
    after = int(time.time() * 1000)
    value = 0
    for character in made:
        value = value * 32 + alphabet.index(character)
    assert value < 1 << 128
    assert before <= value >> 80 <= after


@pytest.mark.parametrize(
    "content",
    [{"x": object()}, {"x": {1, 2}}, {"x": float("nan")}, {"x": 2**60}],
    ids=["object", "set", "nan", "unsafe-int"],
)
def test_built_messages_must_have_signable_content(content: dict[str, Any]) -> None:
    with pytest.raises(MessageError):
        plain_message(content=content)


def test_deep_or_invalid_utf8_input_is_malformed_not_a_crash() -> None:
    deep = wire(minimal(content={"x": 0})).replace(
        b'{"x": 0}', b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    )
    with pytest.raises(MessageError, match="deep"):
        decode_json(deep)
    with pytest.raises(MessageError, match="UTF-8"):
        decode_json(wire(minimal()).replace(b"hello", b"hel\x80lo"))
    with pytest.raises(MessageError):
        decode_msgpack(b"\x91" * 5000 + b"\x90")


def test_built_messages_own_a_copy_of_their_content() -> None:
    content: dict[str, Any] = {"items": [1.0, -0.0, 2.5, (1, 2)], "nested": {"k": "v"}}
    message = plain_message(content=content)
    assert message.content == {"items": [1.0, -0.0, 2.5, [1, 2]], "nested": {"k": "v"}}
    before = signing_input(message)
    assert b'"items":[1,0,2.5,[1,2]]' in before  # RFC 8785: 1.0 prints as 1, -0.0 as 0
    content["nested"]["k"] = "changed after building"
    assert message.content["nested"]["k"] == "v"
    assert signing_input(message) == before


def test_integral_doubles_sign_as_integers_and_infinity_is_refused() -> None:
    as_int = decode_json(wire(minimal(content={"a": 1, "b": 0.5})))
    as_double = decode_json(wire(minimal(content={"a": 1.0, "b": 0.5})))
    assert as_double.content == {"a": 1.0, "b": 0.5}
    assert signing_input(as_double) == signing_input(as_int)
    with pytest.raises(MessageError, match="out of range"):
        decode_json(wire(minimal(content={"a": 1.5})).replace(b"1.5", b"1e999"))


def test_non_finite_costs_are_refused_everywhere() -> None:
    with pytest.raises(MessageError, match="cost_usd"):
        plain_message(provenance=Provenance(model="m", cost_usd=float("inf")))
    with pytest.raises(MessageError, match="cost_usd"):
        decode_json(
            wire(minimal(provenance={"model": "m", "cost_usd": 1.5})).replace(b"1.5", b"1e300")
        )
    message = plain_message(provenance=Provenance(model="m", cost_usd=0.5))
    packed = encode_msgpack(message).replace(
        b"\xcb?\xe0\x00\x00\x00\x00\x00\x00", b"\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00"
    )
    with pytest.raises(MessageError):
        decode_msgpack(packed)  # 0.5 replaced by infinity on the MessagePack side


def test_content_depth_counts_the_envelope_around_it() -> None:
    deepest: Any = 0
    for _ in range(62):
        deepest = [deepest]
    assert signing_input(plain_message(content={"x": deepest}))  # envelope + content + 62 = 64
    with pytest.raises(MessageError, match="nesting"):
        plain_message(content={"x": [deepest]})

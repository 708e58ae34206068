"""Fuzzing the verifier: whatever the bytes, it returns a Verdict, never raises, and never
accepts a message whose signed meaning differs from what the sender signed."""

from __future__ import annotations

import json
from typing import Any

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from infrafabric import (
    IFMessage,
    Keyring,
    Mode,
    Outbox,
    Reason,
    SigningIdentity,
    Verdict,
    Verifier,
    agent_id,
    encode_json,
    new_key_record,
    signing_input,
)
from tests.conftest import NOW

ALICE = Outbox(SigningIdentity.generate(agent_id("alice")))
KEYRING = Keyring(
    [new_key_record(ALICE.identity.agent, ALICE.identity.public_key, version=1, now=NOW - 60)]
)
ORIGINAL = ALICE.message(
    now=NOW,
    performative="request",
    receiver=["if://agent/bob", "if://topic/tasks/*"],
    content={"task": "review PR 17", "budget": 1.25, "tags": ["a", "b"], "n": None, "é": "ü"},
    trace_id="t-1",
)
WIRE = encode_json(ORIGINAL)


def independent_canonical(message: IFMessage) -> bytes:
    body = json.loads(encode_json(message))
    body.pop("signature", None)
    return rfc8785.dumps(body)


ORIGINAL_CANONICAL = independent_canonical(ORIGINAL)
assert signing_input(ORIGINAL) == b"IFMessage-v2.1-signature\n" + ORIGINAL_CANONICAL

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)


def check(raw: bytes | str, mode: Mode = Mode.STRICT, local: bool = False) -> Verdict:
    verdict = Verifier(KEYRING, mode=mode).check(raw, now=NOW, local=local)
    assert isinstance(verdict, Verdict)
    assert verdict.reason is None or isinstance(verdict.reason, Reason)
    if verdict.accepted and verdict.reason is None:
        assert verdict.message is not None
        # Accepted with every check passed: it must mean exactly what alice signed, judged
        # by an independent canonicalizer (the rfc8785 package) on the decoded value.
        assert independent_canonical(verdict.message) == ORIGINAL_CANONICAL
    return verdict


@settings(max_examples=3000)
@given(st.binary(max_size=2048))
def test_random_bytes(raw: bytes) -> None:
    for mode in Mode:
        check(raw, mode, local=True)


@settings(max_examples=3000)
@given(st.data())
def test_mutated_bytes(data: st.DataObject) -> None:
    raw = bytearray(WIRE)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and position < len(raw):
            raw[position] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "insert":
            raw[position:position] = data.draw(st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del raw[position : position + data.draw(st.integers(1, 4))]
        else:
            del raw[position:]
    check(bytes(raw))


@settings(max_examples=3000)
@given(st.data())
def test_mutated_members(data: st.DataObject) -> None:
    envelope: dict[str, Any] = json.loads(WIRE)
    target: dict[str, Any] = envelope
    path = data.draw(st.sampled_from([[], ["content"], ["scope"], ["signature"]]))
    for key in path:
        target = target[key]
    action = data.draw(st.sampled_from(["replace", "add", "remove"]))
    names = sorted(target)
    if action == "replace" and names:
        target[data.draw(st.sampled_from(names))] = data.draw(json_values)
    elif action == "add":
        target[data.draw(st.text(max_size=12))] = data.draw(json_values)
    elif names:
        del target[data.draw(st.sampled_from(names))]
    try:
        raw = json.dumps(envelope, ensure_ascii=data.draw(st.booleans()))
    except ValueError:
        return  # not JSON (lone surrogates with ensure_ascii=False are fine; NaN is allowed by json)
    check(raw)
    check(raw.encode("utf-8", "surrogatepass"), Mode.AUDIT)


@settings(max_examples=500)
@given(st.integers(1, 5000))
def test_deep_nesting_and_long_inputs(depth: int) -> None:
    nested = ("[" * depth + "]" * depth).encode()
    check(WIRE.replace(b'"tags":["a","b"]', b'"tags":' + nested))
    check(b'{"content":' * depth)


def test_the_original_is_accepted() -> None:
    assert check(WIRE).ok

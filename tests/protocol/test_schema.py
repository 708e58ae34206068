"""schemas/ifmessage-2.1.json is published for other languages: it must accept and refuse
what the Python model accepts and refuses (beyond the limits its description lists)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError, validators

from infrafabric import MessageError, decode_json, encode_json
from infrafabric.protocol import patterns
from infrafabric.protocol.patterns import python_pattern
from tests.protocol.test_message import minimal
from tests.protocol.test_verify_fuzz import ORIGINAL

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "ifmessage-2.1.json").read_text())


def _ecma_pattern(
    validator: Any, pattern: str, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    # JSON Schema patterns are ECMA-262, where `$` ends the input; Python's `re` also lets
    # `$` match before a final newline, so the stock validator would be more lenient.
    if isinstance(instance, str) and re.search(python_pattern(pattern), instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})
VALIDATOR = EcmaValidator(SCHEMA)


def schema_accepts(envelope: Any) -> bool:
    return VALIDATOR.is_valid(envelope)


def model_accepts(envelope: Any) -> bool:
    try:
        decode_json(json.dumps(envelope).encode())
    except MessageError:
        return False
    return True


def test_the_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)


def _schema_patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern":
                yield value
            else:
                yield from _schema_patterns(value)
    elif isinstance(node, list):
        for item in node:
            yield from _schema_patterns(item)


def test_schema_patterns_are_the_code_patterns() -> None:
    in_code = {value for name, value in vars(patterns).items() if name.endswith("_PATTERN")}
    in_code.discard(patterns.PUBLIC_KEY_PATTERN)  # keyring records, not envelopes
    assert set(_schema_patterns(SCHEMA)) == in_code


def test_signed_messages_are_valid() -> None:
    assert schema_accepts(json.loads(encode_json(ORIGINAL)))
    assert schema_accepts(minimal())


@pytest.mark.parametrize(
    "overrides",
    [
        {"performative": "shout"},
        {"sender": "if://agent/alice\n"},
        {"receiver": []},
        {"receiver": ["if://agent/ok", "bad"]},
        {"nonce": "00112233445566778899AABB"},
        {"ttl": 0},
        {"sequence_num": 2**53},
        {"hazard": None},
        {"scope": {}},
        {"extra": 1},
        {"v": "2.0"},
        {"signature": {"alg": "ed25519", "kid": "A" * 16, "sig": "B" * 86}},
    ],
)
def test_schema_and_model_refuse_the_same_examples(overrides: dict[str, Any]) -> None:
    envelope = minimal(**overrides)
    assert not schema_accepts(envelope)
    assert not model_accepts(envelope)


# Values that are valid for some members and not others, so mutations land on both sides.
interesting = st.sampled_from(
    [
        None,
        True,
        0,
        1,
        -1,
        300,
        3601,
        2**53 - 1,
        1.5,
        "",
        "x",
        "2.1",
        "inform",
        "shout",
        "if://agent/bob",
        "if://agent/bob\n",
        "if://topic/a/*/b",
        "if://service/gov",
        "if://conversation/c",
        "2026-11-23T12:00:00Z",
        "2026-11-23T12:00:00.123456789Z",
        "00112233445566778899aabb",
        "A" * 16,
        "A" * 86,
        "low",
        "critical",
        "ed25519",
        [],
        ["if://agent/bob"],
        ["x"],
        {},
        {"priority": "low"},
        {"priority": "low", "domain": ""},
        {"model": "m", "cost_usd": 0},
        {"type": "t", "severity": "high", "auto_escalate": False},
        {"alg": "ed25519", "kid": "A" * 16, "sig": "A" * 86},
    ]
)
member_names = st.sampled_from([*sorted(SCHEMA["properties"]), "unknown"])


@settings(max_examples=2000)
@given(st.lists(st.tuples(member_names, interesting | st.just(...)), min_size=1, max_size=3))
def test_schema_and_model_agree_on_mutated_envelopes(changes: list[tuple[str, Any]]) -> None:
    envelope = copy.deepcopy(minimal())
    for name, value in changes:
        if value is ...:
            envelope.pop(name, None)
        else:
            envelope[name] = value
    assert schema_accepts(envelope) == model_accepts(envelope), envelope


def test_integers_written_as_decimals_are_a_documented_difference() -> None:
    envelope = minimal(ttl=300.0)
    assert schema_accepts(envelope)  # JSON Schema: 300.0 is an integer
    assert not model_accepts(envelope)  # the model: integers are written as integers
    assert "300.0" in SCHEMA["description"]

"""RFC 8785 canonicalization: the RFC's vectors, the reference test data, and a
differential property test against the independent ``rfc8785`` package."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import example, given
from hypothesis import strategies as st

from infrafabric.errors import CanonicalizationError
from infrafabric.protocol.canonical import (
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    canonical_json,
    canonical_json_of_data,
    format_number,
)

VECTORS = Path(__file__).parent / "vectors"
EXAMPLES = json.loads((VECTORS / "rfc8785_examples.json").read_text())
NUMBERS = json.loads((VECTORS / "rfc8785_numbers.json").read_text())

safe_integers = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
finite_floats = st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda x: not MAX_SAFE_INTEGER < abs(x) < 1e21  # printed as unsafe integers: refused
)
# Names around U+E000 and beyond the BMP are where UTF-16 order differs from code point order.
tricky_text = st.text(
    st.characters(codec="utf-8")
    | st.sampled_from(["\ue000", "\uffff", "\U0001f600", "\U00010000", "\u20ac", "\r", "\x7f"])
)
json_values = st.recursive(
    st.none() | st.booleans() | safe_integers | finite_floats | tricky_text,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(tricky_text, inner, max_size=6),
    max_leaves=40,
)


@pytest.mark.parametrize("case", EXAMPLES, ids=[case["name"] for case in EXAMPLES])
def test_rfc_and_reference_examples(case: dict[str, str]) -> None:
    assert canonical_json(json.loads(case["input"])) == bytes.fromhex(case["expected_hex"])


FINITE = [row for row in NUMBERS if row["expected"] is not None]


@pytest.mark.parametrize("row", FINITE, ids=[row["ieee_hex"] for row in FINITE])
def test_appendix_b_number_serialization(row: dict[str, str]) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(row["ieee_hex"]))
    assert format_number(value) == row["expected"]
    if MAX_SAFE_INTEGER < abs(value) < 1e21:
        # Documents refuse these: "9007199254740992" reads back as an unsafe integer.
        with pytest.raises(CanonicalizationError, match="beyond 2"):
            canonical_json([value])
    else:
        assert canonical_json([value]) == f"[{row['expected']}]".encode()


@pytest.mark.parametrize(
    "row", [r for r in NUMBERS if r["expected"] is None], ids=lambda r: r["ieee_hex"]
)
def test_appendix_b_non_finite_numbers_have_no_form(row: dict[str, str]) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(row["ieee_hex"]))
    with pytest.raises(CanonicalizationError):
        canonical_json(value)


@given(json_values)
@example({"\ue000": 1, "\U0001f600": 2, "a": 3})
@example([1e21, 1e-7, 9007199254740991.0, -0.0, 5e-324, 1.7976931348623157e308])
def test_matches_the_independent_rfc8785_package(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@given(json_values)
def test_canonical_form_is_a_fixed_point(value: Any) -> None:
    once = canonical_json(value)
    assert canonical_json(json.loads(once)) == once


@given(finite_floats)
def test_numbers_round_trip_exactly(value: float) -> None:
    assert float(format_number(value)) == value


@given(st.dictionaries(tricky_text, st.none(), min_size=2, max_size=8))
def test_members_sorted_by_utf16_code_units(members: dict[str, None]) -> None:
    names = list(json.loads(canonical_json(members)))
    assert names == sorted(members, key=lambda name: name.encode("utf-16-be"))


def test_supplementary_characters_sort_before_the_private_use_area() -> None:
    # U+1F600 is D83D DE00 in UTF-16, which sorts before U+E000 although its code point is higher.
    assert canonical_json({"\ue000": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ue000":1}'.encode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("\u2028\u2029\x7f/<", '"\u2028\u2029\x7f/<"'),  # literal, not escaped
        ("\b\t\n\f\r", r'"\b\t\n\f\r"'),
        ("\x00\x1f", r'"\u0000\u001f"'),  # lowercase hex
        ('"\\', r'"\"\\"'),
        (True, "true"),
        (None, "null"),
        ((1, 2), "[1,2]"),
        (-0.0, "0"),
        (1.0, "1"),
        (MAX_SAFE_INTEGER, str(MAX_SAFE_INTEGER)),
    ],
)
def test_scalars(value: Any, expected: str) -> None:
    assert canonical_json(value) == expected.encode()


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        MAX_SAFE_INTEGER + 1,
        -MAX_SAFE_INTEGER - 1,
        {1: "non-string key"},
        "\ud800 lone surrogate",
        {"set": {1, 2}},
        b"bytes",
        float(2**53),
        -1e20,
    ],
    ids=[
        "nan",
        "inf",
        "-inf",
        "2**53",
        "-2**53",
        "int key",
        "surrogate",
        "set",
        "bytes",
        "2.0**53",
        "-1e20",
    ],
)
def test_values_without_a_canonical_form_are_refused(value: Any) -> None:
    with pytest.raises(CanonicalizationError):
        canonical_json(value)


def _nested(depth: int) -> Any:
    value: Any = 0
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def test_nesting_is_bounded() -> None:
    assert canonical_json(_nested(MAX_DEPTH))
    with pytest.raises(CanonicalizationError, match="nesting"):
        canonical_json(_nested(MAX_DEPTH + 1))


def test_subclasses_serialize_as_their_base_type() -> None:
    class Name(str):
        def __str__(self) -> str:
            return "wrong"

    class Count(int):
        pass

    assert (
        canonical_json({"n": Name("right"), "c": Count(3), "b": bool(1)})
        == b'{"b":true,"c":3,"n":"right"}'
    )


def test_format_number_refuses_booleans() -> None:
    with pytest.raises(CanonicalizationError):
        format_number(True)


# -- the fast path for JSON data --------------------------------------------------------

any_float = st.floats(allow_nan=False, allow_infinity=False)
escapes = st.text(
    st.sampled_from(['"', "\\", "[", "]", "{", "}", "\n", "\x01", "a", "\ue000", "é"]), max_size=6
)
data_values = st.recursive(
    st.none() | st.booleans() | st.integers() | any_float | escapes | tricky_text,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(escapes | tricky_text, inner, max_size=5)
    ),
    max_leaves=40,
)


def _same_outcome(value: Any) -> None:
    try:
        expected = canonical_json(value)
    except CanonicalizationError:
        with pytest.raises(CanonicalizationError):
            canonical_json_of_data(value)
    else:
        assert canonical_json_of_data(value) == expected


@given(data_values)
@example([1.0, -0.0, 1e16, 1e21, 1.5e-7, 0.000015, 2**53, 123.0])
@example({"\ue000": '\\"[', "\U0001f600": ["]\\\\", '"']})
@example({"a": "v1.0,", "b": 1.0, "c": [2.0], "d": {"e": -0.0}})  # ".0," inside a string too
@example({"s": '"x.0}"', "n": [10.0, 0.5, 3.0]})  # escaped quotes around the same bytes
@example(2.0)
def test_fast_path_gives_the_exact_bytes(value: Any) -> None:
    _same_outcome(value)


@given(any_float)
def test_fast_path_numbers(value: float) -> None:
    _same_outcome([value])


@given(st.integers(1, MAX_DEPTH + 3), st.sampled_from(['"]"', '"[["', '"\\\\"', '"\\""', "1"]))
def test_fast_path_counts_nesting_like_the_exact_path(depth: int, leaf: str) -> None:
    value = json.loads("[" * (depth - 1) + '{"k":' + leaf + "}" + "]" * (depth - 1))
    _same_outcome(value)
    _same_outcome([value] * 40)  # enough brackets to skip the shortcut count

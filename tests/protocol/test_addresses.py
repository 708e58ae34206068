"""Address patterns: `*` is one segment, `**` any number."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infrafabric.protocol.addresses import address_matches, pattern_problem


@pytest.mark.parametrize(
    ("pattern", "address", "expected"),
    [
        ("if://agent/alice", "if://agent/alice", True),
        ("if://agent/alice", "if://agent/alicia", False),
        ("if://agent/*", "if://agent/alice", True),
        ("if://agent/*", "if://topic/alice", False),
        ("if://topic/tasks/*", "if://topic/tasks/build", True),
        ("if://topic/tasks/*", "if://topic/tasks/build/7", False),  # fnmatch's * would cross "/"
        ("if://topic/tasks/*", "if://topic/tasks", False),
        ("if://topic/tasks/**", "if://topic/tasks/build/7", True),
        ("if://topic/tasks/**", "if://topic/tasks", True),
        ("if://topic/**/done", "if://topic/tasks/build/done", True),
        ("if://topic/**/done", "if://topic/tasks/build/failed", False),
        ("**", "if://service/governor", True),
        ("*", "if://agent/alice", False),
    ],
)
def test_address_patterns(pattern: str, address: str, expected: bool) -> None:
    assert address_matches(pattern, address) is expected


def _reference(pattern: tuple[str, ...], address: tuple[str, ...]) -> bool:
    """The rule as the module states it, recursively (fine for small cases)."""
    if not pattern:
        return not address
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_reference(rest, address[skip:]) for skip in range(len(address) + 1))
    return bool(address) and head in ("*", address[0]) and _reference(rest, address[1:])


_SEGMENTS = st.sampled_from(["a", "b", "c"])


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(st.one_of(_SEGMENTS, st.sampled_from(["*", "**"])), max_size=7),
    st.lists(_SEGMENTS, max_size=7),
)
def test_the_matcher_agrees_with_the_rule_it_states(pattern: list[str], address: list[str]) -> None:
    pattern_text, address_text = "/".join(pattern), "/".join(address)
    expected = _reference(tuple(pattern_text.split("/")), tuple(address_text.split("/")))
    assert address_matches(pattern_text, address_text) is expected


def test_a_pattern_of_thousands_of_double_stars_is_matched_without_recursing() -> None:
    """Matched recursively, 300 `**` went past Python's recursion limit, and the
    RecursionError stopped the fan-out of an event to the other subscribers."""
    pattern = "if://topic/" + "/".join(["**"] * 3000) + "/never"
    assert address_matches(pattern, "if://topic/board/task/claimed") is False
    assert address_matches(pattern, "if://topic/board/never") is True


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("if://topic/board/**", None),
        ("**", None),
        ("if://agent/*/inbox", None),
        ("", "non-empty"),
        (7, "non-empty"),
        ("topic/board", "if:// address"),
        ("if://topic/" + "/".join(["x" * 64] * 16), None),  # the longest topic there is
        ("if://" + "x" * 1100, "1100 characters"),
        ("if://" + "/a" * 30, "24 segments"),
        ("if://topic/**/x/**/y/**", "2 ** segments"),
    ],
)
def test_subscription_patterns_are_bounded(pattern: object, problem: str | None) -> None:
    found = pattern_problem(pattern)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found

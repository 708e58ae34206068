"""Address patterns: `*` is one segment, `**` any number."""

from __future__ import annotations

import pytest

from infrafabric.protocol.addresses import address_matches


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

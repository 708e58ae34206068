"""Matching ``if://`` addresses against patterns, segment by segment.

A pattern is an address whose ``/``-separated segments may be ``*`` (exactly one segment)
or ``**`` (any number of segments, none included): ``if://topic/tasks/*`` matches
``if://topic/tasks/build`` but not ``if://topic/tasks/build/7``; ``if://topic/tasks/**``
matches both, and ``if://topic/tasks`` too; ``**`` alone matches every address. The same
rule serves authorization rules now and topic subscriptions later.
"""

from __future__ import annotations

import functools

from infrafabric.types import Address

__all__ = ["address_matches"]


def address_matches(pattern: str, address: Address) -> bool:
    """True if ``address`` matches ``pattern`` (see the module documentation)."""
    return _match(tuple(pattern.split("/")), tuple(address.split("/")))


@functools.lru_cache(maxsize=4096)
def _match(pattern: tuple[str, ...], address: tuple[str, ...]) -> bool:
    if not pattern:
        return not address
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(rest, address[skip:]) for skip in range(len(address) + 1))
    if not address:
        return False
    return (head == "*" or head == address[0]) and _match(rest, address[1:])

"""Matching ``if://`` addresses against patterns, segment by segment.

A pattern is an address whose ``/``-separated segments may be ``*`` (exactly one segment)
or ``**`` (any number of segments, none included): ``if://topic/tasks/*`` matches
``if://topic/tasks/build`` but not ``if://topic/tasks/build/7``; ``if://topic/tasks/**``
matches both, and ``if://topic/tasks`` too; ``**`` alone matches every address. The same
rule serves authorization rules now and topic subscriptions later.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Final

from infrafabric.types import Address

__all__ = [
    "MAX_PATTERN",
    "MAX_SUBSCRIPTIONS",
    "address_matches",
    "pattern_problem",
    "subscription_problem",
]

#: A subscription pattern's size at most: characters (the longest topic, 16 segments of
#: 64, is 1,050), ``/``-separated segments, and ``**`` segments (each of which may stand
#: for any number of segments, so a pattern of many of them costs the most to match; two
#: cover every real use).
MAX_PATTERN: Final = (1100, 24, 2)
#: Topic patterns one connection may follow at most (each published event is matched
#: against every pattern of every connection).
MAX_SUBSCRIPTIONS: Final = 64


def address_matches(pattern: str, address: Address) -> bool:
    """True if ``address`` matches ``pattern`` (see the module documentation)."""
    return _match(tuple(pattern.split("/")), tuple(address.split("/")))


def pattern_problem(pattern: object) -> str | None:
    """Why ``pattern`` cannot be a subscription (too large, not an ``if://`` pattern), or
    ``None`` if it can. A server matches every published event against every
    subscription, so what one client subscribes to must stay cheap for all the others."""
    most_characters, most_segments, most_any = MAX_PATTERN
    if not isinstance(pattern, str) or not pattern:
        return "a topic pattern is a non-empty string"
    if len(pattern) > most_characters:
        return f"a topic pattern has at most {most_characters} characters"
    if pattern != "**" and not pattern.startswith("if://"):
        return f"a topic pattern is an if:// address or **, not {pattern[:40]!r}"
    segments = pattern.split("/")
    if len(segments) > most_segments:
        return f"a topic pattern has at most {most_segments} segments"
    if segments.count("**") > most_any:
        return f"a topic pattern has at most {most_any} ** segments"
    return None


def subscription_problem(following: Iterable[str], patterns: Iterable[str]) -> str | None:
    """Why a connection already ``following`` some patterns may not add ``patterns`` (one
    is not a subscription, or there would be more than :data:`MAX_SUBSCRIPTIONS`), or
    ``None``. The server refuses such a frame; the SDK checks before it sends."""
    wanted = list(patterns)
    for pattern in wanted:
        problem = pattern_problem(pattern)
        if problem is not None:
            return problem
    if len({*following, *wanted}) > MAX_SUBSCRIPTIONS:
        return f"a connection follows at most {MAX_SUBSCRIPTIONS} topic patterns"
    return None


@functools.lru_cache(maxsize=4096)
def _match(pattern: tuple[str, ...], address: tuple[str, ...]) -> bool:
    # Wildcard matching by one left-to-right walk: ``*`` takes one segment, ``**`` none at
    # first and one more each time what follows it fails to match (only the latest ``**``
    # needs to grow: an earlier one's extra segments could as well be the latest's). A
    # loop, not recursion: a pattern of many ``**`` once took the recursion past
    # Python's limit, and a RecursionError there stopped an event's fan-out.
    p = a = 0
    after_any = -1  # the pattern position after the latest ``**`` seen
    taken = 0  # the address position that ``**`` has grown to
    while a < len(address):
        if p < len(pattern) and pattern[p] == "**":
            after_any, taken = p + 1, a
            p += 1
        elif p < len(pattern) and (pattern[p] == "*" or pattern[p] == address[a]):
            p += 1
            a += 1
        elif after_any >= 0:
            taken += 1
            p, a = after_any, taken
        else:
            return False
    while p < len(pattern) and pattern[p] == "**":
        p += 1
    return p == len(pattern)

"""RFC 3339 UTC timestamps as IFMessage carries them (``2026-11-23T16:11:09.123Z``).

Only the ``Z`` form is accepted so that one instant has few spellings and
every implementation can parse it; fractions of a second may have 1 to 9 digits.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime

from infrafabric.types import Timestamp

__all__ = ["format_timestamp", "parse_timestamp"]

_RFC3339_UTC = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?Z"
)  # ASCII digits only


# Decoding checks every timestamp and the verifier then needs its value: a small cache
# turns the second parse into a lookup. (Failures are not cached; they raise.)
@functools.lru_cache(maxsize=4096)
def parse_timestamp(text: str) -> Timestamp:
    """Return the POSIX time of an RFC 3339 UTC timestamp.

    Raises ``ValueError`` if ``text`` is not ``YYYY-MM-DDTHH:MM:SS[.fraction]Z`` naming a
    real instant (no February 30, no leap second 60, year 1 or later).
    """
    match = _RFC3339_UTC.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 UTC timestamp: {text[:40]!r}")
    # fromisoformat validates the calendar (no February 30, no second 60) in C.
    seconds = datetime.fromisoformat(text[:19] + "+00:00").timestamp()
    fraction = match.group(7)
    if fraction:
        seconds += int(fraction) / 10 ** len(fraction)
    return seconds


def format_timestamp(posix: Timestamp) -> str:
    """Format POSIX time as RFC 3339 UTC with millisecond precision (``...T16:11:09.123Z``)."""
    instant = datetime.fromtimestamp(posix, tz=UTC)
    # the year by hand: strftime's %Y does not pad years before 1000 on glibc ("500-..."),
    # which parse_timestamp refuses and which sorts wrongly against "2026-..." as text
    return (
        f"{instant.year:04d}"
        + instant.strftime("-%m-%dT%H:%M:%S.")
        + f"{instant.microsecond // 1000:03d}Z"
    )

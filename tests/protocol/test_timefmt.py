"""RFC 3339 UTC timestamps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infrafabric.protocol.timefmt import format_timestamp, parse_timestamp


@pytest.mark.parametrize(
    ("text", "posix"),
    [
        ("1970-01-01T00:00:00Z", 0.0),
        ("2026-11-23T12:00:00.5Z", 1795435200.5),
        ("2026-11-23T12:00:00.123456789Z", 1795435200.123456789),
        ("2024-02-29T00:00:00Z", 1709164800.0),
    ],
)
def test_parse(text: str, posix: float) -> None:
    assert parse_timestamp(text) == pytest.approx(posix, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T12:00:00",
        "2026-11-23T12:00:00+00:00",
        "2026-02-30T00:00:00Z",
        "2026-11-23T24:00:00Z",
        "2026-11-23T23:59:60Z",
        "2026-11-23t12:00:00z",
        "2026-11-23T12:00:00.1234567890Z",
        "٢٠٢٦-11-23T12:00:00Z",
        "2026-11-23T12:00:00Z\n",
    ],
)
def test_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_timestamp(text)


@given(st.floats(min_value=0, max_value=4_000_000_000))
def test_format_then_parse_keeps_the_millisecond(posix: float) -> None:
    assert abs(parse_timestamp(format_timestamp(posix)) - posix) < 0.001

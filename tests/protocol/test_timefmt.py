"""RFC 3339 UTC timestamps."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given
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


def keeps_the_millisecond(text: str, posix: float) -> bool:
    """The text names ``posix`` cut to the millisecond, up to what a float can tell: a
    float of year 6325 is only good to 15 us (137438953472.284 formats as ...283Z, which
    parses back 1.007 ms away), and the microsecond ``datetime`` rounds to adds 0.5 us."""
    return abs(parse_timestamp(text) - posix) < 0.001 + 1e-6 + 2 * math.ulp(posix)


@given(st.floats(min_value=0, max_value=4_000_000_000))
def test_format_then_parse_keeps_the_millisecond(posix: float) -> None:
    assert keeps_the_millisecond(format_timestamp(posix), posix)


@example(137438953472.284)  # (once failed a bound of exactly 1 ms: see keeps_the_millisecond)
@given(st.floats(min_value=-62_135_596_800, max_value=253_402_300_799))  # years 1 to 9999
def test_every_year_formats_to_four_digits_that_sort_as_time(posix: float) -> None:
    # (glibc's %Y wrote year 500 as "500-...": refused by the parser, and sorted after
    # "2026-..." as text, which the witness's time filters compare)
    text = format_timestamp(posix)
    assert len(text.split("-", 1)[0]) == 4
    assert keeps_the_millisecond(text, posix)
    now = 1_795_435_200.0  # 2026-11-23
    if abs(posix - now) > 1:
        assert (text < format_timestamp(now)) is (posix < now)

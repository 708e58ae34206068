"""The bench's interval for a with/without comparison (bench/claims.py): what its verdict
on an aim such as "claim p99 worse by < 10 %" rests on."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from claims import ratio_interval, verdict


def test_identical_series_give_a_ratio_of_one_with_no_width() -> None:
    series = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    assert ratio_interval(series, series) == (1.0, 1.0, 1.0)


def test_a_steady_shift_is_found_and_a_noisy_one_gets_a_wide_interval() -> None:
    draw = random.Random(5)
    base = [draw.uniform(4.0, 6.0) for _ in range(40)]
    ratio, low, high = ratio_interval([value * 1.3 for value in base], base)
    assert (ratio, low, high) == pytest.approx((1.3, 1.3, 1.3))
    noisy = [value * draw.uniform(0.6, 1.8) for value in base]
    ratio, low, high = ratio_interval(noisy, base)
    assert low < ratio < high
    assert high - low > 0.1  # a tenth is not resolved by forty rounds this noisy


def test_the_interval_is_the_same_for_the_same_rounds() -> None:
    draw = random.Random(9)
    ours = [draw.uniform(1, 2) for _ in range(20)]
    theirs = [draw.uniform(1, 2) for _ in range(20)]
    assert ratio_interval(ours, theirs) == ratio_interval(ours, theirs)


def test_series_that_do_not_pair_are_refused() -> None:
    with pytest.raises(ValueError, match="same, non-zero length"):
        ratio_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="same, non-zero length"):
        ratio_interval([], [])


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.95, 1.08, "met"),
        (1.12, 1.30, "missed"),
        (0.90, 1.20, "not decided here (the interval spans the aim)"),
    ],
)
def test_an_aim_is_met_only_when_the_whole_interval_is_under_it(
    low: float, high: float, expected: str
) -> None:
    assert verdict(low, high, 1.10) == expected

"""The spend series behind the dashboard's chart: exact totals in bounded points."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from infrafabric.witness.spend import SpendSeries


def test_few_entries_are_each_their_own_point() -> None:
    series = SpendSeries()
    assert series.points() == []
    series.add(100.0, 0.25)
    series.add(105.0, 0.5)
    assert series.points() == [(100.0, 0.0), (100.0, 0.25), (105.0, 0.75)]
    assert series.total == 0.75


def test_a_long_history_keeps_its_total_in_at_most_max_points() -> None:
    series = SpendSeries(max_points=100)
    for n in range(100_000):  # a step every 30 s for about a month
        series.add(1_000_000.0 + 30 * n, 0.001)
    points = series.points()
    assert len(points) <= 101
    assert points[0] == (1_000_000.0, 0.0)
    assert points[-1][0] == 1_000_000.0 + 30 * 99_999  # the last step keeps its time
    assert math.isclose(points[-1][1], 100.0)
    # coarsened evenly: the month is spread over the points, not piled at one end
    halfway = points[len(points) // 2][0] - 1_000_000.0
    assert 0.3 < halfway / (30 * 100_000) < 0.7


def test_an_entry_older_than_the_last_joins_the_last_point() -> None:
    series = SpendSeries()
    series.add(100.0, 1.0)
    series.add(99.5, 2.0)  # from a server whose clock is half a second behind
    assert series.points() == [(99.5, 0.0), (100.0, 3.0)]


def test_what_cannot_be_charted_is_left_out() -> None:
    series = SpendSeries()
    series.add(math.nan, 1.0)
    series.add(100.0, math.inf)
    assert series.points() == []
    assert series.total == 0.0


@given(
    st.lists(
        st.tuples(st.floats(0, 1e6, allow_nan=False), st.floats(0, 100, allow_nan=False)),
        max_size=400,
    ),
    st.integers(2, 50),
)
def test_the_series_rises_in_time_to_the_exact_total(
    steps: list[tuple[float, float]], max_points: int
) -> None:
    series = SpendSeries(max_points=max_points)
    for at, usd in sorted(steps):
        series.add(at, usd)
    points = series.points()
    if not steps:
        assert points == []
        return
    assert len(points) <= max_points + 1
    assert math.isclose(points[-1][1], sum(usd for _, usd in steps), abs_tol=1e-6)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(points))
    assert points[0] == (min(at for at, _ in steps), 0.0)

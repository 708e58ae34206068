"""The reconnect schedule: 1 s doubling to 60 s, +/-20 % jitter, ten tries, the TURN
relay from the fourth."""

from __future__ import annotations

import random

import pytest

from infrafabric.mesh.heal import Backoff, Reconnects


def test_the_schedule_doubles_to_its_cap_within_its_jitter() -> None:
    backoff = Backoff()
    assert [backoff.nominal(n) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    rng = random.Random(3)
    for attempt in range(1, 11):
        for _ in range(200):
            delay = backoff.delay(attempt, rng)
            assert 0.8 * backoff.nominal(attempt) <= delay <= 1.2 * backoff.nominal(attempt)
    assert [backoff.relay(n) for n in (1, 2, 3, 4, 10)] == [False, False, False, True, True]


def test_a_lost_link_is_tried_ten_times_then_forgotten() -> None:
    reconnects = Reconnects(Backoff(), random.Random(1))
    now = 0.0
    reconnects.lost("b", now)
    reconnects.lost("b", now + 0.1)  # told twice: one schedule
    assert reconnects.due(now + 0.7) == []  # the first delay is at least 0.8 s
    tried = []
    for _ in range(10):
        now += 120.0
        [attempt] = reconnects.due(now)
        assert reconnects.due(now) == []  # handed out once
        tried.append((attempt.number, attempt.relay))
        following = reconnects.failed("b", now)
        assert (following is None) == (attempt.number == 10)
    assert tried == [(n, n > 3) for n in range(1, 11)]
    assert reconnects.retrying() == {}


def test_a_success_or_a_departure_ends_the_schedule() -> None:
    reconnects = Reconnects(Backoff(), random.Random(1))
    reconnects.lost("b", 0.0)
    reconnects.lost("c", 0.0)
    reconnects.connected("b")
    reconnects.forget("c")
    assert reconnects.due(1000.0) == []
    assert reconnects.failed("b", 1000.0) is None


@pytest.mark.parametrize(
    "options",
    [
        {"first": 0},
        {"first": 90},
        {"factor": 0.5},
        {"jitter": 1.0},
        {"tries": 0},
        {"relay_after": -1},
    ],
)
def test_a_bad_schedule_is_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="a backoff needs"):
        Backoff(**options)  # type: ignore[arg-type]

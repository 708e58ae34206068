"""The demo swarm behind `make run` uses the real protocol code and shows every defence."""

from __future__ import annotations

from infrafabric.demo import DemoEvent, run_demo
from tests.conftest import NOW


def test_demo_shows_each_attack_refused_and_honest_traffic_accepted() -> None:
    events: list[DemoEvent] = []
    outcomes = run_demo(agents=5, rounds=32, start=NOW, seed=1, emit=events.append)
    assert len(events) == 32
    assert outcomes["BAD_SIGNATURE"] == 2
    assert outcomes["REPLAY"] == 2
    assert outcomes["UNKNOWN_KEY"] == 2
    assert outcomes["EXPIRED"] == 2
    assert outcomes["KEY_REVOKED"] == 2
    honest = [event for event in events if event.story == "honest message"]
    assert honest
    assert all(event.accepted and event.reason is None for event in honest)
    rotation = [event for event in events if event.story == "scheduled key rotation"]
    assert rotation
    assert all(event.accepted for event in rotation)  # old key still inside its grace


def test_demo_needs_at_least_two_agents() -> None:
    events: list[DemoEvent] = []
    run_demo(agents=1, rounds=4, start=NOW, seed=2, emit=events.append)
    assert {event.sender for event in events} | {event.receiver for event in events} >= {
        "planner",
        "coder",
    }

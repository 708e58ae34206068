"""Hazard-first routing."""

from __future__ import annotations

import pytest

from infrafabric import Hazard, Route, route, route_message
from tests.conftest import plain_message

ESCALATING = Hazard(type="data-loss", severity="low", auto_escalate=True)
QUIET = Hazard(type="cost", severity="critical", auto_escalate=False)


@pytest.mark.parametrize(
    ("hazard", "confidence", "expected"),
    [
        (ESCALATING, 0.99, Route.ESCALATE),  # the hazard wins whatever the confidence
        (ESCALATING, None, Route.ESCALATE),
        (None, 0.0, Route.ESCALATE),
        (None, 0.1999, Route.ESCALATE),
        (None, 0.2, Route.HOLD),
        (None, 0.2999, Route.HOLD),
        (None, 0.5, Route.HOLD),
        (None, 0.6999, Route.HOLD),
        (None, 0.7, Route.SHARE),
        (None, 1.0, Route.SHARE),
        (QUIET, 0.9, Route.SHARE),
        (QUIET, 0.1, Route.ESCALATE),
        (None, None, Route.HOLD),
        (None, 1.5, Route.HOLD),  # outside 0..1 counts as absent
        (None, -0.1, Route.HOLD),
    ],
)
def test_routing_rule(hazard: Hazard | None, confidence: float | None, expected: Route) -> None:
    assert route(hazard, confidence) == expected


@pytest.mark.parametrize(
    ("content", "hazard", "expected"),
    [
        ({"confidence": 0.9}, None, Route.SHARE),
        ({"confidence": 0.9}, ESCALATING, Route.ESCALATE),
        ({"confidence": "high"}, None, Route.HOLD),
        ({"confidence": True}, None, Route.HOLD),
        ({"confidence": 0}, None, Route.ESCALATE),
        ({}, None, Route.HOLD),
    ],
)
def test_route_message_reads_content_confidence(
    content: dict[str, object], hazard: Hazard | None, expected: Route
) -> None:
    message = plain_message(content=content, hazard=hazard)
    assert route_message(message) == expected

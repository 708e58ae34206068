"""Hazard-first routing: what to do with a message, hazards before confidence.

The rule (``docs/protocol.md``): a hazard with ``auto_escalate`` escalates whatever the
confidence; otherwise confidence below 0.2 escalates, 0.7 and above shares, and anything
in between (DESIGN's "below 0.3 holds" and "anything else holds" both land here), or no
confidence at all, holds.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from msgspec import UNSET

from infrafabric.protocol.message import Hazard, IFMessage

__all__ = ["ESCALATE_BELOW", "SHARE_FROM", "Route", "route", "route_message"]

ESCALATE_BELOW: Final = 0.2
SHARE_FROM: Final = 0.7


class Route(StrEnum):
    ESCALATE = "escalate"
    HOLD = "hold"
    SHARE = "share"


def route(hazard: Hazard | None, confidence: float | None) -> Route:
    """Apply the hazard-first rule; ``confidence`` outside 0..1 counts as absent."""
    if hazard is not None and hazard.auto_escalate:
        return Route.ESCALATE
    if confidence is None or not 0.0 <= confidence <= 1.0:
        return Route.HOLD
    if confidence < ESCALATE_BELOW:
        return Route.ESCALATE
    if confidence >= SHARE_FROM:
        return Route.SHARE
    return Route.HOLD


def route_message(message: IFMessage) -> Route:
    """Route a message by its ``hazard`` and the number ``content["confidence"]``, if any."""
    hazard = None if message.hazard is UNSET else message.hazard
    confidence = message.content.get("confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        confidence = None
    return route(hazard, confidence)

"""Link quality from probes: round-trip time, jitter and loss over a rolling window.

aiortc's ``getStats()`` reports RTP streams only (for a connection that carries nothing
but a data channel it returns an empty report), so a link is measured the way ping does: a probe every two
seconds over the channel itself, answered at once by the other side. RTT is the mean of
the answered probes in the window, jitter the mean change between consecutive RTTs (as
RFC 3550 smooths interarrival jitter), loss the share of probes that went unanswered
past ``timeout``. Pure: times are passed in.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Band", "LinkQuality", "Quality", "band_of"]


class Band(StrEnum):
    EXCELLENT = "excellent"
    GOOD = "good"
    FAIR = "fair"
    POOR = "poor"


#: Upper bounds (exclusive) of excellent, good and fair: RTT ms, jitter ms, loss %.
RTT_MS = (50.0, 100.0, 150.0)
JITTER_MS = (10.0, 20.0, 30.0)
LOSS_PERCENT = (1.0, 3.0, 5.0)
_ORDER = (Band.EXCELLENT, Band.GOOD, Band.FAIR, Band.POOR)


def _band(value: float, bounds: tuple[float, float, float]) -> int:
    return next((n for n, bound in enumerate(bounds) if value < bound), 3)


def band_of(rtt_ms: float, jitter_ms: float, loss_percent: float) -> Band:
    """The worst of the three figures' bands."""
    worst = max(
        _band(rtt_ms, RTT_MS), _band(jitter_ms, JITTER_MS), _band(loss_percent, LOSS_PERCENT)
    )
    return _ORDER[worst]


@dataclass(frozen=True, slots=True)
class Quality:
    rtt_ms: float | None  # None: no probe answered in the window
    jitter_ms: float
    loss_percent: float
    probes: int  # probes the figures stand on
    band: Band


@dataclass(slots=True)
class _Probe:
    number: int
    sent: float
    rtt: float | None = None


class LinkQuality:
    """The probes of one link: the last ``window`` of them (30 s at one every 2 s)."""

    def __init__(self, window: int = 15, timeout: float = 2.0) -> None:
        self.window = window
        self.timeout = timeout
        self._probes: deque[_Probe] = deque(maxlen=window)
        self._next = 1

    def probe(self, now: float) -> int:
        """Record a probe sent now; its number goes in the probe frame."""
        number = self._next
        self._next += 1
        self._probes.append(_Probe(number, now))
        return number

    def answered(self, number: int, now: float) -> float | None:
        """The answer to probe ``number`` arrived now: its RTT in seconds, or ``None`` for
        an answer to a probe not in the window (too late, or never sent)."""
        for probe in self._probes:
            if probe.number == number and probe.rtt is None:
                if now - probe.sent > self.timeout:
                    return None  # past its timeout it counts as lost
                probe.rtt = now - probe.sent
                return probe.rtt
        return None

    def snapshot(self, now: float) -> Quality | None:
        """The figures over the window, or ``None`` before any probe could be judged."""
        judged = [p for p in self._probes if p.rtt is not None or now - p.sent > self.timeout]
        if not judged:
            return None
        rtts = [p.rtt for p in judged if p.rtt is not None]
        lost = len(judged) - len(rtts)
        loss = 100.0 * lost / len(judged)
        if not rtts:
            return Quality(None, 0.0, loss, len(judged), Band.POOR)
        rtt_ms = 1000 * sum(rtts) / len(rtts)
        steps = [abs(b - a) for a, b in itertools.pairwise(rtts)]
        jitter_ms = 1000 * sum(steps) / len(steps) if steps else 0.0
        return Quality(rtt_ms, jitter_ms, loss, len(judged), band_of(rtt_ms, jitter_ms, loss))

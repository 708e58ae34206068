"""Spend over time, from the witness log's costed entries, in bounded memory.

The dashboard charts the fabric's spend from its first costed step. Reading every costed
entry at each page load grows with the log; a :class:`SpendSeries` is fed each costed
entry once (the server keeps one and feeds it what was appended since) and keeps at
most ``max_points`` buckets: while there are few entries each is its own point, and when
there are more the buckets widen (the width doubles, neighbours merge), so a year-long
log still charts in a few hundred points. Totals are exact; only the times of the steps
between them are coarsened. Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["SpendSeries"]


@dataclass(slots=True)
class _Bucket:
    key: float  # the bucket's start (its time divided by the width, floored); -inf: exact
    last_at: float  # the latest entry in it: where the chart plots its step
    usd: float


@dataclass(slots=True)
class SpendSeries:
    """Cumulative spend in USD over time; feed it with :meth:`add`, in log order."""

    max_points: int = 500
    width: float = 0.0  # seconds a bucket spans; 0: every entry is its own point
    next_index: int = 0  # the first log index not read yet (the feeder keeps it here)
    first_at: float | None = None
    total: float = 0.0
    _buckets: list[_Bucket] = field(default_factory=list)

    def add(self, at: float, usd: float) -> None:
        """Count ``usd`` spent at ``at`` (an entry a little older than the last, as from
        servers whose clocks differ, joins the last bucket)."""
        if not math.isfinite(at) or not math.isfinite(usd):
            return  # (an entry the witness took cannot carry these; nothing to chart)
        self.total += usd
        self.first_at = at if self.first_at is None else min(self.first_at, at)
        key = self._key(at)
        last = self._buckets[-1] if self._buckets else None
        if last is not None and (key <= last.key if self.width else at <= last.last_at):
            last.usd += usd
            last.last_at = max(last.last_at, at)
            return
        self._buckets.append(_Bucket(key, at, usd))
        while len(self._buckets) > self.max_points:
            self._widen()

    def points(self) -> list[tuple[float, float]]:
        """``(time, spent so far)`` from the first costed entry (at 0) to the last."""
        if self.first_at is None:
            return []
        points = [(self.first_at, 0.0)]
        spent = 0.0
        for bucket in self._buckets:
            spent += bucket.usd
            points.append((bucket.last_at, spent))
        return points

    def _key(self, at: float) -> float:
        return math.floor(at / self.width) if self.width else at

    def _widen(self) -> None:
        span = self._buckets[-1].last_at - self._buckets[0].last_at
        self.width = max(self.width * 2, span / self.max_points, 1.0)
        merged: list[_Bucket] = []
        for bucket in self._buckets:
            key = self._key(bucket.last_at)
            if merged and key <= merged[-1].key:
                merged[-1].usd += bucket.usd
                merged[-1].last_at = max(merged[-1].last_at, bucket.last_at)
            else:
                merged.append(_Bucket(key, bucket.last_at, bucket.usd))
        self._buckets = merged

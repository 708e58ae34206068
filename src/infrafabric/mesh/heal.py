"""When to try a lost link again: exponential backoff with jitter, then a TURN relay.

Pure: the caller passes the time and a random source (seeded in tests and in the
simulator), and asks what is due.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Attempt", "Backoff", "Reconnects"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """The schedule: ``first`` seconds, doubling (``factor``) up to ``cap``, each delay
    moved by up to ``jitter`` of itself either way, ``tries`` attempts in all; from attempt
    ``relay_after`` + 1 on, connect through the TURN relay instead of directly."""

    first: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    jitter: float = 0.2
    tries: int = 10
    relay_after: int = 3

    def __post_init__(self) -> None:
        if not (0 < self.first <= self.cap and self.factor >= 1 and 0 <= self.jitter < 1):
            raise ValueError("a backoff needs 0 < first <= cap, factor >= 1, 0 <= jitter < 1")
        if self.tries < 1 or self.relay_after < 0:
            raise ValueError("a backoff needs tries >= 1 and relay_after >= 0")

    def nominal(self, attempt: int) -> float:
        """The delay before ``attempt`` (1, 2, ...) without jitter."""
        return float(min(self.cap, self.first * self.factor ** (attempt - 1)))

    def delay(self, attempt: int, rng: random.Random) -> float:
        return self.nominal(attempt) * (1 + rng.uniform(-self.jitter, self.jitter))

    def relay(self, attempt: int) -> bool:
        return attempt > self.relay_after


@dataclass(frozen=True, slots=True)
class Attempt:
    peer: str
    number: int  # 1 .. tries
    relay: bool


@dataclass(slots=True)
class _Pending:
    number: int
    due: float
    trying: bool = False  # handed out, waiting for connected() or failed()


class Reconnects:
    """The reconnect schedule of one peer's lost links."""

    def __init__(self, backoff: Backoff, rng: random.Random) -> None:
        self.backoff = backoff
        self.rng = rng
        self._pending: dict[str, _Pending] = {}

    def lost(self, peer: str, now: float) -> None:
        """``peer``'s link went down: the first attempt is due after the first delay
        (a link already being retried keeps its place in the schedule)."""
        if peer not in self._pending:
            self._pending[peer] = _Pending(1, now + self.backoff.delay(1, self.rng))

    def due(self, now: float) -> list[Attempt]:
        """The attempts to start now (each handed out once, until its outcome is told)."""
        started = []
        for peer, pending in self._pending.items():
            if not pending.trying and pending.due <= now:
                pending.trying = True
                started.append(Attempt(peer, pending.number, self.backoff.relay(pending.number)))
        return started

    def failed(self, peer: str, now: float) -> Attempt | None:
        """The attempt failed: the next one, scheduled, or ``None`` when that was the
        last try (the peer is forgotten)."""
        pending = self._pending.get(peer)
        if pending is None:
            return None
        if pending.number >= self.backoff.tries:
            del self._pending[peer]
            return None
        number = pending.number + 1
        self._pending[peer] = _Pending(number, now + self.backoff.delay(number, self.rng))
        return Attempt(peer, number, self.backoff.relay(number))

    def connected(self, peer: str) -> None:
        self._pending.pop(peer, None)

    def forget(self, peer: str) -> None:
        """Stop retrying ``peer`` (it left the mesh)."""
        self._pending.pop(peer, None)

    def retrying(self) -> dict[str, int]:
        """The peers being retried and the number of their next (or current) attempt."""
        return {peer: pending.number for peer, pending in self._pending.items()}

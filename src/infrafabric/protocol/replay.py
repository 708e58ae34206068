"""Replay protection: a bounded nonce cache and per-sender sequence windows.

Both are pure state with time passed in. The verifier consults them only after a
signature has verified, so a forged message can never fill the cache or move a window.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from infrafabric.types import AgentId, Timestamp

__all__ = ["NonceCache", "SequenceWindow", "SequenceWindows"]


class NonceCache:
    """Nonces seen recently, each kept until its message would have expired anyway.

    Memory is bounded twice: by time (an entry leaves when ``timestamp + ttl`` passes,
    after which the clock check rejects the message before the cache is asked) and by
    ``max_entries``. When full, the entry closest to expiry is evicted and counted in
    ``evictions``; the per-sender sequence window still refuses a replay of it.
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.evictions = 0
        #: The cache knows every nonce of the messages sent after this time that were
        #: accepted: a nonce it lacks from such a message is fresh (see
        #: :meth:`vouches_for`). Raised by an eviction, to the evicted message's expiry
        #: (past its sending).
        self.complete_since: Timestamp = float("-inf")
        self._unknown_before: dict[AgentId, Timestamp] = {}
        self._expiry: dict[tuple[AgentId, str], Timestamp] = {}
        self._heap: list[tuple[Timestamp, AgentId, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def seen(self, sender: AgentId, nonce: str, now: Timestamp) -> bool:
        """True if ``sender`` used ``nonce`` in a message that has not yet expired."""
        expires_at = self._expiry.get((sender, nonce))
        return expires_at is not None and expires_at >= now

    def add(self, sender: AgentId, nonce: str, expires_at: Timestamp, now: Timestamp) -> None:
        """Remember ``nonce`` until ``expires_at``; prunes expired entries as it goes."""
        self._prune(now)
        while len(self._expiry) >= self.max_entries:
            evicted = heapq.heappop(self._heap)
            if self._drop(*evicted):
                self.evictions += 1
                self.complete_since = max(self.complete_since, evicted[0])
        self._expiry[(sender, nonce)] = expires_at
        heapq.heappush(self._heap, (expires_at, sender, nonce))

    def unknown_before(self, sender: AgentId, until: Timestamp) -> None:
        """``sender``'s messages dated up to ``until`` may have been accepted without this
        cache (its sequence window restored after a restart: ``until`` is the restart's
        time plus the clock skew a message's date may have)."""
        self._unknown_before[sender] = max(self._unknown_before.get(sender, until), until)

    def vouches_for(self, sender: AgentId, sent_at: Timestamp) -> bool:
        """Whether a nonce of ``sender``'s, in a message dated ``sent_at``, that the cache
        lacks is fresh: had it been accepted, the cache would know it."""
        unknown_before = self._unknown_before.get(sender, float("-inf"))
        return sent_at > max(self.complete_since, unknown_before)

    def forget(self, sender: AgentId, nonce: str) -> None:
        """Take back :meth:`add`: the message that used ``nonce`` was never carried out
        (its store failed), so the same message sent again is not a replay. Its heap
        entry stays behind and is dropped when due (:meth:`_drop` tells it is stale)."""
        self._expiry.pop((sender, nonce), None)

    def _prune(self, now: Timestamp) -> None:
        heap = self._heap
        while heap and heap[0][0] < now:
            self._drop(*heapq.heappop(heap))

    def _drop(self, expires_at: Timestamp, sender: AgentId, nonce: str) -> bool:
        """Drop the entry a heap item stands for, unless it was forgotten (and perhaps
        added again, with an expiry of its own) since; whether one was dropped."""
        if self._expiry.get((sender, nonce)) != expires_at:
            return False
        del self._expiry[(sender, nonce)]
        return True


@dataclass(slots=True)
class SequenceWindow:
    """Anti-replay window over one sender's sequence numbers (as IPsec, RFC 4303 3.4.3).

    ``highest`` is the highest accepted number; bit ``i`` of ``seen`` records whether
    ``highest - i`` was accepted. With ``size == 1`` only rising numbers pass; a larger
    window also accepts a message that overtook an earlier one on the way, once.
    """

    size: int
    highest: int = 0
    seen: int = field(default=0)

    def would_accept(self, number: int) -> bool:
        if number > self.highest:
            return True
        offset = self.highest - number
        return offset < self.size and not (self.seen >> offset) & 1

    def accept(self, number: int) -> None:
        """Record ``number``; call only after :meth:`would_accept` said yes."""
        if number > self.highest:
            jump = number - self.highest
            # Shift only within the window: a sender may jump by up to 2**53, and shifting
            # by that much before masking would build an integer of that many bits.
            self.seen = (
                ((self.seen << jump) | 1) & ((1 << self.size) - 1) if jump < self.size else 1
            )
            self.highest = number
        else:
            self.seen |= 1 << (self.highest - number)

    def forget(self, number: int) -> None:
        """Take back :meth:`accept` of ``number`` (its message was never carried out): the
        number is accepted once more. ``highest`` stays where it is: numbers further
        below are refused as before, and a window never moves back."""
        offset = self.highest - number
        if 0 <= offset < self.size:
            self.seen &= ~(1 << offset)


class SequenceWindows:
    """One :class:`SequenceWindow` per sender, created on first accepted message."""

    def __init__(self, window: int = 64) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self._windows: dict[AgentId, SequenceWindow] = {}

    def __len__(self) -> int:
        return len(self._windows)

    def would_accept(self, sender: AgentId, number: int) -> bool:
        window = self._windows.get(sender)
        return window is None or window.would_accept(number)

    def accept(self, sender: AgentId, number: int) -> None:
        window = self._windows.get(sender)
        if window is None:
            window = self._windows[sender] = SequenceWindow(self.window)
        window.accept(number)

    def forget(self, sender: AgentId, number: int) -> None:
        """Take back :meth:`accept` (see :meth:`SequenceWindow.forget`)."""
        window = self._windows.get(sender)
        if window is not None:
            window.forget(number)

    def highest(self, sender: AgentId) -> int:
        """The highest number accepted from ``sender`` (0 if none)."""
        window = self._windows.get(sender)
        return 0 if window is None else window.highest

    def snapshot(self, sender: AgentId) -> tuple[int, int] | None:
        """``(highest, seen)`` of ``sender``'s window, to be stored; ``None`` if none yet."""
        window = self._windows.get(sender)
        return None if window is None else (window.highest, window.seen)

    def restore(self, sender: AgentId, highest: int, seen: int) -> None:
        """Put back a window from :meth:`snapshot` (a server starting again after a crash,
        so a message it accepted before cannot be replayed to it after)."""
        self._windows[sender] = SequenceWindow(
            self.window, highest, seen & ((1 << self.window) - 1)
        )

"""Back-pressure on one data channel: send at once while the channel keeps up, batch
while it does not, and refuse beyond a bound.

A data channel buffers what it has not sent yet (``bufferedAmount``); a peer that reads
slowly would make that buffer, and the sender's memory, grow without end. An
:class:`Outlet` hands frames to the channel only while its buffer is under
``high_water``; the rest wait in the outlet's queue and leave, packed into batches of up
to ``batch_bytes``, when the channel drains (its ``bufferedamountlow`` event, or the
next frame). The slower the channel, the fuller the batches: fewer, larger messages. A
queue already holding ``max_queued`` bytes refuses more (the caller drops a broadcast,
which other neighbours carry too, and sends a direct message through the server).
Pure: the caller says how much the channel holds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from infrafabric.mesh.frames import Batch, encode_frame

__all__ = ["Outlet"]

import msgspec


@dataclass(slots=True)
class Outlet:
    high_water: int = 256 * 1024
    batch_bytes: int = 64 * 1024
    max_queued: int = 1024 * 1024
    queued_bytes: int = 0
    refused: int = 0  # frames refused because the queue was full
    batches: int = 0  # batch messages made
    _queue: deque[bytes] = field(default_factory=deque)

    def push(self, frame: bytes, buffered: int) -> list[bytes] | None:
        """Offer ``frame`` with the channel holding ``buffered`` bytes: the messages to
        send now (possibly none), or ``None`` if the frame is refused."""
        if not self._queue and buffered < self.high_water:
            return [frame]
        if self.queued_bytes + len(frame) > self.max_queued:
            self.refused += 1
            return None
        self._queue.append(frame)
        self.queued_bytes += len(frame)
        return self.drain(buffered)

    def drain(self, buffered: int) -> list[bytes]:
        """What to send now that the channel holds ``buffered`` bytes: queued frames,
        batched, up to ``high_water``."""
        out: list[bytes] = []
        room = self.high_water - buffered
        while self._queue and room > 0:
            frames: list[bytes] = []
            size = 0
            while self._queue and (not frames or size + len(self._queue[0]) <= self.batch_bytes):
                frame = self._queue.popleft()
                frames.append(frame)
                size += len(frame)
            self.queued_bytes -= size
            if len(frames) == 1:
                message = frames[0]
            else:
                message = encode_frame(Batch([msgspec.Raw(f) for f in frames]))
                self.batches += 1
            out.append(message)
            room -= len(message)
        return out

    @property
    def waiting(self) -> int:
        return len(self._queue)

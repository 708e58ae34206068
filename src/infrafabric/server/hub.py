"""WebSocket fan-out: who is connected, what they follow, and a bounded queue each.

The service reports events, deliveries and topic messages from whatever thread handled
the request; the hub hands them to the event loop (``call_soon_threadsafe``, or plain
``call_soon`` when the loop's own thread reports them, which spares a wake-up write per
batch) and from there into each interested connection's queue. A queue that fills up
(a slow or dead client) marks its connection as overflowing: the connection is closed
rather than letting it hold memory or stall anyone else.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from infrafabric.board.model import BoardEvent
from infrafabric.protocol.addresses import address_matches
from infrafabric.service import Delivery
from infrafabric.types import AgentId

__all__ = ["Connection", "Hub"]

#: Frames a connection may have waiting before it is closed as too slow.
QUEUE_LIMIT: Final = 1000
#: Recent topic messages kept for a client that reconnects (``replay`` in subscribe).
REPLAY_LIMIT: Final = 256


@dataclass(eq=False)
class Connection:
    """One WebSocket client: its agent, its subscriptions, its outgoing queue."""

    agent: AgentId | None
    limit: int = QUEUE_LIMIT
    queue: asyncio.Queue[str] = field(init=False)
    topics: set[str] = field(default_factory=set)
    overflow: asyncio.Event = field(default_factory=asyncio.Event)
    inbox: bool = True  # direct messages to ``agent`` are pushed here
    # While the inbox's pending messages are read on connect, live ones wait here (with
    # their positions), so the client sees them in order and each once.
    held: list[tuple[int, str]] | None = None
    replayed: set[int] = field(default_factory=set)  # inbox positions sent on connect
    on_overflow: Callable[[], object] | None = None  # called once, when the queue overflows
    until: float | None = None  # when its token (or session) expires; None: never
    expired: bool = False  # it outlived its token and is closing
    busy: bool = False  # a frame of its client is being carried out

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.limit)

    @property
    def overflowed(self) -> bool:
        return self.overflow.is_set()

    def offer(self, frame: str) -> None:
        """Queue ``frame`` without waiting; a full queue marks the connection for closing."""
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.overflow.set()
            if self.on_overflow is not None:
                self.on_overflow()

    def follows(self, topic: str) -> bool:
        return any(address_matches(pattern, topic) for pattern in self.topics)


class Hub:
    """All live connections of one server process."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, queue_limit: int = QUEUE_LIMIT) -> None:
        self.loop = loop
        self.queue_limit = queue_limit
        self.connections: set[Connection] = set()
        self.recent: deque[tuple[str, str]] = deque(maxlen=REPLAY_LIMIT)
        try:
            made_on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            made_on_loop = False
        self._loop_thread = threading.get_ident() if made_on_loop else None

    def _soon(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop, after what it has ready."""
        if threading.get_ident() == self._loop_thread:
            self.loop.call_soon(callback, *args)  # no need to wake a loop that is running
        else:
            self.loop.call_soon_threadsafe(callback, *args)

    # called from any thread ---------------------------------------------------------------

    def board_events(self, events: Sequence[BoardEvent]) -> None:
        frames = [
            (event.topic, _frame("event", topic=event.topic, event=event)) for event in events
        ]
        self._soon(self._publish, frames)

    def delivery(self, delivery: Delivery) -> None:
        frame = _frame("message", position=delivery.position, message=msgspec.Raw(delivery.body))
        self._soon(self._direct, delivery.receiver, delivery.position, frame)

    def topic_message(self, topic: str, body: bytes) -> None:
        frame = _frame("event", topic=topic, message=msgspec.Raw(body))
        self._soon(self._publish, [(topic, frame)])

    # on the loop --------------------------------------------------------------------------

    def replay(self, connection: Connection) -> None:
        for topic, frame in self.recent:
            if connection.follows(topic):
                connection.offer(frame)

    def _publish(self, frames: list[tuple[str, str]]) -> None:
        for topic, frame in frames:
            if not topic.startswith(EPHEMERAL_PREFIX):
                self.recent.append((topic, frame))
            for connection in self.connections:
                if connection.topics and connection.follows(topic):  # most follow nothing
                    connection.offer(frame)

    def _direct(self, receiver: AgentId, position: int, frame: str) -> None:
        for connection in self.connections:
            if connection.inbox and connection.agent == receiver:
                if connection.held is not None:
                    connection.held.append((position, frame))
                elif position not in connection.replayed:  # announced after the inbox read
                    connection.offer(frame)


_ENCODER: Final = msgspec.json.Encoder()
#: Topics whose messages are not kept for replay: the mesh's presence, signaling and
#: link reports are stale within seconds, and would push everything else out.
EPHEMERAL_PREFIX: Final = "if://topic/mesh-"


def _frame(kind: str, **fields: Any) -> str:
    # msgspec: ~5x faster than json.dumps, and a message body (``msgspec.Raw``) goes out
    # as the exact bytes that were signed, without a decode and re-encode
    return _ENCODER.encode({"type": kind, **fields}).decode()

"""Live fan-out across servers: each server tails the shared store's streams.

On one machine a server tells its WebSocket clients about a change as it makes it. With
several servers over one Redis, a client connected to server B must also hear of the
claim server A just made, and get the direct message A just delivered to its inbox.
So in that mode no server announces anything itself: every server reads, in one
blocking ``XREAD``, the two streams every change lands in (the board's event log and
the bus of deliveries and topic messages) and hands what it reads to its own hub. Each
client then sees every server's changes in the one order Redis gave them.

A Redis outage pauses the relay (it retries every half second, logging once); it goes
on from the last entry it read, so nothing still in the streams is missed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from infrafabric.board.model import BoardEvent
from infrafabric.errors import StoreError
from infrafabric.outage import Outage
from infrafabric.service import Delivery
from infrafabric.storage.redis import RedisStore, redis_errors

__all__ = ["Relay", "RelayListeners"]

_log = logging.getLogger(__name__)
_EVENT_DECODER: Final = msgspec.json.Decoder(BoardEvent)
#: How long one read waits for news; also how soon a stop is noticed.
BLOCK_MS: Final = 500
RETRY_SECONDS: Final = 0.5
#: After a read that returned entries, wait this long before the next, so that under load
#: a read brings several: each read is a Redis round trip, whose two socket calls cost
#: this server about as much CPU as the Python around them (at 700 claims/s a read
#: returned one entry, and the relay took about a tenth of the server's CPU). Live
#: events and deliveries reach other servers' clients up to this much later.
GATHER_SECONDS: Final = 0.002


@dataclass
class RelayListeners:
    events: Callable[[Sequence[BoardEvent]], None]
    delivery: Callable[[Delivery], None]
    topic: Callable[[str, bytes], None]


class Relay:
    """Reads every server's changes from the store and hands them to ``listeners``;
    ``on_keys`` is called (in the relay's thread) when an agent's keys changed."""

    def __init__(self, store: RedisStore, *, on_keys: Callable[[], None] | None = None) -> None:
        self.store = store
        self.on_keys = on_keys
        self.listeners: RelayListeners | None = None
        self._stop = threading.Event()
        self._keys_pending = False
        self._thread: threading.Thread | None = None
        self._events_key = f"{store.prefix}ev"
        self._bus_key = f"{store.prefix}bus"
        # from now on: what happened before a client connected is its replay's business
        with redis_errors(store.url):
            self._positions = {
                self._events_key: f"{store.last_seq()}-0",
                self._bus_key: _last_id(store.redis, self._bus_key),
            }

    def start(self, listeners: RelayListeners) -> None:
        self.listeners = listeners
        self._thread = threading.Thread(target=self._run, name="ifab-relay", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        outage = Outage(_log, "relay read")
        while not self._stop.is_set():
            try:
                if self._keys_pending and self.on_keys is not None:
                    self.on_keys()  # (a revocation must not be missed for one failed read)
                    self._keys_pending = False
                with redis_errors(self.store.url):
                    replies = self.store.redis.xread(self._positions, count=1000, block=BLOCK_MS)
                    if not replies:
                        self._follow_a_counter_that_went_back()
                outage.ended()
            except StoreError:
                outage.failed()
                self._stop.wait(RETRY_SECONDS)
                continue
            for stream, entries in replies or ():
                key = stream.decode()
                self._positions[key] = entries[-1][0].decode()
                try:
                    if key == self._events_key:
                        self._events(entries)
                    else:
                        self._bus(entries)
                except Exception:  # one bad entry or listener must not stop the relay
                    _log.exception("relay could not hand on %d entries", len(entries))
            if replies and GATHER_SECONDS > 0:
                self._stop.wait(GATHER_SECONDS)

    def _follow_a_counter_that_went_back(self) -> None:
        """When Redis lost acknowledged writes (a failover, a crash under appendfsync
        everysec), new events take numbers below the relay's position, and a read from
        there never returns: checked when a read returns nothing, it follows them."""
        last = self.store.last_seq()
        if last < _seq_of(self._positions[self._events_key]):
            _log.error("the event log in Redis went back to %d; the relay follows it", last)
            self._positions[self._events_key] = f"{last}-0"

    def _events(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        assert self.listeners is not None
        events = [_EVENT_DECODER.decode(fields[b"d"]) for _, fields in entries]
        self.listeners.events(events)
        if any(event.component == "keys" for event in events):
            self._keys_pending = True  # read at the top of the loop, until it succeeds

    def _bus(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        assert self.listeners is not None
        for _, fields in entries:
            if fields[b"k"] == b"dm":
                receiver, position = fields[b"r"].decode(), int(fields[b"p"])
                self.listeners.delivery(Delivery(receiver, position, bytes(fields[b"b"])))
            else:
                self.listeners.topic(fields[b"t"].decode(), bytes(fields[b"b"]))


def _seq_of(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _last_id(client: Any, key: str) -> str:
    newest = client.xrevrange(key, count=1)
    return newest[0][0].decode() if newest else "0-0"

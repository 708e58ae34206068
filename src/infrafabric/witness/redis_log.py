"""The witness log on Redis: one ordered Merkle log for every server of a fabric.

The same tree, proofs and checkpoints as :class:`~infrafabric.witness.log.WitnessLog`
(RFC 9162 hashing; one stored hash per complete subtree, so a proof reads O(log n)
hashes), kept in Redis so that any server can serve proofs of it. Ordering:

* **one sequencer at a time**, chosen by a lease (``SET NX PX``, renewed while it
  feeds): only the server holding it reads the board's events and appends them;
* **fenced appends**: an append is one Lua script that writes only if the log still has
  the size the sequencer built on (and moves the cursor with it). A sequencer that
  lost its lease while paused (a long GC, a network split) and wakes up cannot fork the
  log: its append is refused, and it re-reads the log before anything else.

Entries are derived, byte for byte, from the board's event log (index and all), so the
cursor makes a retry after any failure safe.

Keys under the fabric's prefix: ``w:size``, ``w:leaf`` / ``w:entry`` (index -> leaf hash,
entry bytes), ``w:byleaf`` (leaf hash -> first index), ``w:node`` ("level/index" ->
hash), ``w:cp`` / ``w:cpz`` (checkpoints by size), ``w:cursor``, ``w:lease``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any, Final

from infrafabric.errors import StoreError
from infrafabric.storage.redis import RedisStore, redis_errors
from infrafabric.witness.log import LogDamaged, fold_edge, load_edge
from infrafabric.witness.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_hash,
)

__all__ = ["APPEND_MOST", "LogMoved", "RedisWitnessLog"]

#: How long a sequencer's lease lasts without renewal.
LEASE_SECONDS: Final = 5.0
#: Board events one append carries at most (the feeder's batch on Redis). An append is
#: one script, and Redis runs a script alone: every server's claims wait for it. On an
#: idle Redis 100 entries took 1.9 ms and 1,000 took 31.5 ms; with three servers, a
#: witness catching up on a backlog (in appends of up to 5,000) ran appends of about
#: 300 entries for 5 to 32 ms each (Redis's SLOWLOG).
APPEND_MOST: Final = 100

# ARGV: prefix, first (the size built on), new size, source, position, then entries
# as (index, leaf, entry) and nodes as (name, hash), with their counts first.
_APPEND = """
local p = ARGV[1]
local size = redis.call('GET', p .. 'w:size') or '0'
if size ~= ARGV[2] then return {'moved', size} end
local i = 6
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local index, leaf, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  redis.call('HSET', p .. 'w:leaf', index, leaf)
  redis.call('HSET', p .. 'w:entry', index, entry)
  redis.call('HSETNX', p .. 'w:byleaf', leaf, index)
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', p .. 'w:node', ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('SET', p .. 'w:size', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', p .. 'w:cursor', ARGV[4], ARGV[5]) end
return {'ok', ARGV[3]}
"""

# ARGV: prefix, holder, milliseconds: take the lease if free or already ours.
_LEAD = """
local key = ARGV[1] .. 'w:lease'
local holder = redis.call('GET', key)
if holder and holder ~= ARGV[2] then return 0 end
redis.call('SET', key, ARGV[2], 'PX', ARGV[3])
return 1
"""


class LogMoved(StoreError):
    """Another sequencer appended since this one last read the log: nothing was written."""


class RedisWitnessLog:
    """The witness log of a fabric on Redis (see the module's text)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.prefix = store.prefix
        self.url = store.url
        self.damaged = ""
        self._append = store.redis.register_script(_APPEND)
        self._lead = store.redis.register_script(_LEAD)
        self._lock = threading.RLock()
        self._size = 0
        self._edge: list[tuple[int, int, bytes]] = []
        self.refresh()

    # -- the sequencer ----------------------------------------------------------------------

    def lead(self, holder: str, seconds: float = LEASE_SECONDS) -> bool:
        """Take or renew the sequencer's lease for ``holder``; whether it holds it."""
        with self._guard():
            return bool(
                self._lead(client=self.redis, args=[self.prefix, holder, int(seconds * 1000)])
            )

    # -- writing ----------------------------------------------------------------------------

    def append(
        self, entries: Sequence[bytes], *, source: str | None = None, position: int = 0
    ) -> range:
        if self.damaged:
            raise StoreError(f"the witness log cannot grow: {self.damaged}")
        with self._lock:
            first = self._size
            edge = list(self._edge)
            leaves: list[bytes | int] = []
            nodes: list[bytes | str] = []
            for offset, entry in enumerate(entries):
                index = first + offset
                leaf = leaf_hash(entry)
                leaves += [index, leaf, entry]
                edge.append((0, index, leaf))
                while len(edge) >= 2 and edge[-1][0] == edge[-2][0]:
                    level, right_index, right = edge.pop()
                    _, _, left = edge.pop()
                    parent = (level + 1, right_index >> 1, node_hash(left, right))
                    nodes += [f"{parent[0]}/{parent[1]}", parent[2]]
                    edge.append(parent)
            size = first + len(entries)
            args = [self.prefix, first, size, source or "", position, len(entries), *leaves]
            args += [len(nodes) // 2, *nodes]
            with self._guard():
                reply = self._append(client=self.redis, args=args)
            if reply[0] == b"moved":
                self.refresh()
                raise LogMoved(f"the witness log grew to {int(reply[1])} meanwhile")
            self._size, self._edge = size, edge
            return range(first, size)

    def refresh(self) -> int:
        """Catch up with appends made by another server; returns the size."""
        with self._lock, self._guard():
            size = int(self.redis.get(self._key("size")) or 0)
            if size < self._size and not self.damaged:
                # Redis lost acknowledged writes (a failover, a crash under appendfsync
                # everysec): appending again would give other entries the indexes that
                # published checkpoints cover, a fork. Stop growing; an operator decides.
                self.damaged = (
                    f"the log in Redis went back from {self._size} to {size} entries:"
                    " Redis lost acknowledged writes"
                )
            if size > self._size:  # another sequencer moved it forward
                self._edge, self._size = load_edge(size, self.perfect), size
            return self._size

    def save_checkpoint(self, size: int, note: str) -> None:
        with self._guard():
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self._key("cp"), str(size), note)
            pipe.zadd(self._key("cpz"), {str(size): size})
            pipe.execute()

    # -- reading ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def cursor(self, source: str) -> int:
        with self._guard():
            return int(self.redis.hget(self._key("cursor"), source) or 0)

    def root(self, size: int | None = None) -> bytes:
        with self._lock:
            size = self._size if size is None else size
            self._check_size(size)
            if size == self._size:
                return fold_edge(self._edge)
        return range_hash(0, size, self)

    def perfect(self, level: int, index: int) -> bytes:
        with self._guard():
            if level == 0:
                found = self.redis.hget(self._key("leaf"), str(index))
            else:
                found = self.redis.hget(self._key("node"), f"{level}/{index}")
        if found is None:
            raise LogDamaged(f"the witness log lacks subtree {level}/{index}")
        return bytes(found)

    def entries(self, start: int, end: int) -> list[tuple[int, bytes, bytes]]:
        indexes = [str(index) for index in range(start, min(end, self._size))]
        if not indexes:
            return []
        with self._guard():
            leaves = self.redis.hmget(self._key("leaf"), indexes)
            bodies = self.redis.hmget(self._key("entry"), indexes)
        return [
            (int(index), bytes(leaf), bytes(body))
            for index, leaf, body in zip(indexes, leaves, bodies, strict=True)
            if leaf is not None and body is not None
        ]

    def index_of(self, leaf: bytes) -> int | None:
        with self._guard():
            found = self.redis.hget(self._key("byleaf"), leaf)
        return None if found is None else int(found)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self._size if size is None else size
        self._check_size(size)
        return inclusion_proof(index, size, self)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        new_size = self._size if new_size is None else new_size
        self._check_size(new_size)
        return consistency_proof(old_size, new_size, self)

    def checkpoints(self, limit: int = 1) -> list[tuple[int, str]]:
        with self._guard():
            sizes = self.redis.zrevrange(self._key("cpz"), 0, limit - 1)
            notes = self.redis.hmget(self._key("cp"), sizes) if sizes else []
        return [
            (int(size), note.decode())
            for size, note in zip(sizes, notes, strict=True)
            if note is not None
        ]

    def checkpoint_at(self, size: int) -> str | None:
        with self._guard():
            note = self.redis.hget(self._key("cp"), str(size))
        return None if note is None else note.decode()

    def stored_nodes(self) -> list[tuple[int, int, bytes]]:
        with self._guard():
            kept = self.redis.hgetall(self._key("node"))
        nodes = []
        for name, value in kept.items():
            level, _, index = name.decode().partition("/")
            nodes.append((int(level), int(index), bytes(value)))
        return sorted(nodes)

    def entries_outside(self, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """As :meth:`WitnessLog.entries_outside`: the leaf fields that are not entries
        ``[0, size)`` (an audit: it reads every field once, as it reads every entry)."""
        below: list[int] = []
        above: list[int] = []
        with self._guard():
            for name, _ in self.redis.hscan_iter(self._key("leaf"), count=10_000):
                with contextlib.suppress(ValueError):  # (not an index at all: no entry)
                    index = int(name)
                    if index < 0:
                        below.append(index)
                    elif index >= size:
                        above.append(index)
        return (len(below), max(below, default=0)), (len(above), min(above, default=0))

    def close(self) -> None:
        """Nothing to release: the connections are the store's."""

    # -- internals --------------------------------------------------------------------------

    @property
    def redis(self) -> Any:
        return self.store.redis  # this thread's connection

    def _key(self, name: str) -> str:
        return f"{self.prefix}w:{name}"

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self._size:
            raise ValueError(f"the log has {self._size} entries, not {size}")

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        return redis_errors(self.url)

"""A store on Redis, shared by several stateless fabric servers.

Every change is **one Lua script** (``EVALSHA``): Redis runs a script alone, so its
checks and writes are atomic across every server that talks to the same Redis. A change
is optimistic: the coordinator decides from what it read, and the script applies the
decision only if nothing it read has changed since:

* each task written is compared and set on its version (a new one must not exist);
* each task *read* while deciding (inside :meth:`RedisStore.transact`) must still be at
  the version read: two servers completing the last two dependencies of a task at once
  cannot both miss that the other finished (one of them conflicts, re-reads, and
  releases the task);
* each list of dependents read must have the same size (a task created meanwhile that
  depends on the one being completed is a conflict, not a task left waiting forever);
* the state documents (the governor's books) are compared on a generation counter.

A conflict writes nothing and raises :class:`~infrafabric.storage.base.Conflict`; the
coordinator reads again and decides again, as it does on SQLite.

Claimants on different servers would all choose the first available task, and all but
one would lose the race and read again (with three servers, 1.6 writes and 22 task
documents read a claim). So a claimant's first page **holds** a task: the script that
reads it flags the tasks other claimants hold (:meth:`RedisStore.held_elsewhere`), reads
on until it has as many that nobody holds, and marks the first of those as held by this
claimant until its change is written (or ``HOLD_SECONDS``). The coordinator takes a
held task only when no task of its priority that nobody holds follows it. A hold is a
hint, never a lock: it is not logged in the append-only file or sent to replicas (so
taking one costs no fsync; a rewrite's snapshot may keep one, which expires as usual),
and a claim is compared and set on its version all the same.

Expired leases are found in a sorted set by any server's sweeper; two sweepers expiring
the same task compare and set the same version, so exactly one wins.

Keys (``prefix`` is a Redis Cluster hash tag, ``{ifab}`` by default, so every key of a
fabric lives in one slot and the scripts stay legal on a cluster)::

    {ifab}:t:<id>        hash: v (version), d (task JSON), s (state), k (claim key)
    {ifab}:ids           zset of every task id (lexical order)
    {ifab}:s:<state>     zset of the ids in one state
    {ifab}:avail         zset of claim keys "<order>|<id>": the next task is the first
    {ifab}:leases        zset id -> lease expiry, for owned tasks
    {ifab}:deps:<id>     set of the tasks that depend on <id>
    {ifab}:seq, :ev      event counter and stream (entry id "<seq>-0"), capped ~retention
    {ifab}:ib:<agent>    stream: the agent's inbox, entry id "<position>-0"; XDEL acks
    {ifab}:ibpos         inbox position counter
    {ifab}:dl:<agent>|<message id>   position of a delivered message (expires)
    {ifab}:bus           stream of live announcements (deliveries, topic messages)
    {ifab}:seen          hash agent -> when a server last heard from it
    {ifab}:h:<id>        the claimant holding an available task (expires; see below)
    {ifab}:seqw, :st, :stgen, :agents, :nonce:<sender>|<nonce>

Durability is Redis's: with ``appendonly yes`` and ``appendfsync always`` an
acknowledged change survives a crash of Redis; with ``everysec`` up to a second of
changes may be lost (docs/operations.md). A Redis that cannot be reached makes every
call raise :class:`~infrafabric.errors.StoreUnavailable` quickly (retryable); the next
call reconnects.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import msgspec
import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from infrafabric.board.model import BoardEvent, Task, TaskState
from infrafabric.board.rules import Outcome
from infrafabric.errors import StoreError, StoreUnavailable
from infrafabric.storage.base import (
    AgentRecord,
    Conflict,
    InboxEntry,
    Replayed,
    Store,
    StoredEvent,
    TaskPage,
)

__all__ = ["RedisStore", "claim_key", "redacted", "redis_errors", "redis_version_supported"]

#: How long a delivered message id stays known, so a resend is not delivered twice: past
#: the longest a message lives (its ``ttl`` is at most a day), the verifier refuses it.
DELIVERED_SECONDS: Final = 2 * 86_400
#: How stale the state generation may be when a change asks for it (see state_version).
GENERATION_SECONDS: Final = 0.05
#: Live announcements kept for servers catching up (the bus stream's approximate cap).
BUS_RETENTION: Final = 10_000
#: How long a claimant holds the task it is deciding on, at most (it lets go when its
#: change is written): the longest a crashed server keeps others off a task.
HOLD_SECONDS: Final = 1.0
#: Held tasks a claimant's first page reads past, at most (and returns, flagged).
HOLD_REACH: Final = 64

_log = logging.getLogger(__name__)
_ENCODER: Final = msgspec.json.Encoder()
_TASK_DECODER: Final = msgspec.json.Decoder(Task)
_EVENT_DECODER: Final = msgspec.json.Decoder(BoardEvent)
_AGENT_DECODER: Final = msgspec.json.Decoder(AgentRecord)

# ARGV: prefix, retention, a nonce key to spend with the change ("" for none) and its
# lifetime in ms, the claimant ("" for none), then five sections, each a count and its
# items:
#   held       (id)                          tasks the claimant holds: let go, first
#   reads      (id, version or "")           tasks read while deciding
#   dependents (id, count)                   dependent lists read while deciding
#   state generation ("" if not read)
#   tasks      (id, expected version or "", state, doc, claim key or "", lease or "",
#               dependency count, dependencies...)
#   events     (doc)
#   documents  (name, "s" doc | "d" "")
# Returns {"ok", last event seq, state generation}, {"conflict", id, expected, found},
# or {"replay"} when the nonce was spent already.
_APPLY = """
local p = ARGV[1]
local retention = ARGV[2]
local nonce = ARGV[3]
local i = 6
local function nxt() local v = ARGV[i]; i = i + 1; return v end
local n = tonumber(nxt())
if n > 0 then
  redis.set_repl(redis.REPL_NONE)  -- holds are hints, never logged (see _CLAIMABLE)
  for _ = 1, n do
    local held = p .. 'h:' .. nxt()
    if redis.call('GET', held) == ARGV[5] then redis.call('DEL', held) end
  end
  redis.set_repl(redis.REPL_ALL)
end
if nonce ~= '' and redis.call('EXISTS', nonce) == 1 then return {'replay'} end
n = tonumber(nxt())
for _ = 1, n do
  local id, want = nxt(), nxt()
  local have = redis.call('HGET', p .. 't:' .. id, 'v') or ''
  if have ~= want then return {'conflict', id, want, have} end
end
n = tonumber(nxt())
for _ = 1, n do
  local id, want = nxt(), tonumber(nxt())
  local have = redis.call('SCARD', p .. 'deps:' .. id)
  if have ~= want then return {'conflict', id, 'dependents ' .. want, 'dependents ' .. have} end
end
local gen_want = nxt()
if gen_want ~= '' then
  local gen = redis.call('GET', p .. 'stgen') or '0'
  if gen ~= gen_want then return {'conflict', '', 'state ' .. gen_want, 'state ' .. gen} end
end
n = tonumber(nxt())
local tasks = {}
for t = 1, n do
  local task = {id = nxt(), expect = nxt(), version = nxt(), state = nxt(), doc = nxt(),
                ckey = nxt(), lease = nxt(), deps = {}}
  for d = 1, tonumber(nxt()) do task.deps[d] = nxt() end
  local have = redis.call('HGET', p .. 't:' .. task.id, 'v') or ''
  if have ~= task.expect then return {'conflict', task.id, task.expect, have} end
  tasks[t] = task
end
for _, task in ipairs(tasks) do
  local key = p .. 't:' .. task.id
  local old = redis.call('HMGET', key, 's', 'k')
  if old[1] then redis.call('ZREM', p .. 's:' .. old[1], task.id) end
  if old[2] and old[2] ~= '' then redis.call('ZREM', p .. 'avail', old[2]) end
  redis.call('HSET', key, 'v', task.version, 'd', task.doc, 's', task.state, 'k', task.ckey)
  redis.call('ZADD', p .. 's:' .. task.state, 0, task.id)
  if task.ckey ~= '' then redis.call('ZADD', p .. 'avail', 0, task.ckey) end
  if task.lease ~= '' then
    redis.call('ZADD', p .. 'leases', task.lease, task.id)
  else
    redis.call('ZREM', p .. 'leases', task.id)
  end
  if task.expect == '' then
    redis.call('ZADD', p .. 'ids', 0, task.id)
    for _, dep in ipairs(task.deps) do redis.call('SADD', p .. 'deps:' .. dep, task.id) end
  end
end
n = tonumber(nxt())
local seq
for _ = 1, n do
  seq = redis.call('INCR', p .. 'seq')
  redis.call('XADD', p .. 'ev', 'MAXLEN', '~', retention, seq .. '-0', 'd', nxt())
end
if not seq then seq = tonumber(redis.call('GET', p .. 'seq') or '0') end
n = tonumber(nxt())
for _ = 1, n do
  local name, op, doc = nxt(), nxt(), nxt()
  if op == 's' then redis.call('HSET', p .. 'st', name, doc) else redis.call('HDEL', p .. 'st', name) end
end
local gen
if n > 0 then gen = redis.call('INCR', p .. 'stgen') else gen = tonumber(redis.call('GET', p .. 'stgen') or '0') end
if nonce ~= '' then redis.call('SET', nonce, 1, 'PX', ARGV[4]) end
return {'ok', seq, gen}
"""

# ARGV: prefix, receiver, message id, body, seconds to remember the id, bus cap.
_DELIVER = """
local p, receiver, mid = ARGV[1], ARGV[2], ARGV[3]
local known = p .. 'dl:' .. receiver .. '|' .. mid
local position = redis.call('GET', known)
if position then return tonumber(position) end
position = redis.call('INCR', p .. 'ibpos')
redis.call('XADD', p .. 'ib:' .. receiver, position .. '-0', 'm', mid, 'b', ARGV[4])
redis.call('SADD', p .. 'inboxes', receiver)  -- every inbox, for inbox_depth
redis.call('SET', known, position, 'EX', ARGV[5])
redis.call('XADD', p .. 'bus', 'MAXLEN', '~', ARGV[6], '*', 'k', 'dm', 'r', receiver,
           'p', position, 'b', ARGV[4])
return position
"""

# ARGV: prefix, sender, highest, seen (hex): keep the wider window.
_REMEMBER = """
local p, sender, highest, seen = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local old = redis.call('HGET', p .. 'seqw', sender)
if old then
  local sep = string.find(old, ':', 1, true)
  local old_highest, old_seen = tonumber(string.sub(old, 1, sep - 1)), string.sub(old, sep + 1)
  if old_highest > highest then return 0 end
  if old_highest == highest then
    if #old_seen > #seen then return 0 end
    if #old_seen == #seen and old_seen > seen then return 0 end
  end
end
redis.call('HSET', p .. 'seqw', sender, ARGV[3] .. ':' .. seen)
return 1
"""

# ARGV: prefix, the state document's name, a keyring document (JSON): merged into the
# one kept, key by key (kid), the record of the furthest state winning (the order of
# protocol/keyring.py), so that a copy made before a revocation and saved after it never
# takes the revocation back. Then the state generation moves, as any save moves it.
_SHARE_KEYRING = """
local order = {active = 0, deprecated = 1, revoked = 2, compromised = 3}
local p, name, new = ARGV[1], ARGV[2], cjson.decode(ARGV[3])
local old = redis.call('HGET', p .. 'st', name)
if old then
  local kept, kids = {}, {}
  for _, record in ipairs(cjson.decode(old).keys) do
    kept[record.kid] = record
    table.insert(kids, record.kid)
  end
  for _, record in ipairs(new.keys) do
    local known = kept[record.kid]
    if known == nil then
      table.insert(kids, record.kid)
      kept[record.kid] = record
    elseif (order[record.state] or 0) >= (order[known.state] or 0) then
      kept[record.kid] = record
    end
  end
  local keys = {}
  for i, kid in ipairs(kids) do keys[i] = kept[kid] end
  new.keys = keys
end
redis.call('HSET', p .. 'st', name, cjson.encode(new))
redis.call('INCR', p .. 'stgen')
"""

# ARGV: prefix, agent, time: keep the later time.
_SEEN = """
local old = tonumber(redis.call('HGET', ARGV[1] .. 'seen', ARGV[2]) or '-1')
if tonumber(ARGV[3]) > old then redis.call('HSET', ARGV[1] .. 'seen', ARGV[2], ARGV[3]) end
"""

# ARGV: prefix, how ("ids": a zset range, "lex": the members after a bound ("-" or
# "(id"), at most a count, of each zset named after them, "avail": claim keys, "fillers":
# the claim keys of fillers, "due": by lease score, "members": a set, "list": the ids
# that follow), key suffix, then the range (a count for "fillers", bound and count for
# "lex") or the ids. Returns the task documents in order ("" for a task that does not
# exist; for "lex", each zset's in turn).
_FETCH = """
local p, how, key = ARGV[1], ARGV[2], ARGV[1] .. ARGV[3]
local ids
if how == 'list' then
  ids = {}
  for n = 4, #ARGV do ids[n - 3] = ARGV[n] end
elseif how == 'due' then
  ids = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. ARGV[4], 'LIMIT', 0, ARGV[5])
elseif how == 'members' then
  ids = redis.call('SMEMBERS', key)
elseif how == 'lex' then
  ids = {}
  for n = 6, #ARGV do
    for _, id in ipairs(redis.call('ZRANGEBYLEX', p .. ARGV[n], ARGV[4], '+', 'LIMIT', 0, ARGV[5])) do
      ids[#ids + 1] = id
    end
  end
elseif how == 'fillers' then
  -- claim keys of fillers begin with "1" (real work with "0"): their end of the zset
  ids = redis.call('ZRANGEBYLEX', key, '[1', '+', 'LIMIT', 0, ARGV[4])
else
  ids = redis.call('ZRANGE', key, ARGV[4], ARGV[5])
end
local docs = {}
for n, id in ipairs(ids) do
  if how == 'avail' or how == 'fillers' then
    id = string.sub(id, string.find(id, '|', 1, true) + 1)
  end
  docs[n] = redis.call('HGET', p .. 't:' .. id, 'd') or ''
end
return docs
"""


# ARGV: prefix, claimant, hold ms, page size, reach, then the tasks it held so far (let
# go). The head of the available list in claim order, until it has ``page size`` tasks
# no other claimant holds (or ``reach`` more than that); the first of those is held for
# this claimant. Tasks another claimant holds are returned too, flagged: they are
# judged after the others (see Coordinator.claim_next), never hidden. Returns the id
# held ("" for none), a flag per task ("1": held by another), then the task documents.
_CLAIMABLE = """
local p, holder, limit = ARGV[1], ARGV[2], tonumber(ARGV[4])
-- Holds change nothing a crash must keep: none is logged in the append-only file or
-- sent to replicas, so this script costs no fsync (with appendfsync always) and is as
-- quick as a read.
redis.set_repl(redis.REPL_NONE)
for n = 6, #ARGV do
  local held = p .. 'h:' .. ARGV[n]
  if redis.call('GET', held) == holder then redis.call('DEL', held) end
end
if limit == 0 then return {''} end  -- only letting go
-- read in steps: there are seldom more held tasks than claimants in flight
local reach, step, start = limit + tonumber(ARGV[5]), limit + 8, 0
local ids, flags, free, held = {}, {}, 0, ''
while free < limit and start < reach do
  local keys = redis.call('ZRANGE', p .. 'avail', start, math.min(start + step, reach) - 1)
  for _, ckey in ipairs(keys) do
    local id = string.sub(ckey, string.find(ckey, '|', 1, true) + 1)
    local by = redis.call('GET', p .. 'h:' .. id)
    ids[#ids + 1] = id
    if by and by ~= holder then
      flags[#flags + 1] = '1'
    else
      flags[#flags + 1] = '0'
      free = free + 1
      if held == '' then held = id end
      if free == limit then break end
    end
  end
  if #keys < step then break end
  start, step = start + step, step * 2
end
if held ~= '' then redis.call('SET', p .. 'h:' .. held, holder, 'PX', ARGV[3]) end
local reply = {held, table.concat(flags)}
for n, id in ipairs(ids) do reply[n + 2] = redis.call('HGET', p .. 't:' .. id, 'd') or '' end
return reply
"""


@dataclass
class _Transaction:
    """What one thread's :meth:`RedisStore.transact` read and will write."""

    reads: dict[str, int | None] = field(default_factory=dict)
    dependents: dict[str, int] = field(default_factory=dict)
    generation: int | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    documents: dict[str, bytes | None] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)  # tasks held for this claimant
    elsewhere: frozenset[str] = frozenset()  # tasks of its page other claimants held


class RedisStore:
    """Tasks, events, inboxes and state in one Redis (see the module's text).

    ``url`` is ``redis://[user:password@]host:port/db`` (or ``rediss://`` for TLS); the
    connection is checked at once, and an unreachable Redis raises
    :class:`~infrafabric.errors.StoreUnavailable` naming it. Safe to share between
    threads (each thread gets a connection of its own)."""

    #: Several processes share this store: what one keeps in memory may be stale.
    shared = True
    group_commit = False

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "{ifab}:",
        retention: int = 100_000,
        timeout: float = 5.0,
    ) -> None:
        self.url = redacted(url)
        self.prefix = prefix
        self.retention = retention
        # One connection per thread, made when the thread first needs it: a shared pool
        # costs each command two lock round trips, which with a dozen threads cost more
        # than the command (measured: ~1 ms of CPU per claim). A thread's connection
        # closes when the thread is gone.
        self._raw_url = url
        self._timeout = timeout
        self._local = threading.local()
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self._generation = (0, -GENERATION_SECONDS)  # the last one seen, and when
        try:
            with self._guard():  # unreachable: StoreUnavailable, at once
                first = self.redis
                first.ping()
        except ValueError as exc:
            raise StoreError(f"not a Redis URL: {self.url}: {exc}") from None
        try:
            _refuse_if_too_old(first, self.url)
        except StoreError:
            first.close()
            raise
        _warn_if_evicting(first, self.url)
        _warn_if_not_durable(first, self.url)
        self._apply = first.register_script(_APPLY)
        self._deliver = first.register_script(_DELIVER)
        self._remember = first.register_script(_REMEMBER)
        self._seen = first.register_script(_SEEN)
        self._share_keyring = first.register_script(_SHARE_KEYRING)
        self._fetch = first.register_script(_FETCH)
        self._claimable = first.register_script(_CLAIMABLE)
        # a claimant is a thread of this store's process: "<this store>.<thread>"
        self._holder = secrets.token_hex(8)

    @property
    def redis(self) -> Any:
        """This thread's client. ``Any``: redis-py types every reply as "value or
        awaitable value" (one class for its sync and async clients), which no caller
        can use without a cast each time."""
        client = getattr(self._local, "client", None)
        if client is None:
            # no retries inside redis-py: a request fails fast; the caller's retry decides
            client = redis.Redis.from_url(
                self._raw_url,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                single_connection_client=True,
                retry=Retry(NoBackoff(), 0),
            )
            self._local.client = client
            self._clients.add(client)
        return client

    # -- reads ------------------------------------------------------------------------------

    def get(self, task_id: str) -> Task | None:
        with self._guard():
            doc = self.redis.hget(self._key("t:", task_id), "d")
        task = None if doc is None else _TASK_DECODER.decode(doc)
        txn = self._txn()
        if txn is not None and task_id not in txn.reads:
            txn.reads[task_id] = None if task is None else task.version
        return task

    def get_many(self, task_ids: Iterable[str]) -> dict[str, Task]:
        wanted = list(dict.fromkeys(task_ids))
        if not wanted:
            return {}
        with self._guard():
            docs = self._fetch(client=self.redis, args=[self.prefix, "list", "", *wanted])
        found = {i: _TASK_DECODER.decode(doc) for i, doc in zip(wanted, docs, strict=True) if doc}
        txn = self._txn()
        if txn is not None:  # each one read is checked at commit, absent ones too
            for task_id in wanted:
                task = found.get(task_id)
                txn.reads.setdefault(task_id, None if task is None else task.version)
        return found

    def tasks(self, states: Iterable[TaskState] | None = None) -> list[Task]:
        if states is None:
            return self._tasks("ids", "ids", 0, -1)
        found: list[Task] = []
        for state in set(states):
            found += self._tasks("ids", f"s:{state}", 0, -1)
        return sorted(found, key=lambda task: task.id)

    def task_page(
        self, states: Iterable[TaskState] | None, after: str | None, limit: int
    ) -> TaskPage:
        # The id sets are scored alike, so ordered by their members' bytes (UTF-8 bytes
        # sort as code points do): a lexicographic range from just after ``after``, of
        # each set in one script (read one by one, a task claimed between two reads was
        # listed twice, or not at all); the first ``limit`` of all are among each set's
        # own first ``limit``.
        start = "-" if after is None else f"({after}"
        sets = ["ids"] if states is None else sorted({f"s:{state}" for state in states})
        with self._guard():
            docs = self._fetch(
                client=self.redis, args=[self.prefix, "lex", "", start, limit, *sets]
            )
        found = sorted((_TASK_DECODER.decode(doc) for doc in docs if doc), key=lambda t: t.id)
        page = found[:limit]
        return TaskPage(page, page[-1].id if len(page) == limit else None)

    def task_counts(self) -> dict[TaskState, int]:
        with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            for state in TaskState:
                pipe.zcard(self._key(f"s:{state}"))
            counts = pipe.execute()
        return {state: int(count) for state, count in zip(TaskState, counts, strict=True)}

    def inbox_depth(self) -> int:
        with self._guard():
            pipe = self.redis.pipeline(transaction=False)
            for receiver in self.redis.smembers(self._key("inboxes")):
                pipe.xlen(self._key("ib:", receiver.decode()))
            return sum(int(length) for length in pipe.execute())

    def dependents(self, task_id: str) -> list[Task]:
        found = sorted(self._tasks("members", f"deps:{task_id}"), key=lambda task: task.id)
        txn = self._txn()
        if txn is not None:
            txn.dependents.setdefault(task_id, len(found))
        return found

    def fillers(self, limit: int = 500) -> list[Task]:
        if limit <= 0:
            return []
        return self._tasks("fillers", "avail", limit)

    def available(self, offset: int = 0, limit: int = 64, *, hold: bool = False) -> list[Task]:
        if limit <= 0:
            return []
        txn = self._txn()
        if not hold or offset != 0 or txn is None:
            return self._tasks("avail", "avail", offset, offset + limit - 1)
        # (Only the first page holds; it is the head of the list, held tasks and all, so
        # the next page, read by offset, leaves no gap after it.)
        with self._guard():
            reply = self._claimable(
                client=self.redis,
                args=[
                    self.prefix,
                    self._claimant(),
                    int(HOLD_SECONDS * 1000),
                    limit,
                    HOLD_REACH,
                    *txn.held,
                ],
            )
        txn.held = [reply[0].decode()] if reply[0] else []
        page, elsewhere = [], set()
        for flag, doc in zip(reply[1].decode(), reply[2:], strict=True):
            if doc:
                task = _TASK_DECODER.decode(doc)
                page.append(task)
                if flag == "1":
                    elsewhere.add(task.id)
        txn.elsewhere = frozenset(elsewhere)
        return page

    def held_elsewhere(self, task_id: str) -> bool:
        txn = self._txn()
        return txn is not None and task_id in txn.elsewhere

    def expired(self, now: float, limit: int = 500) -> list[Task]:
        return self._tasks("due", "leases", repr(float(now)), limit)

    def events_since(self, seq: int, limit: int = 1000) -> Sequence[StoredEvent]:
        with self._guard():
            entries = self.redis.xrange(self._key("ev"), f"{seq + 1}-0", "+", count=limit)
        return [
            StoredEvent(int(entry_id.split(b"-")[0]), _EVENT_DECODER.decode(fields[b"d"]))
            for entry_id, fields in entries
        ]

    def last_seq(self) -> int:
        """The sequence number of the newest event (0: none yet)."""
        with self._guard():
            return int(self.redis.get(self._key("seq")) or 0)

    # -- writes -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Redis makes each step durable when it is made (no group commit): a batch is
        only a grouping here, and a failed step leaves the earlier ones written."""
        yield

    def apply(self, outcome: Outcome, *, then: Callable[[Outcome], None] | None = None) -> int:
        return self.transact(lambda store: outcome, then=then)[1]

    def transact(
        self,
        work: Callable[[Store], Outcome | None],
        *,
        then: Callable[[Outcome], None] | None = None,
    ) -> tuple[Outcome | None, int]:
        """Run ``work`` and apply its outcome if nothing it read has changed meanwhile
        (optimistic: :class:`Conflict` otherwise, and nothing written; the caller decides
        again). Inside, ``apply`` and ``save_state`` join this transaction."""
        outer = self._txn()
        if outer is not None:  # called from ``then``: part of the enclosing change
            outcome = work(self)
            if outcome is not None:
                outer.outcomes.append(outcome)
                if then is not None:
                    then(outcome)
            return outcome, 0
        txn = _Transaction()
        self._local.txn = txn
        committing = False
        try:
            outcome = work(self)
            if outcome is None:
                return None, 0
            txn.outcomes.append(outcome)
            if then is not None:
                then(outcome)
            committing = True  # (the commit lets go of what this claimant held)
        except StoreError:
            txn.held = []  # Redis is failing: no more calls; the holds run out by themselves
            raise
        finally:
            self._local.txn = None
            if txn.held and not committing:
                self._let_go(txn.held)
        return outcome, self._commit(txn)

    def save_state(
        self, documents: Mapping[str, bytes | None], *, expected: int | None = None
    ) -> None:
        txn = self._txn()
        if txn is not None:
            txn.documents.update(documents)
        elif documents:
            self._commit(_Transaction(documents=dict(documents), generation=expected))

    def share_keyring(self, name: str, document: bytes) -> None:
        with self._guard():
            self._share_keyring(client=self.redis, args=[self.prefix, name, document])

    def state_version(self) -> int:
        """A number that changes whenever any process saves a state document: a process
        that keeps the documents in memory reloads them when it is not what it saw."""
        txn = self._txn()
        if txn is not None and txn.generation is not None:
            return txn.generation
        # Read at most every GENERATION_SECONDS (every change asks): a decision may use
        # books that much out of date, but a change that saves documents commits only if
        # the generation it read is still current, so no update is ever lost.
        generation, read_at = self._generation
        if time.monotonic() - read_at > GENERATION_SECONDS:
            with self._guard():
                generation = int(self.redis.get(self._key("stgen")) or 0)
            self._generation = (generation, time.monotonic())
        if txn is not None:
            txn.generation = generation  # checked when the transaction commits
        return generation

    def load_state(self, prefix: str) -> dict[str, bytes]:
        with self._guard():
            kept = self.redis.hgetall(self._key("st"))
        return {
            name.decode(): bytes(doc)
            for name, doc in sorted(kept.items())
            if name.decode().startswith(prefix)
        }

    # -- inboxes ----------------------------------------------------------------------------

    def deliver(self, receiver: str, message_id: str, body: bytes) -> int:
        with self._guard():
            position = self._deliver(
                client=self.redis,
                args=[self.prefix, receiver, message_id, body, DELIVERED_SECONDS, BUS_RETENTION],
            )
        return int(position)

    def pending(self, receiver: str, after: int = 0, limit: int = 100) -> Sequence[InboxEntry]:
        with self._guard():
            entries = self.redis.xrange(
                self._key("ib:", receiver), f"{after + 1}-0", "+", count=limit
            )
        return [
            InboxEntry(int(entry_id.split(b"-")[0]), fields[b"m"].decode(), bytes(fields[b"b"]))
            for entry_id, fields in entries
        ]

    def ack(self, receiver: str, position: int) -> bool:
        with self._guard():
            return int(self.redis.xdel(self._key("ib:", receiver), f"{position}-0")) == 1

    def publish(self, topic: str, body: bytes) -> None:
        """Announce a topic message to every server (the bus stream; live, not kept)."""
        with self._guard():
            self.redis.xadd(
                self._key("bus"),
                {"k": "topic", "t": topic, "b": body},
                maxlen=BUS_RETENTION,
                approximate=True,
            )

    # -- replay protection ------------------------------------------------------------------

    def remember_sequence(self, sender: str, highest: int, seen: int) -> None:
        with self._guard():
            self._remember(
                client=self.redis, args=[self.prefix, sender, highest, format(seen, "x")]
            )

    def note_seen(self, times: Mapping[str, float]) -> None:
        with self._guard():
            pipe = self.redis.pipeline(transaction=False)  # one round trip for all
            for agent, at in times.items():
                self._seen(client=pipe, args=[self.prefix, agent, repr(at)])
            pipe.execute()

    def last_seen(self, agents: Iterable[str]) -> dict[str, float]:
        wanted = list(agents)
        if not wanted:
            return {}
        with self._guard():
            found = self.redis.hmget(self._key("seen"), wanted)
        return {agent: float(at) for agent, at in zip(wanted, found, strict=True) if at}

    def sequences(self) -> list[tuple[str, int, int]]:
        with self._guard():
            kept = self.redis.hgetall(self._key("seqw"))
        windows = []
        for sender, window in sorted(kept.items()):
            highest, _, seen = window.decode().partition(":")
            windows.append((sender.decode(), int(highest), int(seen, 16)))
        return windows

    def spend_nonce_with_change(self, sender: str, nonce: str, seconds: float) -> None:
        """Spend ``sender``'s ``nonce`` in the same script as this thread's next change
        (one round trip, and a message's nonce is spent exactly when its effects are
        written); that change raises :class:`Replayed` if it was spent before. See
        :meth:`unspent_nonce` for a message that changed nothing."""
        key = self._key("nonce:", f"{sender}|{nonce}")
        self._local.nonce = (key, max(1, int(seconds * 1000)))

    def unspent_nonce(self) -> bool:
        pending = getattr(self._local, "nonce", None) is not None
        self._local.nonce = None
        return pending

    def claim_nonce(self, sender: str, nonce: str, seconds: float) -> bool:
        """Record that ``sender`` used ``nonce``, for ``seconds`` (until its message has
        expired); ``False`` if some server recorded it already (a replay)."""
        with self._guard():
            kept = self.redis.set(
                self._key("nonce:", f"{sender}|{nonce}"), 1, nx=True, px=max(1, int(seconds * 1000))
            )
        return bool(kept)

    # -- agents -----------------------------------------------------------------------------

    def enroll(self, agent: AgentRecord) -> None:
        with self._guard():
            self.redis.hset(self._key("agents"), agent.id, _ENCODER.encode(agent))

    def agents(self) -> list[AgentRecord]:
        with self._guard():
            kept = self.redis.hgetall(self._key("agents"))
        return [_AGENT_DECODER.decode(kept[agent_id]) for agent_id in sorted(kept)]

    def agent(self, agent_id: str) -> AgentRecord | None:
        with self._guard():
            doc = self.redis.hget(self._key("agents"), agent_id)
        return None if doc is None else _AGENT_DECODER.decode(doc)

    def close(self) -> None:
        for client in list(self._clients):
            client.close()

    # -- internals --------------------------------------------------------------------------

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}{name}"

    def _txn(self) -> _Transaction | None:
        txn: _Transaction | None = getattr(self._local, "txn", None)
        return txn

    def _tasks(self, how: str, key: str, start: Any = 0, stop: Any = -1) -> list[Task]:
        with self._guard():
            docs = self._fetch(client=self.redis, args=[self.prefix, how, key, start, stop])
        return [_TASK_DECODER.decode(doc) for doc in docs if doc]

    def _claimant(self) -> str:
        return f"{self._holder}.{threading.get_ident()}"

    def _let_go(self, held: Sequence[str]) -> None:
        """Let go of tasks this thread's claimant held and did not claim (nothing to
        write: they would only be passed over by others until their hold ran out)."""
        with contextlib.suppress(StoreError), self._guard():
            self._claimable(client=self.redis, args=[self.prefix, self._claimant(), 1, 0, 0, *held])

    def _commit(self, txn: _Transaction) -> int:
        nonce: tuple[str, int] | None = getattr(self._local, "nonce", None)
        args: list[Any] = [
            self.prefix,
            self.retention,
            *(nonce or ("", 0)),
            self._claimant() if txn.held else "",
            len(txn.held),
            *txn.held,
            len(txn.reads),
        ]
        for task_id, version in txn.reads.items():
            args += [task_id, "" if version is None else version]
        args.append(len(txn.dependents))
        for task_id, count in txn.dependents.items():
            args += [task_id, count]
        saving = bool(txn.documents)
        args.append("" if txn.generation is None or not saving else txn.generation)
        tasks = [(task, outcome) for outcome in txn.outcomes for task in outcome.tasks]
        args.append(len(tasks))
        for task, outcome in tasks:
            created = task.id in outcome.created
            owned = task.state.owned and task.lease_expires_at is not None
            args += [
                task.id,
                "" if created else task.version - 1,
                task.version,
                str(task.state),
                _ENCODER.encode(task),
                claim_key(task) if task.state is TaskState.AVAILABLE else "",
                repr(task.lease_expires_at) if owned else "",
                len(task.dependencies) if created else 0,
                *(task.dependencies if created else ()),
            ]
        events = [event for outcome in txn.outcomes for event in outcome.events]
        args.append(len(events))
        args += [_ENCODER.encode(event) for event in events]
        args.append(len(txn.documents))
        for name, doc in txn.documents.items():
            args += [name, "d", ""] if doc is None else [name, "s", doc]
        with self._guard():
            reply = self._apply(client=self.redis, args=args)
        if reply[0] == b"replay":
            self._local.nonce = None
            raise Replayed("the message's nonce was spent already: a replay")
        if reply[0] == b"conflict":
            task_id, expected, found = (part.decode() for part in reply[1:])
            if found.startswith("state "):  # the books moved: read them fresh next time
                self._generation = (int(found.removeprefix("state ")), time.monotonic())
            raise Conflict(task_id, _version(expected), _version(found))
        self._generation = (int(reply[2]), time.monotonic())
        self._local.nonce = None  # spent, with this change
        return int(reply[1])

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        return redis_errors(self.url)


@contextlib.contextmanager
def redis_errors(url: str) -> Iterator[None]:
    """Redis's errors as the fabric's: unreachable is retryable, the rest is not."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis at {url} is unavailable: {exc}") from None
    except redis.exceptions.RedisError as exc:
        raise StoreError(f"Redis at {url}: {exc}") from None


#: The oldest Redis the store works with: streams (inboxes, events) and scripts that
#: replicate their effects (``redis.set_repl``, for holds) came with 5.0.
OLDEST_REDIS: Final = (5, 0)


def _refuse_if_too_old(client: Any, url: str) -> None:
    """A Redis older than :data:`OLDEST_REDIS` would fail at the first claim with a
    script error: refuse it at once, naming the version. (A Redis that does not answer
    ``INFO`` is given the benefit of the doubt.)"""
    try:
        version = str(client.info("server").get("redis_version", ""))
    except redis.exceptions.RedisError:
        return
    if not redis_version_supported(version):
        raise StoreError(
            f"Redis at {url} is version {version}: InfraFabric needs Redis "
            f"{'.'.join(map(str, OLDEST_REDIS))} or later (streams, script effects)"
        )


def redis_version_supported(version: str) -> bool:
    """Whether a Redis that reports ``version`` (``INFO server``'s ``redis_version``,
    "7.0.15") is new enough; an unreadable version is not refused."""
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0) >= OLDEST_REDIS
    except ValueError:
        return True


def _warn_if_evicting(client: Any, url: str) -> None:
    """Nonces, delivered-message ids and the witness's lease are keys with a time to
    live: a Redis that evicts such keys when full (``volatile-*``, ``allkeys-*``) would
    let a replay through. Only ``noeviction`` is safe; say so loudly."""
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.exceptions.RedisError:  # a managed Redis may refuse CONFIG: say nothing
        return
    if policy not in (None, "noeviction", b"noeviction"):
        _log.warning(
            "Redis at %s evicts keys when full (maxmemory-policy %s): set it to noeviction,"
            " or replays and duplicate deliveries may get through",
            url,
            policy,
        )


def _warn_if_not_durable(client: Any, url: str) -> None:
    """A Redis without its append-only file (``appendonly no``, stock Redis's default)
    loses every change since its last snapshot when it is killed: all the fabric
    acknowledged meanwhile. docs/operations.md says never to run a fabric so; say it here
    too, where the operator looks first."""
    try:
        appendonly = client.config_get("appendonly").get("appendonly")
    except redis.exceptions.RedisError:  # a managed Redis may refuse CONFIG: say nothing
        return
    if appendonly in ("no", b"no"):
        _log.warning(
            "Redis at %s keeps no append-only file (appendonly no): if it is killed, every"
            " change the fabric acknowledged since its last snapshot is lost; set"
            " appendonly yes with appendfsync always (see docs/operations.md)",
            url,
        )


def claim_key(task: Task) -> str:
    """A string whose byte order is :func:`~infrafabric.storage.base.claim_order`: real
    work before fillers, highest priority, oldest (the IEEE bits of the time, ordered),
    then the id."""
    bits = struct.unpack(">Q", struct.pack(">d", task.created_at))[0]
    bits = bits ^ 0xFFFF_FFFF_FFFF_FFFF if bits >> 63 else bits | 1 << 63  # negatives first
    return f"{int(task.filler)}{1000 - task.priority:04d}{bits:016x}|{task.id}"


def redacted(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (
        f":{parts.port}" if parts.port else ""
    )
    return urlunsplit(parts._replace(netloc=netloc))


def _version(text: str) -> int | None:
    return int(text) if text.isdigit() else None

"""A store in process memory: the reference engine for tests and throwaway swarms."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from infrafabric.board.model import Task, TaskState
from infrafabric.board.rules import Outcome
from infrafabric.storage.base import (
    AgentRecord,
    Conflict,
    InboxEntry,
    OneProcess,
    Store,
    StoredEvent,
    TaskPage,
    claim_order,
)

__all__ = ["MemoryStore"]


class MemoryStore(OneProcess):
    """Tasks in a dict, events in a bounded deque; one lock makes ``apply`` atomic.

    Durability: none, by design; everything is gone with the process.
    """

    group_commit = False

    def __init__(self, *, retention: int = 100_000) -> None:
        self._lock = threading.RLock()  # re-entrant: reads inside ``transact`` take it again
        self._tasks: dict[str, Task] = {}
        self._retention = retention
        self._events: deque[StoredEvent] = deque(maxlen=retention)
        self._seq = 0
        self._inboxes: dict[str, dict[int, InboxEntry]] = {}
        self._delivered: dict[tuple[str, str], int] = {}
        self._position = 0
        self._agents: dict[str, AgentRecord] = {}
        self._sequences: dict[str, tuple[int, int]] = {}
        self._state: dict[str, bytes] = {}

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def get_many(self, task_ids: Iterable[str]) -> dict[str, Task]:
        with self._lock:
            return {i: self._tasks[i] for i in task_ids if i in self._tasks}

    def tasks(self, states: Iterable[TaskState] | None = None) -> list[Task]:
        wanted = None if states is None else set(states)
        with self._lock:
            chosen = [t for t in self._tasks.values() if wanted is None or t.state in wanted]
        return sorted(chosen, key=lambda task: task.id)

    def task_page(
        self, states: Iterable[TaskState] | None, after: str | None, limit: int
    ) -> TaskPage:
        wanted = None if states is None else set(states)
        with self._lock:
            chosen = [
                t
                for t in self._tasks.values()
                if (wanted is None or t.state in wanted) and (after is None or t.id > after)
            ]
        page = sorted(chosen, key=lambda task: task.id)[:limit]
        return TaskPage(page, page[-1].id if len(page) == limit else None)

    def task_counts(self) -> dict[TaskState, int]:
        with self._lock:
            return dict(Counter(task.state for task in self._tasks.values()))

    def inbox_depth(self) -> int:
        with self._lock:
            return sum(len(inbox) for inbox in self._inboxes.values())

    def dependents(self, task_id: str) -> list[Task]:
        with self._lock:
            found = [task for task in self._tasks.values() if task_id in task.dependencies]
        return sorted(found, key=lambda task: task.id)

    def available(self, offset: int = 0, limit: int = 64, *, hold: bool = False) -> list[Task]:
        with self._lock:
            ready = [task for task in self._tasks.values() if task.state is TaskState.AVAILABLE]
        ready.sort(key=claim_order)
        return ready[offset : offset + limit]

    def fillers(self, limit: int = 500) -> list[Task]:
        with self._lock:
            ready = [
                task
                for task in self._tasks.values()
                if task.state is TaskState.AVAILABLE and task.filler
            ]
        ready.sort(key=claim_order)
        return ready[:limit]

    def expired(self, now: float, limit: int = 500) -> list[Task]:
        with self._lock:
            late = [
                task
                for task in self._tasks.values()
                if task.state.owned
                and task.lease_expires_at is not None
                and task.lease_expires_at < now
            ]
        late.sort(key=lambda task: (task.lease_expires_at, task.id))
        return late[:limit]

    @contextmanager
    def batch(self) -> Iterator[None]:
        with self._lock:  # nothing to make durable; holding the lock keeps the batch whole
            yield

    def apply(self, outcome: Outcome, *, then: Callable[[Outcome], None] | None = None) -> int:
        return self.transact(lambda store: outcome, then=then)[1]

    def transact(
        self,
        work: Callable[[Store], Outcome | None],
        *,
        then: Callable[[Outcome], None] | None = None,
    ) -> tuple[Outcome | None, int]:
        with self._lock:
            outcome = work(self)
            if outcome is None:
                return None, 0
            for task in outcome.tasks:
                current = self._tasks.get(task.id)
                expected = None if task.id in outcome.created else task.version - 1
                actual = None if current is None else current.version
                if actual != expected:
                    raise Conflict(task.id, expected, actual)
            for task in outcome.tasks:
                self._tasks[task.id] = task
            for event in outcome.events:
                self._seq += 1
                self._events.append(StoredEvent(self._seq, event))
            if then is not None:  # (memory keeps no rollback: a failure here stays written)
                then(outcome)
            return outcome, self._seq

    def events_since(self, seq: int, limit: int = 1000) -> Sequence[StoredEvent]:
        with self._lock:
            return [stored for stored in self._events if stored.seq > seq][:limit]

    def deliver(self, receiver: str, message_id: str, body: bytes) -> int:
        with self._lock:
            known = self._delivered.get((receiver, message_id))
            if known is not None:
                return known
            self._position += 1
            self._inboxes.setdefault(receiver, {})[self._position] = InboxEntry(
                self._position, message_id, body
            )
            self._delivered[(receiver, message_id)] = self._position
            if len(self._delivered) > self._retention:  # forget the oldest acknowledged ids
                for key, position in list(self._delivered.items())[: len(self._delivered) // 2]:
                    if position not in self._inboxes.get(key[0], {}):
                        del self._delivered[key]
            return self._position

    def pending(self, receiver: str, after: int = 0, limit: int = 100) -> Sequence[InboxEntry]:
        with self._lock:
            inbox = self._inboxes.get(receiver, {})
            return [inbox[position] for position in sorted(inbox) if position > after][:limit]

    def ack(self, receiver: str, position: int) -> bool:
        with self._lock:
            return self._inboxes.get(receiver, {}).pop(position, None) is not None

    def agent(self, agent_id: str) -> AgentRecord | None:
        with self._lock:
            return self._agents.get(agent_id)

    def remember_sequence(self, sender: str, highest: int, seen: int) -> None:
        with self._lock:  # only a wider window: a late writer's older one loses
            self._sequences[sender] = max((highest, seen), self._sequences.get(sender, (0, 0)))

    def sequences(self) -> list[tuple[str, int, int]]:
        with self._lock:
            return [(sender, *window) for sender, window in sorted(self._sequences.items())]

    def save_state(
        self, documents: Mapping[str, bytes | None], *, expected: int | None = None
    ) -> None:
        with self._lock:
            for name, doc in documents.items():
                if doc is None:
                    self._state.pop(name, None)
                else:
                    self._state[name] = doc

    def load_state(self, prefix: str) -> dict[str, bytes]:
        with self._lock:
            return {k: v for k, v in sorted(self._state.items()) if k.startswith(prefix)}

    def enroll(self, agent: AgentRecord) -> None:
        with self._lock:
            self._agents[agent.id] = agent

    def agents(self) -> list[AgentRecord]:
        with self._lock:
            return [self._agents[agent_id] for agent_id in sorted(self._agents)]

    def close(self) -> None:
        with self._lock:
            self._tasks.clear()
            self._events.clear()
            self._inboxes.clear()

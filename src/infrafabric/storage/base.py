"""The store protocol and its written guarantees."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import msgspec

from infrafabric.board.model import BoardEvent, Task, TaskState
from infrafabric.board.rules import Outcome
from infrafabric.errors import FabricError, PeerError

__all__ = [
    "AgentRecord",
    "Conflict",
    "InboxEntry",
    "OneProcess",
    "Replayed",
    "Store",
    "StoredEvent",
    "TaskPage",
    "claim_order",
]


def claim_order(task: Task) -> tuple[bool, int, float, str]:
    """The order in which available tasks are offered: real work before fillers, then
    highest priority, then oldest, then by id (every store sorts the same way)."""
    return (task.filler, -task.priority, task.created_at, task.id)


class Conflict(FabricError):
    """Compare-and-set lost: task ``task_id`` is not at the version the change was made
    from (another agent got there first). Nothing was written; re-read and decide again."""

    def __init__(self, task_id: str, expected: int | None, actual: int | None) -> None:
        wanted = "absent" if expected is None else f"version {expected}"
        found = "absent" if actual is None else f"version {actual}"
        super().__init__(f"task {task_id}: expected {wanted}, found {found}")
        self.task_id = task_id
        self.expected = expected
        self.actual = actual


class Replayed(PeerError):
    """The change belongs to a message whose nonce was spent already (a replay, maybe
    through another server): nothing was written."""


class AgentRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An agent enrolled in the fabric: what it can do (the governor adds prices later)."""

    id: str
    capabilities: tuple[str, ...] = ()
    description: str = ""
    enrolled_at: float = 0.0


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A direct message waiting in an inbox, at ``position`` (rising per store)."""

    position: int
    message_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A board event with its position in the store's event log (1, 2, 3...)."""

    seq: int
    event: BoardEvent


class Store(Protocol):
    """What every store guarantees.

    * ``apply`` is **atomic**: every task of the outcome is written, or none. Each task is
      compared and set: a task in ``outcome.created`` must not exist yet; any other must
      be stored at exactly ``task.version - 1``. Otherwise :class:`Conflict` and no write.
    * ``apply`` is **durable** when it returns, at the engine's stated level (SQLite with
      ``synchronous=FULL`` survives power loss; ``NORMAL`` survives ``kill -9`` of the
      process but may lose the last commits on power loss).
    * ``apply`` appends the outcome's events to the event log in order, in the same
      transaction: an event is logged exactly when its change is stored.
    * Reads return committed state; ``tasks``, ``dependents`` return ids in ascending order.
    * A store is safe to share between threads of one process. A ``shared`` store
      (Redis) is shared by several processes too: what a process keeps in memory from
      it (the governor's books) may be stale, and :meth:`state_version` says when.
    """

    #: Other processes write this store too (see :meth:`state_version`).
    shared: bool
    #: :meth:`batch` commits its steps together (SQLite); without it (memory, Redis)
    #: each step is committed when it is made and the batch only groups them.
    group_commit: bool

    def get(self, task_id: str) -> Task | None:
        """The task, or ``None``."""

    def get_many(self, task_ids: Iterable[str]) -> dict[str, Task]:
        """The tasks of ``task_ids`` that exist, by id (one read, however many)."""

    def tasks(self, states: Iterable[TaskState] | None = None) -> list[Task]:
        """All tasks, or those in ``states``, by id."""

    def task_page(
        self, states: Iterable[TaskState] | None, after: str | None, limit: int
    ) -> TaskPage:
        """A page of :meth:`tasks`: those whose id sorts after ``after`` (by code point),
        at most ``limit``, and the ``after`` of the next page (``None`` at the end). Each
        page is one bounded read (a store that must scan for ``states`` scans at most a
        fixed number of tasks, and may then answer fewer than ``limit`` with a ``next``),
        so paging through a large board never holds the store for long. The pages are
        not one snapshot: a task that changes state between two pages may be listed in
        both or in neither; each page is consistent in itself."""

    def task_counts(self) -> dict[TaskState, int]:
        """How many tasks are in each state (states with none may be missing), counted
        without reading the tasks: for metrics."""

    def dependents(self, task_id: str) -> list[Task]:
        """Tasks that list ``task_id`` among their dependencies."""

    def available(self, offset: int = 0, limit: int = 64, *, hold: bool = False) -> list[Task]:
        """Available tasks in the order they should be claimed: real work before filler
        tasks, then highest priority, oldest, by id; a page of ``limit`` from ``offset``.

        ``hold`` (a claimant's first page, inside :meth:`transact`): a store shared by
        several processes flags the tasks other claimants are holding
        (:meth:`held_elsewhere`), reads on until it has ``limit`` tasks not held, and
        holds the first of those for this one until its transaction ends, so claimants
        of different servers do not all choose the same task (a hint only: a claim is
        still compared and set). A store with one writer process has no such claimants
        and ignores it."""

    def fillers(self, limit: int = 500) -> list[Task]:
        """Available filler tasks in claim order, at most ``limit``: what a blocked agent
        may be offered, read from the claim order's index without the rest of the board
        (reading every available task held the write lock for as long as it took to
        decode them all)."""

    def held_elsewhere(self, task_id: str) -> bool:
        """Whether another claimant held ``task_id`` when this transaction's first page
        was read with ``hold`` (never, on a store with one writer process)."""

    def expired(self, now: float, limit: int = 500) -> list[Task]:
        """Owned tasks whose lease ran out before ``now``, soonest expired first, at most
        ``limit``: what the lease sweeper returns to the board. Stores keep an index on
        the lease so the sweep costs nothing when no lease has run out."""

    def apply(self, outcome: Outcome, *, then: Callable[[Outcome], None] | None = None) -> int:
        """Write ``outcome`` atomically (see above); returns the last event's sequence
        number. ``then`` as for :meth:`transact`."""

    def transact(
        self,
        work: Callable[[Store], Outcome | None],
        *,
        then: Callable[[Outcome], None] | None = None,
    ) -> tuple[Outcome | None, int]:
        """Run ``work`` with the store's write lock held and apply what it returns, in one
        atomic transaction: the reads ``work`` makes (through the store it is given) see
        no concurrent change, so its outcome cannot conflict with another writer's. Returns
        the outcome (``None``: nothing to write) and the last event's sequence number.

        ``then`` runs once the outcome is written, still inside the transaction and under
        the lock: what it writes (the governor's books, say) commits with the outcome,
        and it is called with the store's lock held (one lock order for its own locks).
        If it raises, nothing is written."""

    def batch(self) -> AbstractContextManager[None]:
        """Group commit: every ``transact``, ``apply`` and ``deliver`` made by this thread
        inside the block stays atomic on its own (one that fails leaves no trace), and all
        of them become durable together when the block ends, at the cost of one commit.
        Nothing in the block is durable before it ends; if the final commit fails, none of
        it happened (with ``group_commit``; otherwise each step commits when it is made,
        and the block only groups them) and :class:`~infrafabric.errors.StoreError` is raised. Other threads
        wait for the block (it holds the write lock), so keep it short."""

    def events_since(self, seq: int, limit: int = 1000) -> Sequence[StoredEvent]:
        """Logged events after ``seq``, oldest first, at most ``limit`` (replay for a client
        that reconnects; the log keeps the most recent ``retention`` events)."""

    # -- inboxes: direct messages kept until their receiver acknowledges them -------------

    def deliver(self, receiver: str, message_id: str, body: bytes) -> int:
        """Put ``body`` (a verified, wire-encoded IFMessage) in ``receiver``'s inbox and
        return its inbox position. Durable when it returns. Delivering the same
        ``message_id`` to the same receiver again stores nothing and returns the first
        position, so a sender may retry safely."""

    def pending(self, receiver: str, after: int = 0, limit: int = 100) -> Sequence[InboxEntry]:
        """Unacknowledged messages of ``receiver`` after position ``after``, oldest first."""

    def ack(self, receiver: str, position: int) -> bool:
        """Remove the message at ``position`` from ``receiver``'s inbox; ``False`` if it was
        not there (already acknowledged, or someone else's)."""

    def inbox_depth(self) -> int:
        """Messages waiting in all inboxes, unacknowledged: for metrics."""

    # -- when agents were last heard from, fabric-wide -----------------------------------

    def note_seen(self, times: Mapping[str, float]) -> None:
        """Record when each agent of ``times`` was heard from (a later time only ever
        replaces an earlier one), so every server of a shared store colours it the same.
        A store only this process uses ignores it: the coordinator's own memory is the
        whole answer there."""

    def last_seen(self, agents: Iterable[str]) -> dict[str, float]:
        """When each of ``agents`` was last recorded by :meth:`note_seen` (those never
        recorded are left out)."""

    # -- replay windows: what the verifier accepted, kept across restarts -----------------

    def remember_sequence(self, sender: str, highest: int, seen: int) -> None:
        """Record ``sender``'s anti-replay window (the highest sequence number accepted,
        and the bitmap of those below it). Inside a :meth:`batch` it becomes durable with
        the batch, so no acknowledged message can be replayed after a crash. A window
        only grows: a record older than the stored one (lower ``(highest, seen)``) is
        ignored, so writers racing each other cannot shrink it."""

    def sequences(self) -> list[tuple[str, int, int]]:
        """Every recorded window ``(sender, highest, seen)``, for a restarting verifier."""

    def claim_nonce(self, sender: str, nonce: str, seconds: float) -> bool:
        """Record that ``sender`` used ``nonce`` for ``seconds`` (until its message has
        expired); ``False`` if it was recorded already: a replay through another
        process. A store only this process uses returns ``True`` (the verifier's own
        nonce cache covers one process)."""

    def spend_nonce_with_change(self, sender: str, nonce: str, seconds: float) -> None:
        """Spend the nonce (as :meth:`claim_nonce`) in the same commit as this thread's
        next change, which raises :class:`Replayed` instead if it was spent before: a
        message's nonce is spent exactly when its effects are written. A store only this
        process uses ignores it."""

    def unspent_nonce(self) -> bool:
        """Whether the nonce given to :meth:`spend_nonce_with_change` is still unspent (no
        change was written); forgets it either way."""

    def save_state(
        self, documents: Mapping[str, bytes | None], *, expected: int | None = None
    ) -> None:
        """Keep named documents of the fabric's other state machines (the governor's
        books), replacing those of the same name; ``None`` deletes one. All or none are
        written; inside a :meth:`batch` they become durable with it. With ``expected``
        (a :meth:`state_version` read earlier), outside a :meth:`transact`, a shared
        store writes nothing and raises :class:`Conflict` if another process saved
        documents since (inside one, the transaction's own check applies)."""

    def load_state(self, prefix: str) -> dict[str, bytes]:
        """Every kept document whose name starts with ``prefix``, by name."""

    def state_version(self) -> int:
        """A number that changes when another process saves a state document (always 0
        on a store only this process writes). Read inside :meth:`transact`, it is also
        checked when the transaction commits: documents saved from stale books conflict."""

    # -- agents ---------------------------------------------------------------------------

    def enroll(self, agent: AgentRecord) -> None:
        """Record ``agent`` (replacing an earlier record of the same id). Durable on return."""

    def agents(self) -> list[AgentRecord]:
        """Every enrolled agent, by id."""

    def agent(self, agent_id: str) -> AgentRecord | None:
        """One enrolled agent, or ``None``."""

    def close(self) -> None:
        """Release the engine's resources; further calls are errors."""


class TaskPage(NamedTuple):
    """One page of tasks by id (see :meth:`Store.task_page`)."""

    tasks: list[Task]
    next: str | None  # the ``after`` of the next page; ``None``: this was the last


@runtime_checkable
class SharesKeys(Protocol):
    """A store several processes share keys through (Redis)."""

    def share_keyring(self, name: str, document: bytes) -> None:
        """Merge keyring document ``document`` (a ``KeyringFile`` as JSON) into the state
        document ``name``, atomically, key by key: the record of the furthest state wins,
        so a copy made before another process revoked a key, saved after, does not take
        the revocation back."""


class OneProcess:
    """What a store that only this process writes (memory, SQLite) answers to the
    questions of a shared one: nothing kept in memory is ever stale, and the verifier's
    own nonce cache has seen every message already."""

    shared = False

    def state_version(self) -> int:
        return 0

    def claim_nonce(self, sender: str, nonce: str, seconds: float) -> bool:
        return True

    def spend_nonce_with_change(self, sender: str, nonce: str, seconds: float) -> None:
        return None

    def unspent_nonce(self) -> bool:
        return False

    def held_elsewhere(self, task_id: str) -> bool:
        return False

    def note_seen(self, times: Mapping[str, float]) -> None:
        return None

    def last_seen(self, agents: Iterable[str]) -> dict[str, float]:
        return {}

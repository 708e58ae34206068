"""The coordinator: the board's rules applied to a store, with retries on lost races.

Every operation reads the tasks it needs, computes an outcome with the pure rules of
:mod:`infrafabric.board.rules`, and applies it to the store with compare-and-set. When
another writer got there first (:class:`~infrafabric.storage.base.Conflict`), it reads
again and decides again: a claim then finds the task taken and says so; a completion
finds whether its lease still holds. Nothing is ever applied from a stale read.

Thread-safe: any number of threads (agents of an embedded swarm, server workers) may
share one coordinator. Time comes from ``clock``; tests pass a manual one.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import msgspec

from infrafabric.board import rules
from infrafabric.board.model import Blocker, BoardEvent, Task, TaskState
from infrafabric.board.rules import BoardConfig, Health, Outcome
from infrafabric.errors import CallerError, FabricError, StoreError
from infrafabric.storage.base import Conflict, Store
from infrafabric.types import AgentId, Timestamp

__all__ = ["Busy", "Coordinator", "TaskNotFound"]

_log = logging.getLogger(__name__)
_SPREAD_RANDOM: Final = random.Random()  # noqa: S311 (spreading racers, not a secret)
#: Attempts before a write that keeps losing races gives up (each attempt re-reads).
MAX_RETRIES: Final = 200
#: How long claim_next waits for another claimant of this process to finish with a task
#: it reserved, when no other task is free, before looking again.
RESERVED_WAIT_SECONDS: Final = 1.0
#: After losing a race to another server, claim_next takes one of this many first free
#: tasks at random (see there).
RACE_SPREAD: Final = 16
#: Claims of this process remembered, so that a page of available tasks read before one
#: of them was written is not believed about it (far more than claims in flight).
TAKEN_KEPT: Final = 4096
#: claim_next takes turns per agent: agents hashed onto this many locks.
AGENT_STRIPES: Final = 64
# Most agents qualify for the first task or the next: decoding more is waste.
_FIRST_PAGE: Final = 2
_LARGEST_PAGE: Final = 256
#: Times one page is read again because claims here moved the list up meanwhile.
_MAX_REREADS: Final = 2
#: A sweep returns up to SWEEP_PAGES x SWEEP_PAGE expired leases; the rest wait a second.
SWEEP_PAGE: Final = 500
#: Fillers a blocked agent's offer chooses from: the first ones in claim order.
FILLER_SCAN: Final = 500
SWEEP_PAGES: Final = 20
#: The trace of the message being carried out in this thread or task (see ``traced``).
_TRACE: Final = contextvars.ContextVar[str | None]("infrafabric_trace", default=None)


class Busy(FabricError):
    """A write lost ``MAX_RETRIES`` races in a row: the board is too contended; try again."""


class TaskNotFound(CallerError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task {task_id}")
        self.task_id = task_id


class Coordinator:
    """Tasks, leases and events of one board, over one store."""

    def __init__(
        self,
        store: Store,
        *,
        config: BoardConfig = rules.DEFAULT_CONFIG,
        clock: Callable[[], Timestamp] = time.time,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self._seen: dict[AgentId, Timestamp] = {}
        self._seen_shared: dict[AgentId, Timestamp] = {}  # what the shared store was told
        self._seen_lock = threading.Lock()
        # tasks a claim_next of this process has chosen and not finished claiming, and
        # how many times some were let go (see claim_next)
        self._reservations = threading.Condition()
        self._reserved: set[str] = set()
        self._releases = 0
        # over a shared store, the version each task claimed here was claimed from (the
        # latest TAKEN_KEPT), and how many such claims there were
        self._taken: OrderedDict[str, int] = OrderedDict()
        self._taken_count = 0
        self._agent_turns = tuple(threading.Lock() for _ in range(AGENT_STRIPES))
        self._listeners: list[Callable[[Sequence[BoardEvent]], None]] = []
        self._writers: list[Callable[[Sequence[BoardEvent]], Sequence[BoardEvent]]] = []

    # -- tasks ----------------------------------------------------------------------------

    def create(self, tasks: Sequence[Task]) -> list[Task]:
        """Create ``tasks`` together (they may depend on each other); returns them stored."""

        named = {task.id for task in tasks} | {dep for task in tasks for dep in task.dependencies}

        def decide(store: Store) -> Outcome:
            # only the tasks named (new ids, dependencies) are read, in one go
            return rules.create(tasks, store.get_many(sorted(named)), self.clock(), self.config)

        outcome = self._transact(decide, "create")
        assert outcome is not None
        return list(outcome.tasks)

    def get(self, task_id: str) -> Task:
        task = self.store.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    def tasks(self, states: Iterable[TaskState] | None = None) -> list[Task]:
        return self.store.tasks(states)

    # -- claiming ---------------------------------------------------------------------------

    def claim(self, task_id: str, agent: AgentId) -> Task:
        """Claim ``task_id`` for ``agent``; :class:`IllegalTransition` if it is not available."""
        return self._change(
            task_id, agent, lambda task, now: rules.claim(task, agent, now, self.config)
        )

    def claim_next(
        self,
        agent: AgentId,
        capabilities: Iterable[str] = (),
        *,
        accept: Callable[[Task, Timestamp], bool] | None = None,
    ) -> Task | None:
        """Claim the highest-priority available task ``agent`` qualifies for, or ``None``.

        ``accept`` (the governor's choice) replaces the default test, which is that the
        agent has every capability the task requires. Filler tasks are left for blocked
        agents (:meth:`block` offers them); claim one by id to take it on purpose."""
        have = tuple(capabilities)
        self._saw(agent)

        def qualified(task: Task, now: Timestamp) -> bool:
            return rules.qualifies(task, have)

        test = accept or qualified

        # One transaction: under the write lock of a local store, a crowd of claimants
        # never races for the same task, each simply gets the next one. A shared store
        # (Redis) has no such lock: claimants that all read the same best task would all
        # but one conflict, and the rest race again for the next (a herd: n² attempts for
        # n claims). So a claimant of this process reserves the task it chose, and the
        # others pass over it: this process's claims go on side by side, each on a task of
        # its own (taking turns instead cost a whole Redis round trip per claim, and held
        # a server to one claim at a time). Only claimants in other processes race, and
        # the loser of such a race looks again. A page read before another claimant here
        # finished may still show that claimant's task as available: the version it was
        # taken at is remembered, and a page that old is not believed.
        mine: list[Task] = []  # what this claimant reserved (one task at most)
        passed_over = False  # whether a task reserved by another claimant was passed over

        def free(task: Task, now: Timestamp) -> bool:
            nonlocal passed_over
            if self._taken.get(task.id, -1) >= task.version:
                return False  # claimed here since this page was read
            if task.id in self._reserved:
                # one this agent would take may come back (asked once: it costs)
                passed_over = passed_over or test(task, now)
                return False
            return test(task, now)

        lost_a_race = False

        def decide(store: Store) -> Outcome | None:
            nonlocal passed_over, lost_a_race
            # Over a shared store, the first page holds a task for this claimant
            # (store.available's ``hold``): other claimants, here or on other servers,
            # take it only if no task of its priority that nobody holds follows it, and
            # this one likewise theirs (_best_for). Still, a claim can lose a race to
            # another server (a held task taken all the same, a claim by id, a hold that
            # ran out). Deciding again with a task reserved means it did: from then on this
            # claimant takes one of the first RACE_SPREAD free tasks of the best
            # priority at random, holding none, so that a crowd of losers does not race
            # again for the next one. A claimant that never lost takes the first.
            lost_a_race = lost_a_race or bool(mine)
            self._release(mine)
            hold = self.store.shared and not lost_a_race
            while True:
                passed_over = False
                choice = _best_for(
                    store,
                    free,
                    self.clock(),
                    # a first page that holds reads on past what other claimants hold
                    # (claimants here hold what they reserved, unless they lost a race
                    # or chose a task past their held one: then a page may be spent on
                    # reserved tasks); one that does not must reach past them
                    ahead=0 if hold else len(self._reserved),
                    spread=RACE_SPREAD if lost_a_race else 1,
                    shifted=self._shifted if self.store.shared else None,
                    hold=hold,
                )
                if choice is None:
                    return None
                if self._reserve(choice):
                    mine.append(choice)
                    return _traced(rules.claim(choice, agent, self.clock(), self.config))
                # another claimant here reserved it meanwhile: look again

        # One claim at a time per agent (per stripe of agents, in fact): the governor's
        # books for an agent (a breaker's single trial claim, say) are read while
        # deciding and written with the claim, as when every claim took turns.
        with self._agent_turns[hash(agent) % len(self._agent_turns)]:
            try:
                for _ in range(MAX_RETRIES):
                    released = self._releases
                    outcome = self._transact(decide, f"claim for {agent}")
                    if outcome is not None:
                        # (a local store decides under its write lock: no stale pages)
                        self._release(mine, taken=self.store.shared)
                        return outcome.tasks[0]
                    if not passed_over:
                        return None
                    # Nothing free, but tasks reserved that this agent would take: one
                    # may come back (its claim failed), so wait for a claimant here to
                    # finish, then look again.
                    self._await_release(released)
                return None
            finally:
                self._release(mine)

    def _shifted(self) -> tuple[int, int]:
        """Claims of this process written so far, and in flight: how far a page of the
        available list may have moved up under a claimant paging through it."""
        return self._taken_count, len(self._reserved)

    def _reserve(self, task: Task) -> bool:
        with self._reservations:
            if task.id in self._reserved or self._taken.get(task.id, -1) >= task.version:
                return False
            self._reserved.add(task.id)
            return True

    def _await_release(self, since: int) -> None:
        """Until some reservation has been let go since there were ``since`` (or a while)."""
        with self._reservations:
            self._reservations.wait_for(
                lambda: self._releases != since, timeout=RESERVED_WAIT_SECONDS
            )

    def _release(self, mine: list[Task], *, taken: bool = False) -> None:
        """Let go of the reservation in ``mine``; ``taken``: the claim was written, so a
        page that still shows the task at that version is out of date."""
        if not mine:
            return
        with self._reservations:
            for task in mine:
                if taken:
                    self._taken[task.id] = task.version
                    self._taken.move_to_end(task.id)
                    self._taken_count += 1
                    if len(self._taken) > TAKEN_KEPT:
                        self._taken.popitem(last=False)
                self._reserved.discard(task.id)
            self._releases += 1
            self._reservations.notify_all()
        mine.clear()

    # -- working ----------------------------------------------------------------------------

    def heartbeat(self, task_id: str, agent: AgentId) -> Task:
        return self._change(
            task_id, agent, lambda task, now: rules.heartbeat(task, agent, now, self.config)
        )

    def progress(
        self,
        task_id: str,
        agent: AgentId,
        percent: int,
        note: str = "",
        *,
        usage: Mapping[str, Any] | None = None,
    ) -> Task:
        return self._change(
            task_id,
            agent,
            lambda task, now: _with_usage(
                rules.progress(task, agent, percent, note, now, self.config), task_id, usage
            ),
        )

    def block(
        self,
        task_id: str,
        agent: AgentId,
        blocker: Blocker,
        capabilities: Iterable[str] = (),
        *,
        accept: Callable[[Task, Timestamp], bool] | None = None,
    ) -> tuple[Task, Task | None]:
        """Block ``task_id``; returns the task and the filler task offered to ``agent``, if
        any: the best one ``accept`` takes (the governor's choice), else the best one it
        has the capabilities for."""
        have = tuple(capabilities)
        offered: list[str] = []

        def decide(task: Task, now: Timestamp) -> Outcome:
            fillers = self.store.fillers(FILLER_SCAN)
            outcome = rules.block(task, agent, blocker, now, fillers, have, accept)
            offered[:] = [
                event.task_id for event in outcome.events if event.kind == "filler.offered"
            ]
            return outcome

        blocked = self._change(task_id, agent, decide)
        return blocked, (self.store.get(offered[0]) if offered else None)

    def unblock(self, task_id: str, agent: AgentId) -> Task:
        return self._change(
            task_id, agent, lambda task, now: rules.unblock(task, agent, now, self.config)
        )

    def complete(
        self,
        task_id: str,
        agent: AgentId,
        result: Mapping[str, Any] | None = None,
        *,
        usage: Mapping[str, Any] | None = None,
    ) -> Task:
        """Complete ``task_id``; ``usage`` (tokens, model, USD: :class:`infrafabric.ops.Usage`)
        is recorded with the decision, for the witness's cost accounts."""

        def decide(task: Task, now: Timestamp) -> Outcome:
            outcome = rules.complete(
                task, agent, result or {}, now, self.store.dependents(task_id), self._state_of
            )
            return _with_usage(outcome, task_id, usage)

        return self._change(task_id, agent, decide)

    def fail(
        self,
        task_id: str,
        agent: AgentId,
        reason: str,
        *,
        retry: bool = True,
        usage: Mapping[str, Any] | None = None,
    ) -> Task:
        def decide(task: Task, now: Timestamp) -> Outcome:
            outcome = rules.fail(
                task,
                agent,
                reason,
                now,
                retry=retry,
                dependents=self.store.dependents(task_id),
                downstream=self.store.dependents,  # read only if it fails for good
            )
            return _with_usage(outcome, task_id, usage)

        return self._change(task_id, agent, decide)

    def give_up(self, task_id: str, agent: AgentId) -> Task:
        return self._change(task_id, agent, lambda task, now: rules.give_up(task, agent, now))

    def cancel(self, task_id: str, actor: AgentId | None, reason: str) -> Task:
        def decide(task: Task, now: Timestamp) -> Outcome:
            return rules.cancel(
                task, actor, reason, now, self.store.dependents(task_id), self.store.dependents
            )

        return self._change(task_id, actor, decide)

    # -- watching ---------------------------------------------------------------------------

    def sweep(self) -> int:
        """Return tasks whose lease ran out and escalate long blockers; returns how many
        tasks changed. Any number of sweepers may run at once: each change lands once."""
        changed = 0
        for _ in range(SWEEP_PAGES):  # bounded: a sweep never runs away under a flood
            late = self.store.expired(self.clock(), SWEEP_PAGE)
            for task in late:
                if self._try_once(functools.partial(self._expire, seen=task)):
                    changed += 1
            if len(late) < SWEEP_PAGE:
                break
        escalations = rules.escalate_blocked(
            self.store.tasks([TaskState.BLOCKED]), self.clock(), self.config
        )
        for task, event in zip(escalations.tasks, escalations.events, strict=True):
            if self._try_once(functools.partial(_unchanged, seen=task, change=event)):
                changed += 1
        return changed

    def _expire(self, store: Store, seen: Task) -> Outcome | None:
        """The lease of ``seen`` ran out: return it, if nobody changed it meanwhile (a
        heartbeat that just came in, or another server's sweeper)."""
        task = store.get(seen.id)
        if task is None or task.version != seen.version:
            return None
        owner_seen_at = None
        if task.state is TaskState.BLOCKED and task.owner is not None:
            owner_seen_at = self.seen_at(task.owner)
        outcome = rules.expire(
            task,
            self.clock(),
            store.dependents(task.id),
            owner_seen_at=owner_seen_at,
            config=self.config,
            downstream=store.dependents,
        )
        return outcome if outcome.tasks else None

    def request_help(
        self,
        task_id: str,
        agent: AgentId,
        needed: Iterable[str],
        agents: Mapping[AgentId, Iterable[str]],
        *,
        helpers: Sequence[AgentId] | None = None,
    ) -> list[AgentId]:
        """Invite up to ``max_helpers`` agents qualified for ``needed`` (the task's own
        required capabilities if empty; never the asker) to help on a task ``agent`` owns,
        or ``helpers`` (the governor's choice, under the same cap: its
        policy may only invite fewer); the invitation is a ``help.requested`` event."""
        task = self.get(task_id)
        now = self.clock()
        rules.heartbeat(task, agent, now, self.config)  # owner check, nothing applied
        # nothing named: help with the task itself (as the governor reads it), not anyone
        wanted = tuple(needed) or task.required_capabilities
        if helpers is None:
            helpers = rules.select_helpers(
                agents, wanted, exclude=[agent], max_helpers=self.config.max_helpers
            )
        helpers = list(helpers)[: self.config.max_helpers]
        event = BoardEvent(
            kind="help.requested",
            task_id=task_id,
            actor=agent,
            at=now,
            state=task.state,
            payload={"needed": list(wanted), "invited": helpers},
        )
        self._publish(Outcome((), (event,)))
        return helpers

    def heard_from(self, agent: AgentId) -> None:
        """``agent`` sent a message that passed every check (its board operations count
        by themselves): for its health, any proof of life will do."""
        self._saw(agent)

    def health(self, agent: AgentId) -> Health:
        return self.health_at(self.seen_at(agent))

    def health_at(self, seen_at: Timestamp | None) -> Health:
        """The heartbeat colour of an agent last heard from at ``seen_at``, now."""
        return rules.health(seen_at, self.clock(), self.config)

    def seen_at(self, agent: AgentId) -> Timestamp | None:
        """When ``agent`` was last heard from by the fabric, if it was."""
        return self.seen_times([agent]).get(agent)

    def seen_times(self, agents: Iterable[AgentId]) -> dict[AgentId, Timestamp]:
        """When each of ``agents`` was last heard from: by this server, or over a shared
        store by any server (one read for all of them)."""
        wanted = list(agents)
        with self._seen_lock:
            times = {agent: self._seen[agent] for agent in wanted if agent in self._seen}
        if self.store.shared:
            for agent, at in self.store.last_seen(wanted).items():
                mine = times.get(AgentId(agent))
                if mine is None or at > mine:
                    times[AgentId(agent)] = at
        return times

    def record(self, events: Sequence[BoardEvent]) -> None:
        """Log decisions the fabric took outside the board (an enrolled key, a flagged
        message) in the board's event log, so they are published and witnessed in order
        with everything else."""
        self._publish(Outcome((), tuple(events)))

    @staticmethod
    @contextlib.contextmanager
    def traced(trace_id: str | None) -> Iterator[None]:
        """Stamp the events of the changes made inside with ``trace_id`` (the trace of
        the message being carried out), so a trace can be followed through the witness."""
        token = _TRACE.set(trace_id)
        try:
            yield
        finally:
            _TRACE.reset(token)

    def listen(self, listener: Callable[[Sequence[BoardEvent]], None]) -> None:
        """Call ``listener`` with the events of every change this coordinator applies,
        once the change is written (and committed, unless a batch encloses it)."""
        self._listeners.append(listener)

    def listen_inside(self, writer: Callable[[Sequence[BoardEvent]], Sequence[BoardEvent]]) -> None:
        """Call ``writer`` with the events of every change *inside* the change's
        transaction, with the store's write lock held (take it before any lock of your
        own: one lock order). What it writes commits with the change; the events it
        returns (its own decisions) are logged with the change too, and listeners hear
        them right after the change's own events."""
        self._writers.append(writer)

    # -- internals --------------------------------------------------------------------------

    def _change(
        self, task_id: str, agent: AgentId | None, decide: Callable[[Task, Timestamp], Outcome]
    ) -> Task:
        if agent is not None:
            self._saw(agent)

        def work(store: Store) -> Outcome:
            task = store.get(task_id)
            if task is None:
                raise TaskNotFound(task_id)
            return decide(task, self.clock())

        outcome = self._transact(work, task_id)
        assert outcome is not None
        return next(task for task in outcome.tasks if task.id == task_id)

    def _transact(self, work: Callable[[Store], Outcome | None], what: str) -> Outcome | None:
        """Decide and write in one transaction, deciding again after a lost race."""
        for _ in range(MAX_RETRIES):
            try:
                return self._attempt(work)
            except Conflict:
                continue
        raise _busy(what)

    def _try_once(self, work: Callable[[Store], Outcome | None]) -> bool:
        """One attempt: whether it changed something (a lost race changes nothing)."""
        try:
            return self._attempt(work) is not None
        except Conflict:
            return False

    def _attempt(self, work: Callable[[Store], Outcome | None]) -> Outcome | None:
        # The decision reads inside the transaction: under a local store's write lock, or
        # checked at commit by a shared one (every task read must be unchanged). The
        # writers (the governor) hear of the change inside it too: what they write because
        # of it commits with it, and every thread takes the store's write lock before
        # their own (one lock order, no deadlock). The listeners hear of it once written.
        decided: list[BoardEvent] = []

        def traced_work(store: Store) -> Outcome | None:
            decided.clear()  # (a shared store may run the work again)
            outcome = work(store)
            return None if outcome is None else _traced(outcome)

        outcome, _ = self.store.transact(traced_work, then=lambda done: self._write(done, decided))
        if outcome is not None:
            self._notify([*outcome.events, *decided])
        return outcome

    def _publish(self, outcome: Outcome) -> None:
        self._transact(lambda store: outcome, "record")  # no task: it cannot conflict

    def _write(self, outcome: Outcome, decided: list[BoardEvent]) -> None:
        """Inside the change's transaction: the writers' turn, and their events logged."""
        for writer in self._writers:
            try:
                produced = tuple(writer(outcome.events))
            except StoreError:
                raise  # the store failed: the change must not commit without its books
            except Exception:  # a bug in a writer must not stop the board: it is logged
                _log.exception("board writer %r failed", writer)
                continue
            if produced:
                logged = _traced(Outcome((), produced))
                self.store.apply(logged)  # a savepoint of the change's transaction
                decided.extend(logged.events)

    def _notify(self, events: Sequence[BoardEvent]) -> None:
        """Tell every listener; one that fails is logged and does not stop the others,
        nor undo the change (it is applied)."""
        if events:
            for listener in tuple(self._listeners):
                try:
                    listener(events)
                except Exception:
                    _log.exception("board listener %r failed", listener)

    def _state_of(self, task_id: str) -> TaskState | None:
        task = self.store.get(task_id)
        return None if task is None else task.state

    def _saw(self, agent: AgentId) -> None:
        with self._seen_lock:  # (memory only: the shared store hears of it in share_seen)
            self._seen[agent] = self.clock()

    def share_seen(self) -> None:
        """Tell a shared store when this server last heard from each agent heard since
        the last call, in one write: the sweeper calls it every second, so claims and
        messages never wait on it and the health bands (30 s, 5 min) stay exact enough."""
        if not self.store.shared:
            return
        with self._seen_lock:
            news = {a: at for a, at in self._seen.items() if self._seen_shared.get(a) != at}
        if news:
            self.store.note_seen(news)
            with self._seen_lock:
                self._seen_shared.update(news)


def _traced(outcome: Outcome) -> Outcome:
    trace = _TRACE.get()
    if trace is None or not outcome.events:
        return outcome
    events = tuple(
        event if event.trace_id else msgspec.structs.replace(event, trace_id=trace)
        for event in outcome.events
    )
    return Outcome(outcome.tasks, events, outcome.created)


def _with_usage(outcome: Outcome, task_id: str, usage: Mapping[str, Any] | None) -> Outcome:
    """``usage`` added to the payload of the decision's own event (the first about the
    task), not to the events it caused (a dependent task released, say)."""
    if not usage:
        return outcome
    events = list(outcome.events)
    for position, event in enumerate(events):
        if event.task_id == task_id:
            payload = {**event.payload, "usage": dict(usage)}
            events[position] = msgspec.structs.replace(event, payload=payload)
            break
    return Outcome(outcome.tasks, tuple(events), outcome.created)


def _best_for(
    store: Store,
    accept: Callable[[Task, Timestamp], bool],
    now: Timestamp,
    *,
    ahead: int = 0,
    spread: int = 1,
    shifted: Callable[[], tuple[int, int]] | None = None,
    hold: bool = False,
) -> Task | None:
    """The first real task (filler tasks wait for blocked agents, who are offered them)
    in claim order that ``accept`` takes, or with ``spread`` > 1 one of the first
    ``spread`` such tasks of the first one's priority, at random. The first page read
    is ``ahead`` tasks longer (tasks ``accept`` will likely pass over), and ``hold``s
    its first task (see :meth:`Store.available`); a task another claimant holds is taken
    only if no task of its priority that nobody holds follows it on the page (a hold
    only says who is likely to take a task: one is never passed over for a lower
    priority, nor left for an agent that will not take it).

    ``shifted`` tells how many claims others wrote so far, and how many are in flight:
    tasks they take off the list move the rest up, so a page read at an offset may
    start past a task never seen. Each page past the first starts back by as many as
    may have moved since the previous page was read, and is read again from earlier
    when claims written during its read moved the list further (a task seen twice is
    judged twice; one jumped over would be missed)."""
    offset, size = 0, _FIRST_PAGE + ahead + spread - 1
    found: list[Task] = []
    deferred: Task | None = None  # the first task ``accept`` takes that another holds
    judged = 0  # claims written when the last page judged was read
    reach = 0  # how far back of its place the page being read starts
    rereads = 0
    while len(found) < spread:
        if shifted is not None and offset > 0:  # start back by what moved since
            now_written, in_flight = shifted()
            moved = min(offset, now_written - judged + in_flight - reach)
            if moved > 0:
                offset, reach = offset - moved, reach + moved
        written = shifted()[0] if shifted is not None else 0
        page = store.available(offset, size, hold=hold and offset == 0)
        if shifted is not None and offset > 0 and rereads < _MAX_REREADS:
            moved = min(offset, shifted()[0] - judged + in_flight - reach)
            if moved > 0:  # claims written while we read moved it further: again
                offset, reach, rereads = offset - moved, reach + moved, rereads + 1
                continue
        if not page:
            break
        for task in page:
            if task.filler:
                break  # claim order puts fillers last: no real work is left
            if found and task.priority != found[0].priority:
                break  # spread among equals only: a higher priority still goes first
            if deferred is not None and task.priority != deferred.priority:
                break  # the held one, rather than a lower priority
            if any(task.id == other.id for other in found):
                continue  # seen on the page before
            if accept(task, now):
                if hold and store.held_elsewhere(task.id):
                    deferred = deferred or task
                    continue
                found.append(task)
                if len(found) == spread:
                    break
        else:
            if deferred is not None:
                break  # (rather than read on for an equal one nobody holds)
            judged, reach, rereads = written, 0, 0
            offset += size
            size = min(size * 4, _LARGEST_PAGE)  # a picky agent: read further ahead each time
            continue
        break
    if not found:
        return deferred
    return found[0] if len(found) == 1 else _SPREAD_RANDOM.choice(found)


def _unchanged(store: Store, seen: Task, change: BoardEvent) -> Outcome | None:
    """``seen``'s next version with its ``change``, if ``seen`` is still current."""
    current = store.get(seen.id)
    if current is None or current.version != seen.version - 1:
        return None
    return Outcome((seen,), (change,))


def _busy(what: str) -> Busy:
    return Busy(f"{what}: lost {MAX_RETRIES} races in a row; the board is too busy, try again")

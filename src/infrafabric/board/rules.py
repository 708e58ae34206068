"""Operations on the task board: pure functions from tasks (and ``now``) to an outcome.

An :class:`Outcome` lists the new values of every task it changes (each one version up)
and the events to publish. A store applies an outcome atomically, each task compared and
set on the version it was read at, so of two agents racing for one task exactly one
outcome lands; the other store call reports a conflict and changes nothing.

Who may do what: only the owner may heartbeat, report progress, block, unblock,
complete, fail or give up a task, and only while its lease runs. A lease that has run
out is gone even before :func:`expire` has been applied: the next claimant may already be
working.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

import msgspec

from infrafabric.board.dag import check_new_dependencies
from infrafabric.board.model import MILESTONES, Blocker, BoardEvent, Milestone, Task, TaskState
from infrafabric.board.transitions import TaskEvent, next_state
from infrafabric.errors import CallerError
from infrafabric.types import AgentId, Timestamp

__all__ = [
    "DEFAULT_CONFIG",
    "BoardConfig",
    "Health",
    "InvalidTask",
    "LeaseLost",
    "NotOwner",
    "Outcome",
    "block",
    "cancel",
    "claim",
    "complete",
    "create",
    "escalate_blocked",
    "expire",
    "fail",
    "give_up",
    "health",
    "heartbeat",
    "pick_next",
    "progress",
    "qualifies",
    "select_helpers",
    "unblock",
]


@dataclass(frozen=True, slots=True)
class BoardConfig:
    """Every threshold of the board, with the defaults of DESIGN.md section 4."""

    lease_seconds: float = 120.0
    max_attempts: int = 3
    max_helpers: int = 3
    healthy_within: float = 30.0  # green below this many seconds since the last heartbeat
    alive_within: float = 300.0  # yellow below this, red beyond
    escalate_blocked_after: float = 1800.0


DEFAULT_CONFIG: Final = BoardConfig()

# The most waiting tasks one failure is shown on (they change in one transaction).
_MAX_DOWNSTREAM: Final = 10_000


@dataclass(frozen=True, slots=True)
class Outcome:
    """New task values (each exactly one version above what was read) and events."""

    tasks: tuple[Task, ...] = ()
    events: tuple[BoardEvent, ...] = ()
    created: frozenset[str] = field(default_factory=frozenset)  # ids that must not exist yet

    def __add__(self, other: Outcome) -> Outcome:
        return Outcome(
            self.tasks + other.tasks, self.events + other.events, self.created | other.created
        )


class InvalidTask(CallerError):
    """A task definition or request is invalid; ``task_id`` names it."""

    def __init__(self, task_id: str, detail: str) -> None:
        super().__init__(f"task {task_id}: {detail}")
        self.task_id = task_id
        self.detail = detail


class NotOwner(CallerError):
    """``agent`` tried to act on a task another agent (or nobody) owns."""

    def __init__(self, task_id: str, agent: AgentId, owner: AgentId | None) -> None:
        super().__init__(f"task {task_id} is owned by {owner or 'nobody'}, not {agent}")
        self.task_id = task_id
        self.agent = agent
        self.owner = owner


class LeaseLost(NotOwner):
    """The agent's lease on the task ran out; another agent may hold it now."""

    def __init__(self, task_id: str, agent: AgentId, expired_at: Timestamp) -> None:
        CallerError.__init__(
            self, f"task {task_id}: the lease of {agent} ran out at {expired_at:.3f}"
        )
        self.task_id = task_id
        self.agent = agent
        self.owner = agent


class Health(StrEnum):
    GREEN = "green"
    YELLOW = "yellow"
    RED = "red"


# -- creating ----------------------------------------------------------------------------


def create(
    specs: Sequence[Task],
    existing: Mapping[str, Task],
    now: Timestamp,
    config: BoardConfig = DEFAULT_CONFIG,
) -> Outcome:
    """Create ``specs`` together (they may depend on each other and on ``existing``).

    Each starts ``available``, or ``waiting`` while a dependency is unfinished. Its
    ``failed_dependencies`` list the tasks upstream that ended without completing (failed,
    dead or cancelled): a dependency that did, and those a waiting dependency lists (it
    can never run, so neither can this one). Raises :class:`InvalidTask` for a bad
    definition and :class:`~infrafabric.board.dag.DependencyError` for an unknown
    dependency or a cycle.
    """
    for spec in specs:
        _validate(spec)
    check_new_dependencies(specs, existing)
    batch = {spec.id: spec for spec in specs}
    failed_upstream = _failed_upstream(batch, existing)
    tasks, events = [], []
    for spec in specs:
        states = [(batch.get(dep) or existing[dep]).state for dep in spec.dependencies]
        pending = any(dep in batch for dep in spec.dependencies) or any(
            state is not TaskState.COMPLETED for state in states
        )
        failed = failed_upstream[spec.id]
        task = msgspec.structs.replace(
            spec,
            state=TaskState.WAITING if pending else TaskState.AVAILABLE,
            owner=None,
            lease_expires_at=None,
            attempts=0,
            max_attempts=spec.max_attempts or config.max_attempts,
            failed_dependencies=failed,
            created_at=now,
            updated_at=now,
            version=1,
        )
        tasks.append(task)
        events.append(_event("task.created", task, task.creator, now))
    return Outcome(tuple(tasks), tuple(events), frozenset(batch))


def _validate(spec: Task) -> None:
    if not spec.title.strip():
        raise InvalidTask(spec.id, "a task needs a title")
    if not 0 <= spec.priority <= 100:
        raise InvalidTask(spec.id, f"priority {spec.priority} is outside 0..100")
    if spec.max_attempts < 0:
        raise InvalidTask(spec.id, "max_attempts cannot be negative")
    if len(set(spec.dependencies)) != len(spec.dependencies):
        raise InvalidTask(spec.id, "a dependency is listed twice")


def _failed(state: TaskState) -> bool:
    return state in (TaskState.FAILED, TaskState.DEAD, TaskState.CANCELLED)


def _failed_upstream(
    batch: Mapping[str, Task], existing: Mapping[str, Task]
) -> dict[str, tuple[str, ...]]:
    """The ended tasks upstream of each new task (its ``failed_dependencies``): an existing
    dependency that ended without completing, the ones a waiting existing dependency
    lists, and those of a dependency in the batch. Dependencies in the batch come first
    (iteratively: a long chain in one batch cannot exhaust the stack; the batch has no
    cycle, checked before)."""
    found: dict[str, tuple[str, ...]] = {}
    for root in batch:
        stack = [root]
        while stack:
            task_id = stack[-1]
            if task_id in found:
                stack.pop()
                continue
            deps = batch[task_id].dependencies
            todo = [dep for dep in deps if dep in batch and dep not in found]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            roots: list[str] = []
            for dep in deps:
                if dep in batch:
                    roots.extend(found[dep])
                elif _failed(existing[dep].state):
                    roots.append(dep)
                elif existing[dep].state is TaskState.WAITING:
                    roots.extend(existing[dep].failed_dependencies)
            found[task_id] = tuple(dict.fromkeys(roots))  # each once, in order
    return found


# -- claiming ----------------------------------------------------------------------------


def qualifies(task: Task, capabilities: Iterable[str]) -> bool:
    """The agent has every capability the task requires (the governor refines this)."""
    return set(task.required_capabilities) <= set(capabilities)


def pick_next(candidates: Iterable[Task], accept: Callable[[Task], bool]) -> Task | None:
    """The available task to claim next: highest priority, then oldest, then by id."""
    available = [task for task in candidates if task.state is TaskState.AVAILABLE and accept(task)]
    if not available:
        return None
    return min(available, key=lambda task: (-task.priority, task.created_at, task.id))


def claim(
    task: Task, agent: AgentId, now: Timestamp, config: BoardConfig = DEFAULT_CONFIG
) -> Outcome:
    """``agent`` takes ``task`` under a lease of ``config.lease_seconds``."""
    claimed = _move(
        task,
        TaskEvent.CLAIM,
        now,
        owner=agent,
        lease_expires_at=now + config.lease_seconds,
        blocker=None,
    )
    return Outcome(
        (claimed,),
        (_event("task.claimed", claimed, agent, now, lease_expires_at=claimed.lease_expires_at),),
    )


# -- working -----------------------------------------------------------------------------


def heartbeat(
    task: Task, agent: AgentId, now: Timestamp, config: BoardConfig = DEFAULT_CONFIG
) -> Outcome:
    """Renew ``agent``'s lease on ``task``."""
    _require_owner(task, agent, now)
    renewed = _move(task, TaskEvent.HEARTBEAT, now, lease_expires_at=now + config.lease_seconds)
    return Outcome((renewed,), ())


def progress(
    task: Task,
    agent: AgentId,
    percent: int,
    note: str,
    now: Timestamp,
    config: BoardConfig = DEFAULT_CONFIG,
) -> Outcome:
    """Record a milestone (0, 25, 50, 75 or 100 %); also renews the lease."""
    _require_owner(task, agent, now)
    if percent not in MILESTONES:
        raise InvalidTask(task.id, f"progress is reported at {MILESTONES} percent, not {percent}")
    if percent < task.progress:
        raise InvalidTask(
            task.id, f"progress cannot go back from {task.progress} to {percent} percent"
        )
    # The same percent again (agents report it to renew the lease) replaces its
    # milestone: the list stays at five at most, where appending let a task's stored
    # document, rewritten whole at each change, grow without end.
    kept = task.milestones
    if kept and kept[-1].percent == percent:
        kept = kept[:-1]
    moved = _move(
        task,
        TaskEvent.PROGRESS,
        now,
        milestones=(*kept, Milestone(percent, note, now)),
        lease_expires_at=now + config.lease_seconds,
    )
    return Outcome(
        (moved,), (_event("task.progress", moved, agent, now, percent=percent, note=note),)
    )


def block(
    task: Task,
    agent: AgentId,
    blocker: Blocker,
    now: Timestamp,
    fillers: Iterable[Task] = (),
    capabilities: Iterable[str] = (),
    accept: Callable[[Task, Timestamp], bool] | None = None,
) -> Outcome:
    """``agent`` is blocked on ``task``; offers it the best filler task it qualifies for
    (``accept``, the governor's choice as for :func:`pick_next` in ``claim_next``,
    replaces the exact capability test: an agent the governor gives main work by a
    wildcard such as ``code:*`` is offered such fillers too)."""
    _require_owner(task, agent, now)
    if not blocker.type.strip() or not blocker.description.strip():
        raise InvalidTask(task.id, "a blocker needs a type and a description")
    recorded = msgspec.structs.replace(blocker, since=now, escalated_at=None)
    blocked = _move(task, TaskEvent.BLOCK, now, blocker=recorded)
    events = [_event("task.blocked", blocked, agent, now, blocker=msgspec.to_builtins(recorded))]
    have = tuple(capabilities)

    def fits(candidate: Task) -> bool:
        if accept is not None:
            return accept(candidate, now)
        return qualifies(candidate, have)

    filler = pick_next(fillers, lambda candidate: candidate.filler and fits(candidate))
    if filler is not None:
        events.append(
            _event("filler.offered", filler, agent, now, offered_to=agent, blocked_task=task.id)
        )
    return Outcome((blocked,), tuple(events))


def unblock(
    task: Task, agent: AgentId, now: Timestamp, config: BoardConfig = DEFAULT_CONFIG
) -> Outcome:
    """The owner resumes ``task``: its blocker is cleared and its lease renewed."""
    _require_owner(task, agent, now)
    resumed = _move(
        task, TaskEvent.UNBLOCK, now, blocker=None, lease_expires_at=now + config.lease_seconds
    )
    return Outcome((resumed,), (_event("task.unblocked", resumed, agent, now),))


# -- finishing ---------------------------------------------------------------------------


def complete(
    task: Task,
    agent: AgentId,
    result: Mapping[str, Any],
    now: Timestamp,
    dependents: Iterable[Task] = (),
    state_of: Callable[[str], TaskState | None] = lambda _: None,
) -> Outcome:
    """``agent`` completes ``task``; waiting dependents whose dependencies are now all
    completed become available, highest priority first."""
    _require_owner(task, agent, now)
    done = _move(
        task,
        TaskEvent.COMPLETE,
        now,
        result=dict(result),
        owner=None,
        lease_expires_at=None,
        last_owner=agent,
    )
    outcome = Outcome((done,), (_event("task.completed", done, agent, now),))
    return outcome + _release(done, dependents, state_of, now)


def fail(
    task: Task,
    agent: AgentId,
    reason: str,
    now: Timestamp,
    *,
    retry: bool = True,
    dependents: Iterable[Task] = (),
    downstream: Callable[[str], Iterable[Task]] = lambda _: (),
) -> Outcome:
    """``agent`` failed ``task``. With ``retry`` (and attempts left) it becomes available
    again; otherwise it is ``failed`` (or ``dead`` once attempts run out), which the
    waiting tasks downstream then show: its ``dependents``, and through each waiting one
    its own, read with ``downstream`` (a task id to its dependents)."""
    _require_owner(task, agent, now)
    again = TaskEvent.FAIL_RETRY if retry else TaskEvent.FAIL_FINAL
    return _end_attempt(
        task,
        agent,
        now,
        again,
        reason=reason,
        kind="task.failed",
        dependents=dependents,
        downstream=downstream,
    )


def give_up(task: Task, agent: AgentId, now: Timestamp) -> Outcome:
    """``agent`` hands ``task`` back untouched; this does not count as an attempt. Its
    milestones go (the next owner starts at 0 %, as after a failed attempt): kept, they
    refused that owner's progress below them."""
    _require_owner(task, agent, now)
    returned = _move(
        task,
        TaskEvent.GIVE_UP,
        now,
        owner=None,
        lease_expires_at=None,
        blocker=None,
        last_owner=agent,
        milestones=(),
    )
    return Outcome((returned,), (_event("task.returned", returned, agent, now),))


def expire(
    task: Task,
    now: Timestamp,
    dependents: Iterable[Task] = (),
    *,
    owner_seen_at: Timestamp | None = None,
    config: BoardConfig = DEFAULT_CONFIG,
    downstream: Callable[[str], Iterable[Task]] = lambda _: (),
) -> Outcome:
    """Return ``task`` to the board if its lease ran out (nothing happens otherwise). The
    expired claim counts as an attempt, recorded with the old owner; the last one kills
    it, which the waiting tasks downstream then show (as :func:`fail` has it).

    A *blocked* task that has not been escalated yet stays its owner's while the owner
    was heard from (``owner_seen_at``) within a lease: its lease is renewed from then. A
    blocked agent waits (for help, for what it needs) and works a filler task meanwhile,
    whose heartbeats are its proof of life; without this, its task went back to the board
    after one lease (120 s), an attempt spent, and the escalation of a long blocker (30
    min) could never come. Once escalated, the task needs heartbeats of its own again:
    proof of life elsewhere holds a blocked task for ``escalate_blocked_after`` and a
    lease at most, so one message cannot keep an agent's blocked tasks forever."""
    if not task.state.owned or task.lease_expires_at is None or task.lease_expires_at >= now:
        return Outcome()
    assert task.owner is not None  # an owned task always has one
    if (
        task.state is TaskState.BLOCKED
        and task.blocker is not None
        and task.blocker.escalated_at is None
        and owner_seen_at is not None
    ):
        # (another server's clock may run ahead: never renew from the future)
        seen = min(owner_seen_at, now)
        if seen + config.lease_seconds >= now:
            renewed = _move(
                task, TaskEvent.HEARTBEAT, now, lease_expires_at=seen + config.lease_seconds
            )
            return Outcome((renewed,), ())
    return _end_attempt(
        task,
        task.owner,
        now,
        TaskEvent.EXPIRE,
        reason="lease expired",
        kind="task.expired",
        dependents=dependents,
        downstream=downstream,
    )


def cancel(
    task: Task,
    actor: AgentId | None,
    reason: str,
    now: Timestamp,
    dependents: Iterable[Task] = (),
    downstream: Callable[[str], Iterable[Task]] = lambda _: (),
) -> Outcome:
    """Cancel ``task`` (an operator's or its creator's decision, checked by the caller),
    which the waiting tasks downstream then show (as :func:`fail` has it)."""
    cancelled = _move(
        task, TaskEvent.CANCEL, now, owner=None, lease_expires_at=None, failure=reason
    )
    held = {} if task.owner is None else {"old_owner": task.owner}  # whose work stopped
    outcome = Outcome(
        (cancelled,), (_event("task.cancelled", cancelled, actor, now, reason=reason, **held),)
    )
    return outcome + _propagate_failure(cancelled, dependents, downstream, now)


def _end_attempt(
    task: Task,
    agent: AgentId,
    now: Timestamp,
    event: TaskEvent,
    *,
    reason: str,
    kind: str,
    dependents: Iterable[Task],
    downstream: Callable[[str], Iterable[Task]],
) -> Outcome:
    """End the current claim with ``event`` (a retry, or failure for good); a retry that
    would exceed ``max_attempts`` kills the task instead."""
    attempts = task.attempts + 1
    if event is not TaskEvent.FAIL_FINAL and attempts >= task.max_attempts:
        event = TaskEvent.EXHAUST
    retried = event is not TaskEvent.FAIL_FINAL and event is not TaskEvent.EXHAUST
    ended = _move(
        task,
        event,
        now,
        owner=None,
        lease_expires_at=None,
        blocker=None,
        attempts=attempts,
        failure=reason,
        last_owner=agent,
        milestones=() if retried else task.milestones,  # the next attempt starts at 0 %
    )
    events = [_event(kind, ended, agent, now, reason=reason, attempts=attempts, old_owner=agent)]
    if ended.state is TaskState.DEAD:
        events.append(_event("task.dead", ended, agent, now, attempts=attempts))
    outcome = Outcome((ended,), tuple(events))
    if ended.state.final:
        outcome = outcome + _propagate_failure(ended, dependents, downstream, now)
    return outcome


def _release(
    done: Task,
    dependents: Iterable[Task],
    state_of: Callable[[str], TaskState | None],
    now: Timestamp,
) -> Outcome:
    ready = []
    for waiting in dependents:
        if waiting.state is not TaskState.WAITING or done.id not in waiting.dependencies:
            continue
        others = [dep for dep in waiting.dependencies if dep != done.id]
        if all(state_of(dep) is TaskState.COMPLETED for dep in others):
            ready.append(waiting)
    ready.sort(key=lambda task: (-task.priority, task.created_at, task.id))
    released = [_move(task, TaskEvent.RELEASE, now) for task in ready]
    return Outcome(
        tuple(released),
        tuple(_event("task.released", task, None, now, after=done.id) for task in released),
    )


def _propagate_failure(
    ended: Task,
    dependents: Iterable[Task],
    downstream: Callable[[str], Iterable[Task]],
    now: Timestamp,
) -> Outcome:
    """``ended`` failed, died or was cancelled: every waiting task below it, its waiting
    ``dependents`` and theirs (read with ``downstream``), can never run and lists its id
    in ``failed_dependencies`` (the cause an operator has to deal with, not the waiting
    task in between, named ``via`` in the event). A task that is not waiting (cancelled
    before) stops the walk: it showed its own end to those below. The walk reads at most
    ``_MAX_DOWNSTREAM`` tasks (a task created below later still lists it, see
    :func:`create`)."""
    marked: list[Task] = []
    events: list[BoardEvent] = []
    seen = {ended.id}
    below: deque[str] = deque([ended.id])
    while below and len(seen) <= _MAX_DOWNSTREAM:
        via = below.popleft()
        for task in dependents if via == ended.id else downstream(via):
            if (
                task.id in seen
                or task.state is not TaskState.WAITING
                or via not in task.dependencies
                or len(seen) > _MAX_DOWNSTREAM
            ):
                continue
            seen.add(task.id)
            below.append(task.id)  # (even if it shows ended already: those below may not)
            if ended.id in task.failed_dependencies:
                continue
            task = msgspec.structs.replace(
                task,
                failed_dependencies=(*task.failed_dependencies, ended.id),
                updated_at=now,
                version=task.version + 1,
            )
            marked.append(task)
            through = {} if via == ended.id else {"via": via}
            events.append(
                _event(
                    "task.dependency_failed",
                    task,
                    None,
                    now,
                    dependency=ended.id,
                    dependency_state=str(ended.state),
                    **through,
                )
            )
    return Outcome(tuple(marked), tuple(events))


# -- watching ----------------------------------------------------------------------------


def escalate_blocked(
    tasks: Iterable[Task], now: Timestamp, config: BoardConfig = DEFAULT_CONFIG
) -> Outcome:
    """Escalate, once each, tasks blocked longer than ``config.escalate_blocked_after``."""
    escalated = []
    for task in tasks:
        blocker = task.blocker
        if (
            task.state is not TaskState.BLOCKED
            or blocker is None
            or blocker.escalated_at is not None
        ):
            continue
        if now - blocker.since > config.escalate_blocked_after:
            escalated.append(
                msgspec.structs.replace(
                    task,
                    blocker=msgspec.structs.replace(blocker, escalated_at=now),
                    updated_at=now,
                    version=task.version + 1,
                )
            )
    events = tuple(
        _event("task.escalated", task, task.owner, now, blocked_for=now - task.blocker.since)  # type: ignore[union-attr]
        for task in escalated
    )
    return Outcome(tuple(escalated), events)


def health(
    last_seen: Timestamp | None, now: Timestamp, config: BoardConfig = DEFAULT_CONFIG
) -> Health:
    """Green within 30 s of the last heartbeat, yellow within 5 min, red beyond (defaults)."""
    if last_seen is None:
        return Health.RED
    quiet = now - last_seen
    if quiet < config.healthy_within:
        return Health.GREEN
    if quiet < config.alive_within:
        return Health.YELLOW
    return Health.RED


def select_helpers(
    agents: Mapping[AgentId, Iterable[str]],
    needed: Iterable[str],
    *,
    exclude: Iterable[AgentId] = (),
    max_helpers: int = 3,
) -> list[AgentId]:
    """Up to ``max_helpers`` agents having every ``needed`` capability, by name (the
    governor will rank them by cost and reputation)."""
    need, skip = set(needed), set(exclude)
    qualified = [agent for agent, caps in agents.items() if agent not in skip and need <= set(caps)]
    return sorted(qualified)[:max_helpers]


# -- internals ---------------------------------------------------------------------------


def _require_owner(task: Task, agent: AgentId, now: Timestamp) -> None:
    if not task.state.owned or task.owner != agent:
        raise NotOwner(task.id, agent, task.owner)
    if (
        task.lease_expires_at is not None
        and task.lease_expires_at < now
        # A blocked task's lease is renewed by the sweeper while its owner is heard from
        # (see expire), only once it ran out: until the sweeper returns the task, the
        # owner acting on it is that proof of life. (LEASE_LOST sent the owner to claim a
        # task it still held, which the sweeper then kept for it.)
        and task.state is not TaskState.BLOCKED
    ):
        raise LeaseLost(task.id, agent, task.lease_expires_at)


def _move(task: Task, event: TaskEvent, now: Timestamp, **changes: Any) -> Task:
    state = next_state(task.id, task.state, event)
    return msgspec.structs.replace(
        task, state=state, updated_at=now, version=task.version + 1, **changes
    )


def _event(
    kind: str, task: Task, actor: AgentId | None, now: Timestamp, **payload: Any
) -> BoardEvent:
    return BoardEvent(
        kind=kind, task_id=task.id, actor=actor, at=now, state=task.state, payload=payload
    )

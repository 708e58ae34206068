"""The governor inside a fabric: fed with board events, its decisions logged and kept.

A thin, thread-safe shell around :class:`~infrafabric.governor.core.Governor`:

* it hears the coordinator inside each change's transaction
  (:meth:`~infrafabric.coordinator.Coordinator.listen_inside`), so every claim,
  completion, failure, expiry and reported usage reaches the governor in the order the
  board decided them;
* each decision the governor takes (a charge, a budget warning, a breaker change, a
  refusal) is logged in the board's event log as a ``governor`` event, and the books it
  changed are saved with :meth:`~infrafabric.storage.base.Store.save_state`: both in
  the same transaction as the board change that caused them, so the witness sees them
  and a restart finds them;
* lock order: the store's write lock, then the driver's; every method that writes
  takes them in that order, and the coordinator calls in with the store's held (so
  live subscribers hear a change's own events first, then the governor's);
* ``claim_next`` asks it which task an agent should take (:meth:`accepting`), a claim
  by id asks whether the agent may (:meth:`admit`), a help request whom to invite.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from infrafabric.board.model import BoardEvent, Task, TaskState
from infrafabric.coordinator import MAX_RETRIES, Busy, Coordinator
from infrafabric.governor.core import Governor, GovernorEvent, Manifest, Refusal, TaskView
from infrafabric.governor.policy import DEFAULT_POLICY, Policy, load_policy
from infrafabric.storage.base import Conflict
from infrafabric.types import AgentId, Timestamp

__all__ = ["GovernorDriver"]

T = TypeVar("T")

#: Where the governor's books live among the store's state documents.
PREFIX: Final = "governor/"


class GovernorDriver:
    def __init__(
        self,
        coordinator: Coordinator,
        policy: Policy = DEFAULT_POLICY,
        *,
        policy_path: Path | None = None,
        profile: str | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.store = coordinator.store
        self.clock = coordinator.clock
        self.policy_path = policy_path
        self.profile = profile
        self._lock = threading.RLock()  # recording an event calls back into _on_events
        self.governor = Governor(policy)
        now = self.clock()
        with self.store.batch(), self._lock:
            self._known: int | None = self.store.state_version()
            kept = self.store.load_state(PREFIX)
            self.governor.restore({key[len(PREFIX) :]: doc for key, doc in kept.items()}, now)
            for task in self.store.tasks([s for s in TaskState if s.owned]):
                if task.owner is not None:  # held since about its last change
                    self.governor.hold(task.owner, task.id, task.updated_at)
            # agents enrolled before the governor knew them join with what they enrolled
            events: list[GovernorEvent] = []
            for record in self.store.agents():
                if record.id not in self.governor.agents:
                    manifest = Manifest(capabilities=record.capabilities)
                    events += self.governor.register(record.id, manifest, now, validate=False)
            self._commit(events)

    def attach(self) -> None:
        """Start hearing the board's events (the service calls it after its own
        listener, so live subscribers hear of a change before the governor's verdict)."""
        self.coordinator.listen_inside(self._on_events)

    @classmethod
    def from_file(
        cls, coordinator: Coordinator, path: Path, profile: str | None = None
    ) -> GovernorDriver:
        return cls(
            coordinator, load_policy(path, profile=profile), policy_path=path, profile=profile
        )

    @property
    def policy(self) -> Policy:
        return self.governor.policy

    # -- agents ---------------------------------------------------------------------------

    def check(self, agent: AgentId, manifest: Manifest) -> None:
        """Raise :class:`~infrafabric.governor.core.ManifestError` if the policy refuses
        ``manifest`` (before anything about the agent is written)."""
        with self._lock:
            self.governor.validate(agent, manifest)

    def register(self, agent: AgentId, manifest: Manifest) -> None:
        self._changing(lambda: self._commit(self.governor.register(agent, manifest, self.clock())))

    # -- work -----------------------------------------------------------------------------

    def seen(self, agent: AgentId) -> None:
        """``agent`` sent something: it is alive (an idle agent the governor may prefer)."""
        with self._lock:
            self.governor.seen(agent, self.clock())

    def accepting(self, agent: AgentId) -> Callable[[Task, Timestamp], bool]:
        """For ``claim_next``: whether ``agent`` should take a task (see
        :meth:`Governor.choose`)."""

        with self._lock:
            self._refresh()  # an agent enrolled through another server, say

        def accept(task: Task, now: Timestamp) -> bool:
            with self._lock:
                return self.governor.choose(agent, [_view(task)], now) is not None

        return accept

    def admit(self, agent: AgentId, task: Task) -> Refusal | None:
        """Whether ``agent`` may claim ``task`` by id; a refusal is logged."""

        def decide() -> Refusal | None:
            now = self.clock()
            self.governor.seen(agent, now)
            refusal = self.governor.admit(agent, _view(task), now)
            if refusal is not None:
                refused = GovernorEvent(
                    kind="assignment.refused",
                    agent=agent,
                    task_id=task.id,
                    payload={"code": refusal.code, "reason": refusal.reason},
                )
                self._commit([refused])
            return refusal

        return self._changing(decide)

    def helpers(self, task: Task, asker: AgentId, needed: Sequence[str]) -> list[AgentId]:
        """Whom to invite to help on ``task``: admitted agents best ranked for ``needed``
        (the task's own needs if empty), at most ``max_helpers_per_task``."""
        view = TaskView(task.id, tuple(needed) or task.required_capabilities, task.priority)
        with self._lock:
            self._refresh()
            return self.governor.helpers(view, exclude=[asker], now=self.clock())

    def priced(self, agent: AgentId, usage: dict[str, Any]) -> dict[str, Any]:
        """``usage`` with ``usd`` as the governor prices it (so the witness records the
        price the budgets are charged, not the agent's own figure)."""
        with self._lock:
            self._refresh()
            usd, _, model = self.governor.price(agent, usage)
        return {**usage, "usd": usd, "model": model}

    # -- operators ------------------------------------------------------------------------

    def reset(self, agent: AgentId, operator: AgentId) -> None:
        self._changing(lambda: self._commit(self.governor.reset(agent, operator, self.clock())))

    def reload(self, policy: Policy | None = None) -> Policy:
        """Swap in ``policy``, or read the policy file again. A policy that does not
        load raises :class:`~infrafabric.governor.policy.PolicyError` and changes
        nothing; work in flight is not touched either way."""
        if policy is None:
            if self.policy_path is None:
                policy = self.governor.policy  # the built-in policy: nothing to re-read
            else:
                policy = load_policy(self.policy_path, profile=self.profile)
        chosen = policy
        self._changing(lambda: self._commit(self.governor.reload(chosen)))
        return policy

    def report(self) -> dict[str, Any]:
        with self._lock:
            self._refresh()
            return self.governor.report(self.clock())

    # -- internals ------------------------------------------------------------------------

    def _on_events(self, events: Sequence[BoardEvent]) -> list[BoardEvent]:
        """Inside the board change's transaction (the store's lock held): learn from it,
        save the books it changed, and return the decisions for the coordinator to log
        with it."""
        with self._lock:
            self._refresh()
            decided: list[GovernorEvent] = []
            for event in events:
                if event.component == "board":
                    final = event.state is not None and event.state.final
                    decided += self.governor.observe(
                        event.kind, event.task_id, event.actor, event.at, event.payload, final=final
                    )
            if self.governor.has_changes:  # (a claim changes nothing that is kept)
                self._save()
            return self._logged(decided) if decided else []

    def _commit(self, events: Iterable[GovernorEvent]) -> None:
        """Save the changed books and log the decisions (the caller holds a batch)."""
        self._save()
        logged = self._logged(events)
        if logged:
            self.coordinator.record(logged)

    def _changing(self, change: Callable[[], T]) -> T:
        """Change the books outside a board change (an enrollment, a reset, a reload, a
        refusal) from fresh books, and again from fresher ones if another server saved
        them meanwhile (on a shared store the save is refused then: nothing is lost)."""
        for _ in range(MAX_RETRIES):
            with self.store.batch(), self._lock:  # the store's lock first, always
                self._refresh()
                try:
                    return change()
                except Conflict:
                    self._known = None  # read them again
        raise Busy(f"the governor's books changed {MAX_RETRIES} times meanwhile; try again")

    def _save(self) -> None:
        changes = self.governor.take_changes()
        if changes:
            self.store.save_state(
                {PREFIX + key: doc for key, doc in changes.items()}, expected=self._known
            )
            if self.store.shared:
                # Whether these commit is not known here (on a shared store the change
                # may yet conflict): the books are read again before the next decision.
                self._known = None

    def _refresh(self) -> None:
        """On a store other servers write too, read the books again if any server saved
        them since this one last read them (the caller holds the lock). What is only
        this server's to know (who it saw, what it holds) carries over."""
        if not self.store.shared:
            return
        version = self.store.state_version()  # inside a change: checked at its commit
        if version == self._known:
            return
        fresh = Governor(self.governor.policy)
        kept = self.store.load_state(PREFIX)
        fresh.restore({key[len(PREFIX) :]: doc for key, doc in kept.items()}, self.clock())
        for name, book in fresh.agents.items():
            old = self.governor.agents.get(name)
            if old is not None:
                book.holding, book.last_seen = old.holding, old.last_seen
        self.governor, self._known = fresh, version

    def _logged(self, events: Iterable[GovernorEvent]) -> list[BoardEvent]:
        now = self.clock()
        return [
            BoardEvent(
                component="governor",
                kind=event.kind,
                task_id=event.task_id,
                actor=None,  # the governor decided; the agent it concerns is in the payload
                at=now,
                payload={"agent": event.agent, **event.payload} if event.agent else event.payload,
            )
            for event in events
        ]


def _view(task: Task) -> TaskView:
    return TaskView(task.id, task.required_capabilities, task.priority, task.updated_at)

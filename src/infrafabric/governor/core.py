"""The governor as a state machine: who may work, on what, and at what cost.

No I/O and no clock: time is passed in, board events are fed in (``observe``), and
every decision comes back as :class:`GovernorEvent` values for the caller to log and
witness. The service drives it (``infrafabric.governor.service``).

* **Admission** (``admit``): an agent may take a task only when it qualifies
  (coverage >= ``min_capability_match``), its reputation is at least
  ``min_reputation``, its breaker lets it (closed, or half-open with no trial running),
  and, with budget enforcement on, neither its budget nor its swarm's is spent (an
  ``overdraft_factor`` lets spending run over by that fraction) and the task has not
  cost ``max_cost_per_task`` or its task budget already.
* **Assignment** (``choose``): of the tasks an agent may take, highest priority first,
  it gets the first one for which no admitted agent that is alive (seen within
  ``patience_seconds``, idle or busy) ranks strictly better: the task waits for the
  better agent. A task that has waited ``patience_seconds`` goes to any admitted agent:
  a busy or vanished favourite never holds work back for longer than that.
* **Spending** (``charge``): usage an agent reports is priced by the policy's price
  table (the model's price, else the agent's manifest price; an agent's own ``usd``
  figure is used only when neither exists) and debited from the agent, its swarm and
  the task. A warning goes out once at ``budget_warning_fraction`` left, and the
  breaker opens when a budget is spent.
* **Breakers**: ``failure_threshold`` failures in a row (or a spent budget) open an
  agent's breaker; after ``cooloff_seconds`` (if the policy sets it) it goes half-open
  and lets one trial claim through: success closes it, failure opens it again. With
  no cool-off only an operator's signed reset closes it.
* **Reputation** (:func:`reputation`): updated on every completion or failure.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec
from msgspec import Struct

from infrafabric.errors import CallerError
from infrafabric.governor.matching import (
    Candidate,
    coverage,
    rank,
    unit_cost,
    wildcard_prefixes,
)
from infrafabric.governor.policy import DEFAULT_POLICY, Budget, Policy, Price

__all__ = [
    "AgentBook",
    "Governor",
    "GovernorEvent",
    "Manifest",
    "ManifestError",
    "Refusal",
    "TaskView",
    "reputation",
]

#: Outcomes (and durations) remembered per agent for its reputation.
WINDOW: Final = 100
#: The reputation prior: an agent starts as if it had this many successes on record.
PRIOR: Final = 5
#: Rankings kept (one per distinct set of needs) before the cache starts over.
RANKED_CACHE: Final = 1024

Breaker = Literal["closed", "open", "half_open"]


class ManifestError(CallerError):
    """A capability manifest the policy does not accept."""


class Manifest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What an agent declares when it joins: capabilities (``category:skill``), its model,
    its price (default: the policy's price for the model) and its swarm (default: the
    one the policy lists it in)."""

    capabilities: tuple[str, ...] = ()
    model: str = ""
    price: Price | None = None
    swarm: str | None = None


class GovernorEvent(Struct, frozen=True, kw_only=True):
    """A decision for the witness: ``kind`` such as ``budget.warning``."""

    kind: str
    agent: str | None = None
    task_id: str = ""
    payload: dict[str, Any] = {}


class Refusal(Struct, frozen=True):
    code: str  # NOT_QUALIFIED, LOW_REPUTATION, BREAKER_OPEN, BUDGET_EXHAUSTED, TASK_OVER_BUDGET
    reason: str


@dataclass(frozen=True, slots=True)
class TaskView:
    """What the governor needs of a task: its needs, priority and how long it has waited."""

    id: str
    need: tuple[str, ...]
    priority: int = 50
    available_since: float = 0.0


@dataclass
class Spend:
    usd: float = 0.0
    tokens: int = 0
    warned: bool = False
    exhausted: bool = False


@dataclass
class AgentBook:
    """Everything the governor knows about one agent."""

    agent: str
    manifest: Manifest
    have: frozenset[str]
    price: Price
    unit_cost: float
    swarm: str | None
    reputation: float = 1.0
    wildcards: tuple[str, ...] = ()  # prefixes of its category:* capabilities
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    consecutive_failures: int = 0
    breaker: Breaker = "closed"
    opened_at: float = 0.0
    trial: str | None = None  # the task of a half-open breaker's trial claim
    spend: Spend = field(default_factory=Spend)
    holding: dict[str, float] = field(default_factory=dict)  # task id -> claimed at
    last_seen: float = -math.inf


def reputation(outcomes: Sequence[bool], durations: Sequence[float], policy: Policy) -> float:
    """``min(1, success / slo.success_rate) x latency`` where ``success`` is the share of
    recent outcomes that succeeded, counted with ``PRIOR`` successes on record (so one
    early failure does not sink a newcomer), and ``latency`` is 1 while the p99 of recent
    task durations is within ``slo.p99_seconds``, else ``slo.p99_seconds / p99``."""
    slo = policy.profile.slo
    success = (sum(outcomes) + PRIOR) / (len(outcomes) + PRIOR)
    score = min(1.0, success / slo.success_rate) if slo.success_rate > 0 else 1.0
    if durations:
        ordered = sorted(durations)
        p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
        if p99 > slo.p99_seconds:
            score *= slo.p99_seconds / p99
    return round(score, 6)


class Governor:
    """The governor's state under one policy. Not thread-safe: the caller serialises."""

    def __init__(self, policy: Policy = DEFAULT_POLICY) -> None:
        self.policy = policy
        self.agents: dict[str, AgentBook] = {}
        self.swarms: dict[str, Spend] = {}
        self.tasks: dict[str, Spend] = {}
        self._ranked: dict[tuple[str, ...], list[Candidate]] = {}  # by need, while valid
        self._dirty: set[str] = set()  # documents to write (see take_changes)

    # -- agents ---------------------------------------------------------------------------

    def validate(self, agent: str, manifest: Manifest) -> None:
        """Raise :class:`ManifestError` if the policy does not accept ``manifest``."""
        for capability in manifest.capabilities:
            problem = self.policy.capability_problem(capability)
            if problem is not None:
                raise ManifestError(problem)
        swarm = manifest.swarm or self.policy.swarm_of(agent)
        if swarm is not None and swarm not in self.policy.swarms:
            raise ManifestError(f"no swarm {swarm!r} in the policy ({sorted(self.policy.swarms)})")

    def register(
        self, agent: str, manifest: Manifest, now: float, *, validate: bool = True
    ) -> list[GovernorEvent]:
        """Add or update an agent's manifest, validated against the policy unless
        ``validate`` is false (books kept from before a policy change, or agents
        enrolled before the governor: a stricter policy must not stop a restart)."""
        if validate:
            self.validate(agent, manifest)
        swarm = manifest.swarm or self.policy.swarm_of(agent)
        if swarm is not None and swarm not in self.policy.swarms:
            swarm = None  # a swarm the policy no longer has
        price = manifest.price or self.policy.prices.get(manifest.model) or Price()
        book = self.agents.get(agent)
        if book is None:
            book = self.agents[agent] = AgentBook(agent, manifest, frozenset(), price, 0.0, swarm)
        book.manifest, book.price, book.swarm = manifest, price, swarm
        book.have = frozenset(manifest.capabilities)
        book.wildcards = wildcard_prefixes(book.have)
        book.unit_cost = unit_cost(price, self.policy.reference_task)
        self._ranked.clear()
        self._dirty.add(f"agent/{agent}")
        return [
            GovernorEvent(
                kind="agent.registered",
                agent=agent,
                payload={
                    "capabilities": list(manifest.capabilities),
                    "model": manifest.model,
                    "unit_cost_usd": book.unit_cost,
                    "swarm": swarm,
                },
            )
        ]

    def seen(self, agent: str, now: float) -> None:
        book = self.agents.get(agent)
        if book is not None:
            book.last_seen = now

    # -- admission and assignment ---------------------------------------------------------

    def admit(self, agent: str, task: TaskView, now: float) -> Refusal | None:
        """Why ``agent`` may not take ``task`` now, or ``None`` if it may."""
        book = self.agents.get(agent)
        if book is None:
            return Refusal("NOT_QUALIFIED", f"{agent} has no capability manifest")
        profile = self.policy.profile
        covered = coverage(book.have, task.need, book.wildcards)
        if covered < profile.min_capability_match:
            return Refusal(
                "NOT_QUALIFIED",
                f"{agent} covers {covered:.0%} of {task.id}'s needs"
                f" (the policy asks {profile.min_capability_match:.0%})",
            )
        if book.reputation < profile.min_reputation:
            return Refusal(
                "LOW_REPUTATION",
                f"{agent}'s reputation {book.reputation:.2f} is below {profile.min_reputation}",
            )
        if profile.enable_budget_enforcement:  # first: a spent budget is why a breaker opens
            refusal = self._budget_refusal(book, task.id)
            if refusal is not None:
                return refusal
        self._cool(book, now)
        if book.breaker == "open":
            return Refusal("BREAKER_OPEN", f"{agent}'s circuit breaker is open")
        if book.breaker == "half_open" and book.trial is not None:
            return Refusal("BREAKER_OPEN", f"{agent} is on trial with {book.trial}")
        return None

    def choose(self, agent: str, tasks: Iterable[TaskView], now: float) -> TaskView | None:
        """The task ``agent`` should claim next (see the module's rules), or ``None``."""
        self.seen(agent, now)
        patience = self.policy.profile.patience_seconds
        for task in sorted(tasks, key=lambda t: (-t.priority, t.available_since, t.id)):
            if self.admit(agent, task, now) is not None:
                continue
            if now - task.available_since >= patience:
                return task
            if self._better_alive(task, now, asking=agent) is None:
                return task
        return None

    def ranked(self, need: Sequence[str], now: float) -> list[Candidate]:
        """Every agent that qualifies for ``need``, best first (cached until a manifest,
        reputation or policy changes)."""
        key = tuple(sorted(set(need)))
        cached = self._ranked.get(key)
        if cached is None:
            minimum = self.policy.profile.min_capability_match
            wanted = frozenset(key)
            candidates = []
            for book in self.agents.values():
                covered = coverage(book.have, wanted, book.wildcards)
                if covered >= minimum:
                    candidates.append(
                        Candidate(book.agent, covered, book.reputation, book.unit_cost)
                    )
            if len(self._ranked) >= RANKED_CACHE:  # many distinct needs: start over
                self._ranked.clear()
            cached = self._ranked[key] = rank(candidates)
        return cached

    def helpers(
        self, task: TaskView, exclude: Iterable[str], now: float, limit: int | None = None
    ) -> list[str]:
        """Up to ``max_helpers_per_task`` (or ``limit``, if lower) admitted agents for a
        help request on ``task``, best ranked first."""
        cap = self.policy.profile.max_helpers_per_task
        cap = cap if limit is None else min(cap, limit)
        skip = set(exclude)
        chosen: list[str] = []
        for candidate in self.ranked(task.need, now):
            if len(chosen) >= cap:
                break
            if candidate.agent not in skip and self.admit(candidate.agent, task, now) is None:
                chosen.append(candidate.agent)
        return chosen

    # -- what happened --------------------------------------------------------------------

    def observe(
        self,
        kind: str,
        task_id: str,
        actor: str | None,
        at: float,
        payload: Mapping[str, Any],
        *,
        final: bool = False,
    ) -> list[GovernorEvent]:
        """Learn from one board event: claims, outcomes, and the usage reported with them.
        ``final``: the task ended for good (its spend record is dropped)."""
        events = self._observe(kind, task_id, actor, at, payload)
        ended = final or kind in ("task.completed", "task.cancelled", "task.dead")
        if ended and self.tasks.pop(task_id, None) is not None:  # its budget is moot now
            self._dirty.add(f"task/{task_id}")
        return events

    def _observe(
        self, kind: str, task_id: str, actor: str | None, at: float, payload: Mapping[str, Any]
    ) -> list[GovernorEvent]:
        events: list[GovernorEvent] = []
        # whose work it was: the old owner of a failed, expired or cancelled task (a
        # cancel's actor is its creator), else whoever acted
        owner = payload.get("old_owner") or actor
        book = self.agents.get(owner) if isinstance(owner, str) else None
        if book is None:
            return events
        if actor == book.agent and kind != "task.escalated":  # it acted: it is alive (an
            book.last_seen = max(book.last_seen, at)  # expiry or escalation says otherwise)
        usage = payload.get("usage")
        if isinstance(usage, Mapping):
            events += self.charge(book.agent, task_id, usage, at)
        # What a claim changes (the tasks held) is not written: the board knows it, and
        # a claim stays one write. Only a breaker's trial is.
        if kind == "task.claimed":
            self.hold(book.agent, task_id, at)
        elif kind == "task.completed":
            events += self._outcome(book, task_id, True, at)
        elif kind in ("task.failed", "task.expired"):
            events += self._outcome(book, task_id, False, at)
        elif kind in ("task.returned", "task.cancelled"):
            book.holding.pop(task_id, None)
            if book.trial == task_id:
                book.trial = None
                self._dirty.add(f"agent/{book.agent}")
        return events

    def hold(self, agent: str, task_id: str, claimed_at: float) -> None:
        """``agent`` holds ``task_id`` since ``claimed_at`` (a claim; or, at start, what
        the board says it holds)."""
        book = self.agents.get(agent)
        if book is None:
            return
        book.holding[task_id] = claimed_at
        if book.breaker == "half_open" and book.trial is None:
            book.trial = task_id
            self._dirty.add(f"agent/{agent}")

    def price(self, agent: str, usage: Mapping[str, Any]) -> tuple[float, str, str]:
        """What ``usage`` costs in USD, who priced it (``policy``: the price table's
        entry for the model; ``manifest``: the agent's declared price; ``agent``: its own
        figure, when neither exists) and the model."""
        book = self.agents.get(agent)
        declared = "" if book is None else book.manifest.model
        model = str(usage.get("model") or declared)
        price = self.policy.prices.get(model)
        if price is None and book is not None:  # a model the table does not know:
            if book.manifest.price is not None:  # the agent's own price,
                price = book.manifest.price
            elif declared in self.policy.prices:  # or that of the model it enrolled with
                price, model = self.policy.prices[declared], declared
        if price is None:
            return float(usage.get("usd", 0.0)), "agent", model
        seconds = float(usage.get("seconds", 0.0))
        cost = price.cost(int(usage.get("tokens_in", 0)), int(usage.get("tokens_out", 0)), seconds)
        priced_by = "manifest" if book is not None and price is book.manifest.price else "policy"
        return cost, priced_by, model

    def charge(
        self, agent: str, task_id: str, usage: Mapping[str, Any], now: float
    ) -> list[GovernorEvent]:
        """Price reported usage and debit it from the agent, its swarm and the task."""
        book = self.agents.get(agent)
        if book is None:
            return []
        usd, priced_by, model = self.price(agent, usage)
        tokens = int(usage.get("tokens_in", 0)) + int(usage.get("tokens_out", 0))
        events = [
            GovernorEvent(
                kind="usage.charged",
                agent=agent,
                task_id=task_id,
                payload={
                    "usd": usd,
                    "tokens": tokens,
                    "model": model,
                    "priced_by": priced_by,
                },
            )
        ]
        accounts: list[tuple[str, Spend, Budget]] = [
            (f"agent {agent}", book.spend, self.policy.agent_budget(agent))
        ]
        if book.swarm is not None:
            accounts.append(
                (
                    f"swarm {book.swarm}",
                    self.swarms.setdefault(book.swarm, Spend()),
                    self.policy.swarms[book.swarm].budget,
                )
            )
        accounts.append(
            (f"task {task_id}", self.tasks.setdefault(task_id, Spend()), self._task_budget())
        )
        self._dirty.update((f"agent/{agent}", f"task/{task_id}"))
        if book.swarm is not None:
            self._dirty.add(f"swarm/{book.swarm}")
        for name, spend, budget in accounts:
            spend.usd += usd
            spend.tokens += tokens
            events += self._check_budget(name, spend, budget, task_id, book, now)
        return events

    def reset(self, agent: str, operator: str, now: float) -> list[GovernorEvent]:
        """An operator closes ``agent``'s breaker. An agent whose reputation fell below
        ``min_reputation`` (which gets no work, so could never earn it back) starts a
        fresh record. A spent budget stays spent: raise it in the policy."""
        book = self.agents.get(agent)
        if book is None:
            raise CallerError(f"the governor knows no agent {agent}")
        payload: dict[str, Any] = {"by": operator, "was": book.breaker}
        book.breaker, book.trial, book.consecutive_failures = "closed", None, 0
        book.spend.exhausted = False
        if book.reputation < self.policy.profile.min_reputation:
            payload["reputation_was"] = book.reputation
            book.outcomes.clear()
            book.durations.clear()
            book.reputation = 1.0
            self._ranked.clear()
        self._dirty.add(f"agent/{agent}")
        return [GovernorEvent(kind="breaker.reset", agent=agent, payload=payload)]

    def reload(self, policy: Policy) -> list[GovernorEvent]:
        """Swap the policy; agents keep their books (prices re-read from the new one)."""
        self.policy = policy
        for book in self.agents.values():
            manifest = book.manifest
            book.price = manifest.price or policy.prices.get(manifest.model) or Price()
            book.unit_cost = unit_cost(book.price, policy.reference_task)
            book.swarm = manifest.swarm or policy.swarm_of(book.agent)
            if book.swarm is not None and book.swarm not in policy.swarms:
                book.swarm = None
            self._dirty.add(f"agent/{book.agent}")
        self._ranked.clear()
        return [
            GovernorEvent(
                kind="policy.loaded",
                payload={"source": policy.source, "profile": policy.profile_name},
            )
        ]

    # -- reports --------------------------------------------------------------------------

    def report(self, now: float) -> dict[str, Any]:
        agents = []
        for book in sorted(self.agents.values(), key=lambda b: b.agent):
            self._cool(book, now)
            budget = self.policy.agent_budget(book.agent)
            agents.append(
                {
                    "agent": book.agent,
                    "model": book.manifest.model,
                    "swarm": book.swarm,
                    "capabilities": sorted(book.have),
                    "unit_cost_usd": book.unit_cost,
                    "reputation": book.reputation,
                    "band": self._band(book.reputation),
                    "breaker": book.breaker,
                    "consecutive_failures": book.consecutive_failures,
                    "spent_usd": book.spend.usd,
                    "spent_tokens": book.spend.tokens,
                    "budget_usd": budget.usd,
                    "budget_tokens": budget.tokens,
                    "tasks_done": sum(book.outcomes),
                    "tasks_failed": len(book.outcomes) - sum(book.outcomes),
                    "holding": sorted(book.holding),
                }
            )
        swarms = [
            {
                "swarm": name,
                "members": list(spec.members),
                "spent_usd": self.swarms.get(name, Spend()).usd,
                "spent_tokens": self.swarms.get(name, Spend()).tokens,
                "budget_usd": spec.budget.usd,
                "budget_tokens": spec.budget.tokens,
            }
            for name, spec in sorted(self.policy.swarms.items())
        ]
        return {
            "policy": {"source": self.policy.source, "profile": self.policy.profile_name},
            "agents": agents,
            "swarms": swarms,
        }

    # -- internals ------------------------------------------------------------------------

    def _score(self, agent: str, task: TaskView) -> float:
        book = self.agents[agent]
        return Candidate(
            agent, coverage(book.have, task.need), book.reputation, book.unit_cost
        ).score

    def _better_alive(self, task: TaskView, now: float, *, asking: str) -> Candidate | None:
        """An admitted agent, alive (seen within ``patience_seconds``, idle or busy),
        that ranks strictly better than ``asking`` for ``task`` *and* charges less, with a
        known price and some capabilities, if any. Work waits only to save money: among
        equals, or for a better reputation at the same price, whoever asks first gets
        it, and an agent with no price (an operator, an unpriced script) is never waited
        for. The ranking is best first, so the search stops at the first agent no better
        than the asker (with equal agents, at once)."""
        patience = self.policy.profile.patience_seconds
        mine = self._score(asking, task)
        my_cost = self.agents[asking].unit_cost
        for candidate in self.ranked(task.need, now):
            if candidate.score <= mine:
                return None
            other = self.agents[candidate.agent]
            if not other.have or not self._priced(other) or candidate.unit_cost >= my_cost:
                continue
            alive = now - other.last_seen <= patience
            if alive and self.admit(candidate.agent, task, now) is None:
                return candidate
        return None

    def _priced(self, book: AgentBook) -> bool:
        return book.manifest.price is not None or book.manifest.model in self.policy.prices

    def _outcome(
        self, book: AgentBook, task_id: str, success: bool, at: float
    ) -> list[GovernorEvent]:
        claimed_at = book.holding.pop(task_id, None)
        self._dirty.add(f"agent/{book.agent}")
        book.outcomes.append(success)
        if claimed_at is not None:
            book.durations.append(max(0.0, at - claimed_at))
        before = book.reputation
        book.reputation = reputation(book.outcomes, book.durations, self.policy)
        if book.reputation != before:
            self._ranked.clear()
        events = []
        if book.reputation != before:  # one event per change, not per outcome
            events.append(
                GovernorEvent(
                    kind="reputation.updated",
                    agent=book.agent,
                    task_id=task_id,
                    payload={"reputation": book.reputation, "was": before, "success": success},
                )
            )
        trial = book.trial == task_id
        if trial:
            book.trial = None
        if success:
            book.consecutive_failures = 0
            if book.breaker == "half_open" and trial:
                book.breaker = "closed"
                events.append(
                    GovernorEvent(kind="breaker.closed", agent=book.agent, task_id=task_id)
                )
            return events
        book.consecutive_failures += 1
        threshold = self.policy.profile.failure_threshold
        if book.breaker == "half_open" and trial:
            events.append(self._open(book, at, "the trial task failed", task_id))
        elif book.breaker == "closed" and book.consecutive_failures >= threshold:
            events.append(
                self._open(book, at, f"{book.consecutive_failures} failures in a row", task_id)
            )
        return events

    def _open(self, book: AgentBook, at: float, why: str, task_id: str = "") -> GovernorEvent:
        book.breaker, book.opened_at, book.trial = "open", at, None
        self._ranked.clear()
        return GovernorEvent(
            kind="breaker.opened", agent=book.agent, task_id=task_id, payload={"reason": why}
        )

    def _cool(self, book: AgentBook, now: float) -> None:
        """An open breaker whose cool-off has passed goes half-open (the policy allowing),
        unless a spent budget keeps it open."""
        cooloff = self.policy.profile.cooloff_seconds
        if (
            book.breaker == "open"
            and cooloff is not None
            and now - book.opened_at >= cooloff
            and self._budget_refusal(book, "") is None  # money, not time, is what is missing
        ):
            book.breaker = "half_open"

    def _task_budget(self) -> Budget:
        default = self.policy.budgets.default_task
        cap = self.policy.profile.max_cost_per_task
        if cap is not None and (default.usd is None or cap < default.usd):
            return Budget(usd=cap, tokens=default.tokens)
        return default

    def _limit(self, budget: Budget) -> tuple[float | None, float | None]:
        factor = 1.0 + self.policy.profile.overdraft_factor
        usd = None if budget.usd is None else budget.usd * factor
        tokens = None if budget.tokens is None else budget.tokens * factor
        return usd, tokens

    def _budget_refusal(self, book: AgentBook, task_id: str) -> Refusal | None:
        # (on every claim: the accounts without a bound are skipped before any work)
        budget = self.policy.agent_budget(book.agent)
        if budget.usd is not None or budget.tokens is not None:
            refusal = self._spent("BUDGET_EXHAUSTED", book.spend, budget, f"{book.agent}'s budget")
            if refusal is not None:
                return refusal
        if book.swarm is not None:
            budget = self.policy.swarms[book.swarm].budget
            if budget.usd is not None or budget.tokens is not None:
                spend = self.swarms.get(book.swarm)
                if spend is not None:
                    refusal = self._spent(
                        "BUDGET_EXHAUSTED", spend, budget, f"swarm {book.swarm}'s budget"
                    )
                    if refusal is not None:
                        return refusal
        spend = self.tasks.get(task_id)
        if spend is not None:
            return self._spent(
                "TASK_OVER_BUDGET", spend, self._task_budget(), f"task {task_id}'s budget"
            )
        return None

    def _spent(self, code: str, spend: Spend, budget: Budget, name: str) -> Refusal | None:
        usd, tokens = self._limit(budget)
        if (usd is not None and spend.usd >= usd) or (
            tokens is not None and spend.tokens >= tokens
        ):
            return Refusal(code, f"{name} is spent (${spend.usd:.4f}, {spend.tokens} tokens)")
        return None

    def _check_budget(
        self, name: str, spend: Spend, budget: Budget, task_id: str, book: AgentBook, now: float
    ) -> list[GovernorEvent]:
        agent = book.agent
        events: list[GovernorEvent] = []
        left = _left(spend, budget)
        if left is None:
            return events
        fraction = self.policy.profile.budget_warning_fraction
        if left > fraction:  # a budget raised since (a reload): warn again when it runs low
            spend.warned = False
        if not spend.warned and left <= fraction:
            spend.warned = True
            events.append(
                GovernorEvent(
                    kind="budget.warning",
                    agent=agent,
                    task_id=task_id,
                    payload={
                        "account": name,
                        "left": round(max(left, 0.0), 6),
                        "usd": spend.usd,
                        "tokens": spend.tokens,
                    },
                )
            )
        usd, tokens = self._limit(budget)
        spent = (usd is not None and spend.usd >= usd) or (
            tokens is not None and spend.tokens >= tokens
        )
        if not spent:
            spend.exhausted = False
        if spent and not spend.exhausted:
            spend.exhausted = True
            events.append(
                GovernorEvent(
                    kind="budget.exhausted",
                    agent=agent,
                    task_id=task_id,
                    payload={"account": name, "usd": spend.usd, "tokens": spend.tokens},
                )
            )
            enforced = self.policy.profile.enable_budget_enforcement
            if name.startswith("agent ") and enforced and book.breaker != "open":
                events.append(self._open(book, now, "its budget is spent", task_id))
        return events

    def _band(self, value: float) -> str:
        for name, bound in sorted(self.policy.reputation_bands.items(), key=lambda b: -b[1]):
            if value >= bound:
                return name
        return "untrusted"

    # -- keeping the state ------------------------------------------------------------------

    @property
    def has_changes(self) -> bool:
        return bool(self._dirty)

    def take_changes(self) -> dict[str, bytes | None]:
        """The documents changed since the last call, by key (``agent/<id>``,
        ``swarm/<name>``, ``task/<id>``); ``None`` for one to delete. The driver writes
        them in the same transaction as the board change that caused them."""
        changes: dict[str, bytes | None] = {}
        for key in sorted(self._dirty):
            kind, _, name = key.partition("/")
            if kind == "agent" and name in self.agents:
                changes[key] = msgspec.json.encode(_book_document(self.agents[name]))
            elif kind == "swarm" and name in self.swarms:
                changes[key] = msgspec.json.encode(vars(self.swarms[name]))
            elif kind == "task" and name in self.tasks:
                changes[key] = msgspec.json.encode(vars(self.tasks[name]))
            else:
                changes[key] = None
        self._dirty.clear()
        return changes

    def restore(self, documents: Mapping[str, bytes], now: float) -> None:
        """Load the documents :meth:`take_changes` gave (what survived a restart)."""
        for key, data in sorted(documents.items()):
            kind, _, name = key.partition("/")
            saved = msgspec.json.decode(data)
            if kind == "agent":
                manifest = msgspec.convert(saved["manifest"], Manifest)
                self.register(name, manifest, now, validate=False)
                book = self.agents[name]
                book.reputation = saved["reputation"]
                book.outcomes.extend(saved["outcomes"])
                book.durations.extend(saved["durations"])
                book.consecutive_failures = saved["consecutive_failures"]
                book.breaker = saved["breaker"]
                book.opened_at = saved["opened_at"]
                book.trial = saved["trial"]
                book.spend = Spend(**saved["spend"])
            elif kind == "swarm":
                self.swarms[name] = Spend(**saved)
            elif kind == "task":
                self.tasks[name] = Spend(**saved)
        self._dirty.clear()
        self._ranked.clear()


def _book_document(book: AgentBook) -> dict[str, Any]:
    return {
        "manifest": msgspec.to_builtins(book.manifest),
        "reputation": book.reputation,
        "outcomes": list(book.outcomes),
        "durations": list(book.durations),
        "consecutive_failures": book.consecutive_failures,
        "breaker": book.breaker,
        "opened_at": book.opened_at,
        "trial": book.trial,
        "spend": vars(book.spend),
    }


def _left(spend: Spend, budget: Budget) -> float | None:
    """The smallest fraction left of the budget's bounds, or ``None`` without bounds."""
    fractions = []
    if budget.usd is not None:
        fractions.append(1.0 - spend.usd / budget.usd if budget.usd > 0 else 0.0)
    if budget.tokens is not None:
        fractions.append(1.0 - spend.tokens / budget.tokens if budget.tokens > 0 else 0.0)
    return min(fractions) if fractions else None

"""A reproducible workload for the governor, and the money each way of assigning it wastes.

``python -m infrafabric.governor.simulate [--seed N] [--tasks N] [--agents N] [--load F]``
prints one row per strategy. Everything here is pure and deterministic: one seed gives one
workload (:func:`generate`), and every strategy is run on that same workload
(:func:`run`, :func:`compare`) with a simulated clock and no I/O.

**The workload.** Tasks need 1 to 3 capabilities of a small vocabulary (``code:python``,
``code:sql``, ``code:review``, ``docs:write``, ``research:web``, ``data:analysis``), have a
difficulty (easy, medium, hard; tasks that need more capabilities are harder on average)
and an estimated size in tokens (in and out, log-uniform within a range per difficulty),
a priority (mostly 50, some 70 and 30), and an arrival time: they arrive in bursts of 1 to
6 (a planner splitting a job) with exponential gaps, at a rate that keeps the pool about
``load`` busy on average (by the work a qualified mid-tier agent would do). Agents come in
three price tiers, priced per million tokens in and out like a small, a medium and a large
LLM (:data:`POLICY`): half are cheap with 1 or 2 capabilities, 30 % mid with 2 to 4, 20 %
premium with 5 or 6; the first premium agent has all six, so every task has at least one
qualified agent. An attempt fails with a rate that depends on the agent's tier and the
task's difficulty (:data:`FAILURE`); an agent that lacks a capability the task needs keeps
only :data:`UNQUALIFIED_SUCCESS` of its success rate. A failed attempt has used part of
its tokens and time; the task goes back to the board and dies after
:data:`MAX_ATTEMPTS` failures.

**Fair draws.** Each (task, attempt number) has its draws fixed in the workload: a uniform
``outcome`` (the attempt fails when it is below the agent's failure rate), the attempt's
size relative to the estimate, and the share of its tokens a failure uses. Whoever makes
the *n*-th attempt at a task gets the same draws under every strategy (common random
numbers), so the strategies differ only in who they pick, not in luck.

**The strategies.** Idle agents ask for work in the order they became idle (the
workload's agent order at the start); the board is dispatched again whenever a task
arrives, an attempt ends, or a breaker's cool-off ends.

* ``random``: the agent takes a uniformly random available task, capabilities ignored.
* ``first_come``: today's "poll a shared branch": the agent takes the available task of
  highest priority, oldest first (then lowest index), among those whose capabilities it
  has *all*; if there is none, the highest-priority oldest task of any kind. Price plays
  no part.
* ``governor``: the real :class:`~infrafabric.governor.core.Governor` under
  :data:`POLICY` (the built-in profile, patience 30 s, plus the price table): every
  agent is seen (idle ones poll, busy ones send heartbeats), then each idle one calls
  ``choose`` with the available tasks until a round gives out nothing; claims, completions (with their usage), failures (with their usage)
  and deaths are fed back with ``observe``, so reputation and breakers act as they would
  in a fabric.
* ``governor_cost_first``: the same under :data:`COST_FIRST` (patience 30 minutes): the
  price of waiting for the cheapest adequate agent is paid in turnaround instead.

**Cost and waste.** Every attempt costs its tokens at its agent's tier price
(:meth:`~infrafabric.governor.policy.Price.cost`). An agent is *qualified* for a task
when it has every capability the task needs. For each attempt, the *baseline* is what
the cheapest qualified agent in the pool would have charged for the same tokens. Then,
attempt by attempt (the definition the issue proposes: money spent above the cheapest
qualified assignment, plus money spent on work by unqualified agents):

    waste      = overpaid + unqualified
    overpaid   = over attempts by qualified agents: max(0, cost - baseline)
    unqualified = over attempts by unqualified agents: their whole cost
    waste fraction = waste / total spend (0 when nothing was spent)

An unqualified agent's work is waste even when it succeeds, failed or not: it was a
gamble the board should not have taken. A qualified agent's failure is not waste in
itself (the cheapest qualified agent would fail sometimes too; what it cost above that
agent's price is). Every failed attempt's cost is reported too (``failed_usd``), so the
stricter reading (all failures as waste) can be read off the same run. :func:`floor`
hands every attempt to the cheapest qualified agent as if it were never busy: zero
waste by definition, and the spend and failures that remain when nothing is wasted. A
task is *unfinished* when it died (after :data:`MAX_ATTEMPTS` failures) or was never
completed when the simulation ran out of events (nobody left it could be given to).
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from infrafabric.governor.core import Governor, GovernorEvent, Manifest, TaskView
from infrafabric.governor.policy import Price, parse_policy

__all__ = [
    "FAILURE",
    "MAX_ATTEMPTS",
    "POLICY",
    "STRATEGIES",
    "UNQUALIFIED_SUCCESS",
    "Agent",
    "Draw",
    "Result",
    "Task",
    "Workload",
    "compare",
    "floor",
    "generate",
    "main",
    "run",
]

Tier = Literal["cheap", "mid", "premium"]
Difficulty = Literal["easy", "medium", "hard"]
Strategy = Literal["random", "first_come", "governor", "governor_cost_first"]

STRATEGIES: Final[tuple[Strategy, ...]] = (
    "random",
    "first_come",
    "governor",
    "governor_cost_first",
)
TIERS: Final[tuple[Tier, ...]] = ("cheap", "mid", "premium")

VOCABULARY: Final = (
    "code:python",
    "code:sql",
    "code:review",
    "docs:write",
    "research:web",
    "data:analysis",
)

#: The governor's policy: the built-in profile and one price per tier, USD per million
#: tokens in and out, as a small, a medium and a large hosted LLM were priced in 2025.
POLICY: Final = """\
prices:
  cheap: {usd_per_1m_in: 0.8, usd_per_1m_out: 4}
  mid: {usd_per_1m_in: 3, usd_per_1m_out: 15}
  premium: {usd_per_1m_in: 15, usd_per_1m_out: 75}
"""
_POLICY = parse_policy(POLICY, source="<simulate.POLICY>")
#: The same prices under a cost-first profile: a task waits up to 30 minutes for the
#: best-ranked (cheapest adequate) agent to be free before anyone else may take it.
COST_FIRST: Final = POLICY + "profiles:\n  default:\n    patience_seconds: 1800\n"
_COST_FIRST = parse_policy(COST_FIRST, source="<simulate.COST_FIRST>")
PRICES: Final[dict[str, Price]] = {tier: _POLICY.prices[tier] for tier in TIERS}

#: Failure rate of a qualified agent's attempt, by tier and difficulty.
FAILURE: Final[dict[Tier, dict[Difficulty, float]]] = {
    "cheap": {"easy": 0.10, "medium": 0.25, "hard": 0.50},
    "mid": {"easy": 0.05, "medium": 0.12, "hard": 0.25},
    "premium": {"easy": 0.03, "medium": 0.06, "hard": 0.12},
}
#: The share of its success rate an agent keeps on a task it lacks a capability for.
UNQUALIFIED_SUCCESS: Final = 0.2
#: Attempts before a task is dead.
MAX_ATTEMPTS: Final = 3

#: Estimated tokens in and out, (low, high) drawn log-uniformly, by difficulty.
_TOKENS: Final[dict[Difficulty, tuple[tuple[int, int], tuple[int, int]]]] = {
    "easy": ((8_000, 30_000), (1_000, 4_000)),
    "medium": ((30_000, 120_000), (4_000, 12_000)),
    "hard": ((120_000, 400_000), (10_000, 30_000)),
}
#: Difficulty weights (easy, medium, hard) by the number of capabilities needed.
_DIFFICULTY: Final[dict[int, tuple[float, float, float]]] = {
    1: (0.50, 0.35, 0.15),
    2: (0.35, 0.40, 0.25),
    3: (0.20, 0.40, 0.40),
}
#: Seconds an attempt takes: a fixed overhead (tool calls, start-up) plus output tokens
#: at the tier's speed (larger models are slower).
_OVERHEAD: Final[dict[Tier, float]] = {"cheap": 10.0, "mid": 15.0, "premium": 20.0}
_TOKENS_PER_SECOND: Final[dict[Tier, float]] = {"cheap": 120.0, "mid": 70.0, "premium": 35.0}
#: Capabilities per agent, (fewest, most), by tier.
_BREADTH: Final[dict[Tier, tuple[int, int]]] = {"cheap": (1, 2), "mid": (2, 4), "premium": (5, 6)}
#: Events a breaker's cool-off or a task's patience ends at are pushed this much later:
#: ``(t + p) - t`` can come out a hair below ``p`` in floating point, and the governor
#: compares with ``>=``.
_EPSILON: Final = 1e-6


@dataclass(frozen=True, slots=True)
class Draw:
    """The luck of one attempt at a task, whoever makes it."""

    outcome: float  # uniform [0, 1): the attempt fails when below the agent's failure rate
    size: float  # the attempt's tokens relative to the task's estimate
    spent: float  # the share of its tokens and time a failed attempt uses


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    need: tuple[str, ...]
    difficulty: Difficulty
    tokens_in: int  # estimated
    tokens_out: int
    priority: int
    arrives: float  # seconds from the start
    draws: tuple[Draw, ...]  # one per attempt number


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    tier: Tier
    capabilities: frozenset[str]

    def qualified(self, task: Task) -> bool:
        return self.capabilities.issuperset(task.need)

    def failure_rate(self, task: Task) -> float:
        rate = FAILURE[self.tier][task.difficulty]
        return rate if self.qualified(task) else 1.0 - (1.0 - rate) * UNQUALIFIED_SUCCESS

    def seconds(self, tokens_out: int) -> float:
        return _OVERHEAD[self.tier] + tokens_out / _TOKENS_PER_SECOND[self.tier]


@dataclass(frozen=True, slots=True)
class Workload:
    seed: int
    load: float
    tasks: tuple[Task, ...]
    agents: tuple[Agent, ...]


@dataclass(frozen=True, slots=True)
class Result:
    strategy: str
    total_usd: float
    waste_usd: float  # overpaid_usd + unqualified_usd
    waste_fraction: float  # waste_usd / total_usd (0 when nothing was spent)
    completed: int
    unfinished: int  # dead or never completed
    attempts: int
    failed_usd: float  # spent on attempts that failed (by anyone; not all of it waste)
    overpaid_usd: float  # qualified agents' attempts above the cheapest qualified price
    dead: int  # unfinished after MAX_ATTEMPTS failures
    mean_turnaround_seconds: float  # arrival to completion, over completed tasks
    unqualified_usd: float = 0.0  # every attempt by an agent lacking a needed capability


# -- the workload ------------------------------------------------------------------------------


def generate(seed: int, tasks: int = 600, agents: int = 30, *, load: float = 0.5) -> Workload:
    """The workload for ``seed``: ``tasks`` tasks arriving so that ``agents`` agents are
    about ``load`` busy on average (see the module's description)."""
    if tasks < 0 or agents < 1 or not 0.0 < load <= 1.0:
        raise ValueError("tasks >= 0, agents >= 1 and 0 < load <= 1, please")
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, no secrets
    pool = _agents(rng, agents)
    shapes = [_task_shape(rng) for _ in range(tasks)]
    # the arrival rate that gives `load`, by the time a qualified mid-tier agent would
    # need for everything, failed attempts included
    mid = Agent("", "mid", frozenset(VOCABULARY))
    work = sum(
        mid.seconds(tokens_out) / (1.0 - FAILURE["mid"][difficulty])
        for _, difficulty, _, tokens_out in shapes
    )
    horizon = work / (agents * load)
    bursts_per_second = tasks / 3.5 / horizon if tasks else 0.0  # bursts of 3.5 on average
    built: list[Task] = []
    now, left_in_burst = 0.0, 0
    for index, (need, difficulty, tokens_in, tokens_out) in enumerate(shapes):
        if left_in_burst == 0:
            now += rng.expovariate(bursts_per_second)
            left_in_burst = rng.randint(1, 6)
        left_in_burst -= 1
        priority = rng.choices((70, 50, 30), (0.15, 0.70, 0.15))[0]
        draws = tuple(
            Draw(
                outcome=rng.random(),
                size=math.exp(rng.uniform(math.log(0.7), math.log(1.4))),
                spent=rng.uniform(0.2, 1.0),
            )
            for _ in range(MAX_ATTEMPTS)
        )
        built.append(
            Task(
                id=f"t{index:05d}",
                need=need,
                difficulty=difficulty,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                priority=priority,
                arrives=round(now, 3),
                draws=draws,
            )
        )
    return Workload(seed=seed, load=load, tasks=tuple(built), agents=pool)


def _agents(rng: random.Random, count: int) -> tuple[Agent, ...]:
    premium = max(1, round(count * 0.2))
    mid = min(count - premium, round(count * 0.3))
    counts: dict[Tier, int] = {"premium": premium, "mid": mid, "cheap": count - premium - mid}
    tiers = [tier for tier, number in counts.items() for _ in range(number)]
    agents = []
    for index, tier in enumerate(tiers):
        if index == 0:  # a generalist, so that no task is beyond the whole pool
            capabilities = frozenset(VOCABULARY)
        else:
            fewest, most = _BREADTH[tier]
            capabilities = frozenset(rng.sample(VOCABULARY, rng.randint(fewest, most)))
        agents.append(Agent(f"if://agent/{tier}-{index:03d}", tier, capabilities))
    rng.shuffle(agents)  # the order agents first ask in: not by tier
    return tuple(agents)


def _task_shape(rng: random.Random) -> tuple[tuple[str, ...], Difficulty, int, int]:
    size = rng.choices((1, 2, 3), (0.55, 0.35, 0.10))[0]
    need = tuple(sorted(rng.sample(VOCABULARY, size)))
    difficulty: Difficulty = rng.choices(("easy", "medium", "hard"), _DIFFICULTY[size])[0]
    (in_low, in_high), (out_low, out_high) = _TOKENS[difficulty]
    return (
        need,
        difficulty,
        _log_uniform(rng, in_low, in_high),
        _log_uniform(rng, out_low, out_high),
    )


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return round(math.exp(rng.uniform(math.log(low), math.log(high))))


# -- the simulation ----------------------------------------------------------------------------

_ARRIVE, _DONE, _WAKE = 0, 1, 2


@dataclass(slots=True)
class _Attempt:
    agent: int
    task: int
    success: bool
    tokens_in: int
    tokens_out: int
    usd: float


class _Simulation:
    """One strategy over one workload: a heap of timed events, the board's available
    tasks, and the idle agents in the order they became idle."""

    def __init__(self, workload: Workload, strategy: Strategy) -> None:
        self.workload = workload
        self.strategy = strategy
        self.tasks = workload.tasks
        self.agents = workload.agents
        self.index = {task.id: index for index, task in enumerate(self.tasks)}
        self.events: list[tuple[float, int, int, _Attempt | int | None]] = []
        self.sequence = 0  # ties in time keep the order they were pushed in
        self.available: dict[int, float] = {}  # task index -> available since
        self.idle: deque[int] = deque(range(len(self.agents)))
        self.attempts = [0] * len(self.tasks)
        self.done: dict[int, float] = {}  # task index -> completed at
        self.dead = 0
        self.total = self.failed = self.overpaid = self.unqualified = 0.0
        self.count = 0
        self.rng = random.Random(f"{workload.seed}:{strategy}")  # noqa: S311 - random's picks
        self.governor: Governor | None = None
        if strategy in ("governor", "governor_cost_first"):
            self.governor = Governor(_POLICY if strategy == "governor" else _COST_FIRST)
            for agent in self.agents:
                manifest = Manifest(
                    capabilities=tuple(sorted(agent.capabilities)), model=agent.tier
                )
                self.governor.register(agent.id, manifest, 0.0)

    def push(self, at: float, kind: int, data: _Attempt | int | None) -> None:
        heapq.heappush(self.events, (at, self.sequence, kind, data))
        self.sequence += 1

    def run(self) -> Result:
        for index, task in enumerate(self.tasks):
            self.push(task.arrives, _ARRIVE, index)
        while self.events:
            now = self.events[0][0]
            while self.events and self.events[0][0] == now:
                _, _, kind, data = heapq.heappop(self.events)
                if kind == _ARRIVE and isinstance(data, int):
                    self.make_available(data, now)
                elif kind == _DONE and isinstance(data, _Attempt):
                    self.finish(data, now)
                # _WAKE: nothing to do but dispatch at its time
            self.dispatch(now)
        completed = len(self.done)
        waste = self.overpaid + self.unqualified
        turnaround = [at - self.tasks[index].arrives for index, at in self.done.items()]
        return Result(
            strategy=self.strategy,
            total_usd=self.total,
            waste_usd=waste,
            waste_fraction=waste / self.total if self.total > 0 else 0.0,
            completed=completed,
            unfinished=len(self.tasks) - completed,
            attempts=self.count,
            failed_usd=self.failed,
            overpaid_usd=self.overpaid,
            dead=self.dead,
            mean_turnaround_seconds=sum(turnaround) / len(turnaround) if turnaround else 0.0,
            unqualified_usd=self.unqualified,
        )

    def make_available(self, index: int, now: float) -> None:
        self.available[index] = now
        if self.governor is not None:  # a task that waited out patience goes to anyone
            self.push(now + self.governor.policy.profile.patience_seconds + _EPSILON, _WAKE, None)

    # -- assignment --------------------------------------------------------------------------

    def dispatch(self, now: float) -> None:
        if self.governor is not None:
            self.dispatch_governed(self.governor, now)
            return
        for agent in list(self.idle):
            if not self.available:
                return
            self.start(agent, self.pick(agent), now)

    def pick(self, agent: int) -> int:
        if self.strategy == "random":
            return self.rng.choice(list(self.available))
        ordered = sorted(
            self.available,
            key=lambda t: (-self.tasks[t].priority, self.available[t], t),
        )
        qualified = self.agents[agent].qualified
        return next((t for t in ordered if qualified(self.tasks[t])), ordered[0])

    def dispatch_governed(self, governor: Governor, now: float) -> None:
        for who in self.agents:  # idle ones poll, busy ones send heartbeats: none vanished
            governor.seen(who.id, now)
        claimed = True
        while claimed and self.available and self.idle:
            claimed = False  # another round: an agent deferred to one that took other work
            for agent in list(self.idle):
                if not self.available:
                    return
                views = [
                    TaskView(
                        self.tasks[t].id,
                        self.tasks[t].need,
                        self.tasks[t].priority,
                        since,
                    )
                    for t, since in self.available.items()
                ]
                choice = governor.choose(self.agents[agent].id, views, now)
                if choice is not None:
                    self.start(agent, self.index[choice.id], now)
                    claimed = True

    # -- attempts ------------------------------------------------------------------------------

    def start(self, agent: int, index: int, now: float) -> None:
        task, who = self.tasks[index], self.agents[agent]
        del self.available[index]
        self.idle.remove(agent)
        draw = task.draws[self.attempts[index]]
        success = draw.outcome >= who.failure_rate(task)
        share = draw.size * (1.0 if success else draw.spent)
        tokens_in, tokens_out = round(task.tokens_in * share), round(task.tokens_out * share)
        usd = PRICES[who.tier].cost(tokens_in, tokens_out)
        seconds = who.seconds(round(task.tokens_out * draw.size)) * (1.0 if success else draw.spent)
        self.count += 1
        if self.governor is not None:
            self.governor.observe("task.claimed", task.id, who.id, now, {})
        self.push(now + seconds, _DONE, _Attempt(agent, index, success, tokens_in, tokens_out, usd))

    def finish(self, attempt: _Attempt, now: float) -> None:
        task, who = self.tasks[attempt.task], self.agents[attempt.agent]
        self.idle.append(attempt.agent)
        self.total += attempt.usd
        usage = {
            "model": who.tier,
            "tokens_in": attempt.tokens_in,
            "tokens_out": attempt.tokens_out,
        }
        events: list[GovernorEvent] = []
        if who.qualified(task):
            baseline = min(
                PRICES[agent.tier].cost(attempt.tokens_in, attempt.tokens_out)
                for agent in self.agents
                if agent.qualified(task)
            )
            self.overpaid += max(0.0, attempt.usd - baseline)
        else:
            self.unqualified += attempt.usd
        if attempt.success:
            self.done[attempt.task] = now
            if self.governor is not None:
                events = self.governor.observe(
                    "task.completed", task.id, who.id, now, {"usage": usage}
                )
        else:
            self.failed += attempt.usd
            self.attempts[attempt.task] += 1
            dead = self.attempts[attempt.task] >= MAX_ATTEMPTS
            if self.governor is not None:
                payload = {"old_owner": who.id, "usage": usage}
                events = self.governor.observe("task.failed", task.id, None, now, payload)
                if dead:
                    events += self.governor.observe("task.dead", task.id, None, now, {})
            if dead:
                self.dead += 1
            else:
                self.make_available(attempt.task, now)
        cooloff = None if self.governor is None else self.governor.policy.profile.cooloff_seconds
        if cooloff is not None and any(event.kind == "breaker.opened" for event in events):
            self.push(now + cooloff + _EPSILON, _WAKE, None)  # it may take a trial task then


def run(workload: Workload, strategy: str) -> Result:
    """Assign ``workload`` by ``strategy`` (one of :data:`STRATEGIES`) and account for it."""
    if strategy not in STRATEGIES:
        raise ValueError(f"no strategy {strategy!r} (have {', '.join(STRATEGIES)})")
    return _Simulation(workload, strategy).run()


def floor(workload: Workload) -> Result:
    """Every attempt at every task made at once by the cheapest qualified agent (as if
    it were never busy), with the same draws: no waste by definition; what it spends,
    and on failures, is what the work itself costs (see the module's description). Not a strategy: nobody waits,
    so its turnaround is the attempts' own time."""
    total = failed = 0.0
    attempts = dead = 0
    turnaround: list[float] = []
    for task in workload.tasks:
        agent = min(
            (a for a in workload.agents if a.qualified(task)),
            key=lambda a: PRICES[a.tier].cost(task.tokens_in, task.tokens_out),
        )
        rate, seconds = agent.failure_rate(task), 0.0
        for draw in task.draws:
            attempts += 1
            success = draw.outcome >= rate
            share = draw.size * (1.0 if success else draw.spent)
            usd = PRICES[agent.tier].cost(
                round(task.tokens_in * share), round(task.tokens_out * share)
            )
            seconds += agent.seconds(round(task.tokens_out * draw.size)) * (
                1.0 if success else draw.spent
            )
            total += usd
            if success:
                turnaround.append(seconds)
                break
            failed += usd
        else:
            dead += 1
    return Result(
        strategy="floor",
        total_usd=total,
        waste_usd=0.0,
        waste_fraction=0.0,
        completed=len(turnaround),
        unfinished=len(workload.tasks) - len(turnaround),
        attempts=attempts,
        failed_usd=failed,
        overpaid_usd=0.0,
        dead=dead,
        mean_turnaround_seconds=sum(turnaround) / len(turnaround) if turnaround else 0.0,
    )


def compare(
    seed: int = 7, tasks: int = 600, agents: int = 30, *, load: float = 0.5
) -> dict[str, Result]:
    """Every strategy over the same workload, by strategy name."""
    workload = generate(seed, tasks, agents, load=load)
    return {strategy: run(workload, strategy) for strategy in STRATEGIES}


# -- the command line ----------------------------------------------------------------------------


def render(results: dict[str, Result]) -> str:
    lines = [
        f"  {'strategy':<20} {'spend':>10} {'waste':>10} {'waste %':>8} {'overpaid':>9}"
        f" {'unqualif.':>9} {'failed':>9} {'completed':>9} {'unfinished':>10} {'attempts':>8}"
        f" {'turnaround':>10}"
    ]
    for name, result in results.items():
        lines.append(
            f"  {name:<20} {result.total_usd:>10,.2f} {result.waste_usd:>10,.2f}"
            f" {result.waste_fraction * 100:>6.1f} % {result.overpaid_usd:>9,.2f}"
            f" {result.unqualified_usd:>9,.2f} {result.failed_usd:>9,.2f}"
            f" {result.completed:>9,} {result.unfinished:>10,}"
            f" {result.attempts:>8,} {result.mean_turnaround_seconds:>9,.0f}s"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m infrafabric.governor.simulate",
        description="Waste of three assignment strategies over one seeded workload (USD).",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--agents", type=int, default=30)
    parser.add_argument("--load", type=float, default=0.5, help="how busy the pool is kept")
    args = parser.parse_args(argv)
    workload = generate(args.seed, args.tasks, args.agents, load=args.load)
    tiers = ", ".join(
        f"{sum(agent.tier == tier for agent in workload.agents)} {tier}" for tier in TIERS
    )
    print(f"seed {args.seed}: {args.tasks} tasks, {args.agents} agents ({tiers}), load {args.load}")
    results: dict[str, Result] = {strategy: run(workload, strategy) for strategy in STRATEGIES}
    print(render({**results, "floor": floor(workload)}))
    print("  floor: every attempt by the cheapest qualified agent, never busy (not a strategy)")


if __name__ == "__main__":
    main()

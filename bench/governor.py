"""Governor benchmarks, printed by `make bench` after the witness ones.

* Waste: the simulation of `infrafabric.governor.simulate` (seed 7, 600 tasks, 30 agents)
  with tasks handed out at random, first come first served, and by the governor; the
  definition of waste is in that module's docstring. Simulated, so the figures are the
  same on every machine.
* Matching time with 1,000 registered agents: a cold ranking (`Governor.ranked` with the
  governor's ranking cache, the private `_ranked`, cleared before every call, so each
  call scores all 1,000 agents) and `choose` for one task with the ranking cached, beside
  a raw Python loop computing set-intersection coverage of the same 1,000 agents in the
  same run.

The claim latency with the governor on and off is measured in bench/claims.py.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

from infrafabric.governor.core import Governor, Manifest, TaskView
from infrafabric.governor.policy import DEFAULT_VOCABULARY, parse_policy
from infrafabric.governor.simulate import POLICY, STRATEGIES, compare, floor, generate

SEED, TASKS, AGENTS = 7, 600, 30
NEED = ("code:python", "code:review")


def waste(quick: bool) -> list[str]:
    results = compare(seed=SEED, tasks=TASKS, agents=AGENTS)
    reference = floor(generate(SEED, TASKS, AGENTS))
    baseline = results["random"]
    lines = [
        f"\nGovernor: waste over one simulated workload (seed {SEED}, {TASKS} tasks,"
        f" {AGENTS} agents in 3 price tiers; docs/governor.md defines waste)",
        f"  {'strategy':<20} {'total spend':>12} {'waste':>8} {'completed':>10}"
        f" {'unfinished':>11} {'turnaround':>11}  vs baseline",
    ]
    rows = [*((name, results[name]) for name in STRATEGIES), ("floor", reference)]
    for name, result in rows:
        if name == "random":
            comparison = "(baseline)"
        elif name == "floor":
            comparison = "(reference: the cheapest qualified agent, never busy)"
        else:
            comparison = f"{result.waste_usd / baseline.waste_usd:5.2f}x random's waste in USD"
        lines.append(
            f"  {name:<20} {'$' + format(result.total_usd, ',.2f'):>12}"
            f" {result.waste_fraction * 100:>6.1f} % {result.completed:>10,}"
            f" {result.unfinished:>11,} {result.mean_turnaround_seconds:>10,.0f}s  {comparison}"
        )
    for name in ("governor", "governor_cost_first"):
        governor, chance = results[name].waste_fraction, baseline.waste_fraction
        met = governor < 0.10 and chance > 0.40
        fewer = results[name].unfinished <= baseline.unfinished
        lines.append(
            f"  aim: {name} < 10 % where random > 40 %, no more unfinished:"
            f" {governor * 100:.1f} % vs {chance * 100:.1f} %,"
            f" {results[name].unfinished} vs {baseline.unfinished} unfinished"
            f" ({'met' if met and fewer else 'missed'})"
        )
    seeds = range(1, 4 if quick else 11)
    spread: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    for seed in seeds:
        for name, result in compare(seed=seed, tasks=TASKS, agents=AGENTS).items():
            spread[name].append(result.waste_fraction * 100)
    lines.append(f"  waste over seeds {seeds.start}-{seeds.stop - 1} (median, range):")
    for name, values in spread.items():
        lines.append(
            f"    {name:<20} {statistics.median(values):5.1f} %  ({min(values):.1f}-{max(values):.1f} %)"
        )
    return lines


def matching(quick: bool) -> list[str]:
    rng = random.Random(SEED)
    vocabulary = sorted(DEFAULT_VOCABULARY)
    governor = Governor(parse_policy(POLICY, source="<simulate.POLICY>"))
    now = 1000.0
    for index in range(1000):
        # 2 to 8 capabilities of the 30 built-in ones; every tenth agent also has NEED,
        # so about 1 in 8 qualifies (a ranking of some length to sort)
        have = set(rng.sample(vocabulary, rng.randint(2, 8)))
        if index % 10 == 0:
            have.update(NEED)
        model = rng.choice(("cheap", "mid", "premium"))
        agent = f"if://agent/bench-{index:04d}"
        governor.register(agent, Manifest(capabilities=tuple(sorted(have)), model=model), now)
        governor.seen(agent, now)
    task = TaskView("t-bench", NEED, available_since=now)
    ranking = governor.ranked(NEED, now)
    best, last = ranking[0].agent, ranking[-1].agent
    # the worst case for choose: the lowest-ranked qualified agent asks while every
    # better one is alive but refused (its breaker open), so it walks the whole ranking
    # and asks admission of each before it may take the task
    busy = Governor(governor.policy)
    for book in governor.agents.values():
        busy.register(book.agent, book.manifest, now)
        busy.seen(book.agent, now)
    for candidate in ranking[:-1]:
        refused = busy.agents[candidate.agent]
        refused.breaker, refused.opened_at = "open", now
    busy.ranked(NEED, now)
    haves = [book.have for book in governor.agents.values()]
    need = frozenset(NEED)

    def raw_loop(n: int) -> None:
        for _ in range(n):
            [len(have & need) / len(need) for have in haves]

    def ranked_cold(n: int) -> None:
        for _ in range(n):
            governor._ranked.clear()
            governor.ranked(NEED, now)

    def choose_best(n: int) -> None:
        for _ in range(n):
            if governor.choose(best, [task], now) is None:
                raise AssertionError("the best-ranked agent was refused the task")

    def choose_scan(n: int) -> None:
        for _ in range(n):
            if busy.choose(last, [task], now) is None:
                raise AssertionError("the last-ranked agent was refused, every better one too")

    operations: list[tuple[str, Callable[[int], None]]] = [
        ("raw loop: set-intersection coverage of 1,000 agents", raw_loop),
        ("Governor.ranked, cold (cache cleared every call)", ranked_cold),
        ("Governor.choose, warm: the best-ranked agent asks", choose_best),
        ("Governor.choose, warm: the last asks, all better refused", choose_scan),
    ]
    count, rounds = (20, 2) if quick else (200, 5)
    best_seconds = {name: float("inf") for name, _ in operations}
    for _ in range(rounds):  # interleaved: a burst of noise spoils one round of each
        for name, operation in operations:
            started = time.perf_counter()
            operation(count)
            best_seconds[name] = min(best_seconds[name], (time.perf_counter() - started) / count)
    raw = best_seconds[operations[0][0]]
    lines = [
        f"\nGovernor: matching with 1,000 registered agents ({len(ranking)} qualify for"
        f" {' + '.join(NEED)})",
        f"  {'operation':<54} {'us/op':>9}  vs baseline",
    ]
    for name, _ in operations:
        seconds = best_seconds[name]
        comparison = (
            "(baseline)"
            if name == operations[0][0]
            else f"{seconds / raw:5.1f}x the raw loop (aim: < 1 ms)"
        )
        lines.append(f"  {name:<54} {seconds * 1e6:>9.1f}  {comparison}")
    return lines


def main(quick: bool = False) -> None:
    print("\n".join([*waste(quick), *matching(quick)]))


if __name__ == "__main__":
    main()

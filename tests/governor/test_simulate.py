"""The waste simulation: reproducible, every task accounted for, money that adds up."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infrafabric.governor.simulate import (
    MAX_ATTEMPTS,
    STRATEGIES,
    Result,
    compare,
    floor,
    generate,
    main,
    run,
)


def check_books(result: Result, tasks: int) -> None:
    """What must hold of any strategy's result on a workload of ``tasks`` tasks."""
    assert result.completed + result.unfinished == tasks
    assert 0 <= result.dead <= result.unfinished
    assert result.completed <= result.attempts <= tasks * MAX_ATTEMPTS
    assert result.total_usd >= 0
    assert result.failed_usd >= 0
    assert result.overpaid_usd >= 0
    assert result.unqualified_usd >= 0
    assert math.isclose(result.waste_usd, result.overpaid_usd + result.unqualified_usd)
    assert result.failed_usd <= result.total_usd * (1 + 1e-9)
    assert result.waste_usd <= result.total_usd * (1 + 1e-9)
    assert 0.0 <= result.waste_fraction <= 1.0 + 1e-9
    if result.total_usd > 0:
        assert math.isclose(result.waste_fraction, result.waste_usd / result.total_usd)
    assert result.mean_turnaround_seconds >= 0


def test_a_seed_gives_one_workload_and_one_set_of_results() -> None:
    assert generate(3, 120, 12) == generate(3, 120, 12)
    assert compare(3, 120, 12) == compare(3, 120, 12)


def test_another_seed_gives_another_workload() -> None:
    one, other = generate(3, 120, 12), generate(4, 120, 12)
    assert one.tasks != other.tasks
    assert one.agents != other.agents
    assert compare(3, 120, 12) != compare(4, 120, 12)


def test_the_workload_has_the_size_and_mix_asked_for() -> None:
    workload = generate(7, 200, 20)
    assert len(workload.tasks) == 200
    assert len(workload.agents) == 20
    assert len({task.id for task in workload.tasks}) == 200
    assert len({agent.id for agent in workload.agents}) == 20
    assert {agent.tier for agent in workload.agents} == {"cheap", "mid", "premium"}
    assert {task.difficulty for task in workload.tasks} == {"easy", "medium", "hard"}
    assert all(1 <= len(task.need) <= 3 for task in workload.tasks)
    assert all(len(task.draws) == MAX_ATTEMPTS for task in workload.tasks)
    arrivals = [task.arrives for task in workload.tasks]
    assert arrivals == sorted(arrivals)
    # every task has someone who can do it, so "unfinished" is never the pool's fault
    assert all(any(a.qualified(task) for a in workload.agents) for task in workload.tasks)


def test_lacking_a_capability_makes_failure_much_likelier() -> None:
    workload = generate(7, 200, 20)
    for task in workload.tasks[:50]:
        for agent in workload.agents:
            rate = agent.failure_rate(task)
            assert 0.0 < rate < 1.0
            if not agent.qualified(task):
                assert rate >= 0.8


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_accounts_for_every_task(strategy: str) -> None:
    workload = generate(11, 150, 15)
    check_books(run(workload, strategy), 150)


@settings(max_examples=15)
@given(seed=st.integers(0, 2**32), tasks=st.integers(0, 40), agents=st.integers(1, 8))
def test_the_books_balance_for_any_seed_and_size(seed: int, tasks: int, agents: int) -> None:
    workload = generate(seed, tasks, agents)
    for strategy in STRATEGIES:
        check_books(run(workload, strategy), tasks)
    check_books(floor(workload), tasks)


def test_the_floor_wastes_nothing_but_still_fails_sometimes() -> None:
    workload = generate(7, 200, 20)
    result = floor(workload)
    check_books(result, 200)
    assert result.overpaid_usd == result.unqualified_usd == result.waste_usd == 0.0
    assert result.failed_usd > 0  # the work's own cost: cheap agents fail hard tasks


def test_on_the_default_seed_the_governor_wastes_less_than_random() -> None:
    results = compare(seed=7)  # the bench's figures
    governor, chance = results["governor"], results["random"]
    assert set(results) == set(STRATEGIES)
    for result in results.values():
        check_books(result, 600)
    assert governor.waste_fraction < chance.waste_fraction
    assert governor.waste_usd < chance.waste_usd
    assert governor.unfinished <= chance.unfinished


def test_nothing_to_do_costs_nothing() -> None:
    for result in compare(1, 0, 3).values():
        assert result == Result(result.strategy, 0.0, 0.0, 0.0, 0, 0, 0, 0.0, 0.0, 0, 0.0, 0.0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="no strategy"):
        run(generate(1, 5, 2), "cheapest")
    with pytest.raises(ValueError, match="agents >= 1"):
        generate(1, 5, 0)
    with pytest.raises(ValueError, match="load"):
        generate(1, 5, 2, load=0.0)


def test_the_command_line_prints_a_row_per_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--seed", "2", "--tasks", "60", "--agents", "6"])
    out = capsys.readouterr().out
    assert "seed 2: 60 tasks, 6 agents" in out
    for name in (*STRATEGIES, "floor"):
        assert f"\n  {name} " in out

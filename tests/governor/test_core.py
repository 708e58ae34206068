"""The governor's state machine: admission, ranking, budgets, breakers, reputation."""

from __future__ import annotations

import pytest

from infrafabric.governor.core import (
    Governor,
    GovernorEvent,
    Manifest,
    ManifestError,
    TaskView,
    reputation,
)
from infrafabric.governor.matching import Candidate, coverage, rank
from infrafabric.governor.policy import Price, parse_policy

POLICY = """
profiles:
  default:
    patience_seconds: 30
    cooloff_seconds: 60
    failure_threshold: 3
prices:
  big: {usd_per_1m_in: 15, usd_per_1m_out: 75}
  small: {usd_per_1m_in: 0.5, usd_per_1m_out: 1.5}
swarms:
  research: {members: [carol], budget: {usd: 1.0}}
budgets:
  agents:
    alice: {usd: 1.0}
  default_task: {usd: 5}
"""
PY = ("code:python",)


def governor(text: str = POLICY) -> Governor:
    return Governor(parse_policy(text, source="policy.yaml"))


def kinds(events: list[GovernorEvent]) -> list[str]:
    return [event.kind for event in events]


# -- matching --------------------------------------------------------------------------------


def test_coverage_edge_cases() -> None:
    assert coverage(frozenset(), []) == 1.0  # a task that needs nothing suits anyone
    assert coverage(frozenset(), ["code:python"]) == 0.0  # an agent with nothing suits none
    assert coverage(frozenset({"code:python"}), ["code:python", "code:sql"]) == 0.5
    assert coverage(frozenset({"code:*"}), ["code:python", "code:sql", "docs:write"]) == 2 / 3
    assert coverage(frozenset({"code:python"}), ["code:python", "code:python"]) == 1.0


def test_ranking_prefers_score_then_coverage_then_price_then_name() -> None:
    ranked = rank(
        [
            Candidate("if://agent/z", 1.0, 1.0, 2.0),
            Candidate("if://agent/a", 1.0, 1.0, 2.0),  # a tie with z: the name decides
            Candidate("if://agent/cheap", 0.5, 1.0, 1.0),  # a's score, less coverage: after
            Candidate("if://agent/best", 1.0, 1.0, 1.0),
            Candidate("if://agent/free", 0.8, 1.0, 0.0),  # free beats every priced agent
        ]
    )
    assert [c.agent.removeprefix("if://agent/") for c in ranked] == [
        "free",
        "best",
        "a",
        "z",
        "cheap",
    ]


def test_a_manifest_outside_the_strict_vocabulary_is_refused() -> None:
    strict = governor("vocabulary: {strict: true, extend: [art:poetry]}")
    strict.register("if://agent/a", Manifest(capabilities=("art:poetry", "code:python")), 0)
    with pytest.raises(ManifestError, match="not in the policy's vocabulary"):
        strict.register("if://agent/b", Manifest(capabilities=("art:sculpture",)), 0)
    with pytest.raises(ManifestError, match="not category:skill"):
        governor().register("if://agent/c", Manifest(capabilities=("Python",)), 0)
    with pytest.raises(ManifestError, match="no swarm"):
        governor().register("if://agent/d", Manifest(swarm="nowhere"), 0)


# -- admission and assignment --------------------------------------------------------------


def test_an_agent_never_gets_work_it_is_not_qualified_for() -> None:
    g = governor()
    g.register("if://agent/a", Manifest(capabilities=("code:python",), model="small"), 0)
    task = TaskView("t", ("code:python", "code:sql", "code:test"))
    refusal = g.admit("if://agent/a", task, 0)
    assert refusal is not None
    assert refusal.code == "NOT_QUALIFIED"
    assert "33%" in refusal.reason
    assert g.choose("if://agent/a", [task], 1000) is None  # not even after any wait
    assert g.admit("if://agent/stranger", task, 0) is not None  # no manifest, no work


def test_the_cheapest_adequate_alive_agent_is_waited_for_up_to_the_patience() -> None:
    g = governor()
    g.register("if://agent/big", Manifest(capabilities=PY, model="big"), 0)
    g.register("if://agent/small", Manifest(capabilities=PY, model="small"), 0)
    task = TaskView("t", PY, available_since=0)
    assert g.choose("if://agent/big", [task], 1) == task  # small was never seen: not idle
    g.seen("if://agent/small", 1)
    assert g.choose("if://agent/big", [task], 1) is None  # small is idle and cheaper
    assert g.choose("if://agent/small", [task], 1) == task
    g.observe("task.claimed", "other", "if://agent/small", 1, {})
    assert g.choose("if://agent/big", [task], 2) is None  # small is busy, but alive
    g.observe("task.completed", "other", "if://agent/small", 3, {})
    assert g.choose("if://agent/big", [task], 4) is None
    assert g.choose("if://agent/big", [task], 31) == task  # waited past the patience
    late = TaskView("late", PY, available_since=40)
    assert g.choose("if://agent/big", [late], 40) == late  # small unseen for 37 s: gone


def test_a_vanished_favourite_does_not_hold_work_back() -> None:
    g = governor()
    g.register("if://agent/small", Manifest(capabilities=PY, model="small"), 0)
    g.seen("if://agent/small", 0)
    g.register("if://agent/big", Manifest(capabilities=PY, model="big"), 0)
    task = TaskView("t", PY, available_since=100)
    assert g.choose("if://agent/big", [task], 100) == task  # small unseen for 100 s


def test_help_requests_are_capped_at_max_helpers_per_task() -> None:
    g = governor(
        "profiles: {default: {max_helpers_per_task: 2}}\nprices: {small: {usd_per_1m_in: 1}}"
    )
    for name in ("a", "b", "c", "d"):
        g.register(f"if://agent/{name}", Manifest(capabilities=PY, model="small"), 0)
    helpers = g.helpers(TaskView("t", PY), exclude=["if://agent/a"], now=0)
    assert helpers == ["if://agent/b", "if://agent/c"]
    assert g.helpers(TaskView("t", PY), exclude=[], now=0, limit=1) == ["if://agent/a"]


# -- budgets ---------------------------------------------------------------------------------


def _usage(usd_worth_small: float) -> dict[str, object]:
    """Usage that costs ``usd_worth_small`` at the small model's input price."""
    return {"tokens_in": int(usd_worth_small / 0.5 * 1e6), "model": "small"}


def test_a_budget_warns_at_twenty_percent_left_and_stops_claims_at_zero() -> None:
    g = governor()
    g.register("if://agent/alice", Manifest(capabilities=PY, model="small"), 0)
    task = TaskView("t", PY)
    assert kinds(g.charge("if://agent/alice", "t", _usage(0.5), 1)) == ["usage.charged"]
    events = g.charge("if://agent/alice", "t", _usage(0.35), 2)
    assert kinds(events) == ["usage.charged", "budget.warning"]
    assert events[0].payload["usd"] == pytest.approx(0.35)
    assert events[0].payload["priced_by"] == "policy"
    assert events[1].payload["account"] == "agent if://agent/alice"
    assert g.admit("if://agent/alice", task, 2) is None
    events = g.charge("if://agent/alice", "t", _usage(0.2), 3)
    assert kinds(events) == ["usage.charged", "budget.exhausted", "breaker.opened"]
    refusal = g.admit("if://agent/alice", TaskView("u", PY), 4)
    assert refusal is not None
    assert refusal.code == "BUDGET_EXHAUSTED"
    assert g.admit("if://agent/alice", TaskView("u", PY), 1000) is not None  # no cool-off for money


def test_an_overdraft_factor_lets_spending_run_over_by_that_much() -> None:
    g = governor(
        POLICY.replace("failure_threshold: 3", "failure_threshold: 3\n    overdraft_factor: 0.5")
    )
    g.register("if://agent/alice", Manifest(capabilities=PY, model="small"), 0)
    assert "budget.exhausted" not in kinds(g.charge("if://agent/alice", "t", _usage(1.2), 1))
    assert g.admit("if://agent/alice", TaskView("u", PY), 1) is None
    assert "budget.exhausted" in kinds(g.charge("if://agent/alice", "t", _usage(0.3), 2))
    assert g.admit("if://agent/alice", TaskView("u", PY), 2) is not None


def test_budget_enforcement_off_records_spend_but_refuses_nothing() -> None:
    g = governor(
        POLICY.replace(
            "failure_threshold: 3", "failure_threshold: 3\n    enable_budget_enforcement: false"
        )
    )
    g.register("if://agent/alice", Manifest(capabilities=PY, model="small"), 0)
    assert "budget.exhausted" in kinds(g.charge("if://agent/alice", "t", _usage(2), 1))
    assert g.admit("if://agent/alice", TaskView("u", PY), 1) is None
    assert g.report(1)["agents"][0]["spent_usd"] == pytest.approx(2)


def test_swarm_and_task_budgets_are_debited_and_enforced() -> None:
    g = governor()
    g.register("if://agent/carol", Manifest(capabilities=PY, model="small"), 0)
    g.register("if://agent/dave", Manifest(capabilities=PY, model="small"), 0)
    assert g.agents["if://agent/carol"].swarm == "research"
    g.charge("if://agent/carol", "t", _usage(1.0), 1)
    refusal = g.admit("if://agent/carol", TaskView("u", PY), 1)
    assert refusal is not None
    assert "swarm research" in refusal.reason
    g.charge("if://agent/dave", "big-task", _usage(5.0), 1)
    over = g.admit("if://agent/dave", TaskView("big-task", PY), 1)
    assert over is not None
    assert over.code == "TASK_OVER_BUDGET"
    assert g.admit("if://agent/dave", TaskView("other", PY), 1) is None


def test_usage_without_a_known_price_is_charged_at_the_agents_own_figure() -> None:
    g = governor()
    g.register("if://agent/x", Manifest(capabilities=PY, model="mystery"), 0)
    (charged,) = g.charge(
        "if://agent/x", "t", {"tokens_in": 10, "model": "mystery", "usd": 0.25}, 1
    )
    assert (charged.payload["usd"], charged.payload["priced_by"]) == (0.25, "agent")
    g.register("if://agent/y", Manifest(capabilities=PY, price=Price(usd_per_hour=36)), 0)
    (charged,) = g.charge("if://agent/y", "t", {"seconds": 100}, 1)
    assert (charged.payload["usd"], charged.payload["priced_by"]) == (
        pytest.approx(1.0),
        "manifest",
    )


# -- breakers ---------------------------------------------------------------------------------


def _fail(g: Governor, agent: str, task: str, at: float) -> list[GovernorEvent]:
    g.observe("task.claimed", task, agent, at, {})
    return g.observe("task.failed", task, agent, at + 1, {"old_owner": agent})


def test_a_breaker_opens_after_n_failures_goes_half_open_and_closes_on_a_good_trial() -> None:
    g = governor()
    agent = "if://agent/bob"
    g.register(agent, Manifest(capabilities=PY, model="small"), 0)
    assert "breaker.opened" not in kinds(_fail(g, agent, "t1", 0) + _fail(g, agent, "t2", 2))
    assert "breaker.opened" in kinds(_fail(g, agent, "t3", 4))
    refusal = g.admit(agent, TaskView("u", PY), 10)
    assert refusal is not None
    assert refusal.code == "BREAKER_OPEN"
    assert g.admit(agent, TaskView("u", PY), 5 + 60) is None  # cooled off: half-open
    g.observe("task.claimed", "u", agent, 66, {})
    assert g.admit(agent, TaskView("v", PY), 67) is not None  # one trial at a time
    events = g.observe("task.completed", "u", agent, 70, {})
    assert "breaker.closed" in kinds(events)
    assert g.agents[agent].breaker == "closed"


def test_a_failed_trial_opens_the_breaker_again() -> None:
    g = governor()
    agent = "if://agent/bob"
    g.register(agent, Manifest(capabilities=PY, model="small"), 0)
    for n in range(3):
        _fail(g, agent, f"t{n}", n * 2)
    assert g.admit(agent, TaskView("u", PY), 100) is None
    events = _fail(g, agent, "u", 100)
    assert "breaker.opened" in kinds(events)
    assert g.admit(agent, TaskView("v", PY), 102) is not None


def test_without_a_cooloff_only_an_operator_reset_closes_the_breaker() -> None:
    g = governor(POLICY.replace("cooloff_seconds: 60", "cooloff_seconds: null"))
    agent = "if://agent/bob"
    g.register(agent, Manifest(capabilities=PY, model="small"), 0)
    for n in range(3):
        _fail(g, agent, f"t{n}", n * 2)
    assert g.admit(agent, TaskView("u", PY), 10**6) is not None
    (reset,) = g.reset(agent, "if://agent/operator", 10**6)
    assert reset.payload == {"by": "if://agent/operator", "was": "open"}
    assert g.admit(agent, TaskView("u", PY), 10**6) is None


def test_an_expired_lease_counts_against_its_old_owner() -> None:
    g = governor()
    agent = "if://agent/bob"
    g.register(agent, Manifest(capabilities=PY, model="small"), 0)
    g.observe("task.claimed", "t", agent, 0, {})
    events = g.observe("task.expired", "t", None, 130, {"old_owner": agent})
    assert kinds(events) == ["reputation.updated"]
    assert g.agents[agent].consecutive_failures == 1
    assert g.agents[agent].holding == {}


# -- reputation ------------------------------------------------------------------------------


def test_reputation_follows_success_rate_and_p99_latency_against_the_slo() -> None:
    policy = parse_policy("profiles: {default: {slo: {success_rate: 0.9, p99_seconds: 100}}}")
    assert reputation([], [], policy) == 1.0
    assert reputation([False], [], policy) == pytest.approx((5 / 6) / 0.9, abs=1e-6)
    assert reputation([True] * 95 + [False] * 5, [], policy) == 1.0
    assert reputation([True] * 50 + [False] * 50, [], policy) == pytest.approx(
        (55 / 105) / 0.9, abs=1e-6
    )
    assert reputation([True] * 10, [50.0] * 9 + [400.0], policy) == pytest.approx(0.25)
    g = governor("profiles: {default: {min_reputation: 0.5, failure_threshold: 100}}")
    g.register("if://agent/flaky", Manifest(capabilities=PY), 0)
    for n in range(20):
        _fail(g, "if://agent/flaky", f"t{n}", n * 2)
    refusal = g.admit("if://agent/flaky", TaskView("u", PY), 100)
    assert refusal is not None
    assert refusal.code == "LOW_REPUTATION"
    # refused work, it could never earn its reputation back: an operator's reset gives a
    # fresh record
    (reset,) = g.reset("if://agent/flaky", "if://agent/op", 100)
    assert reset.payload["reputation_was"] < 0.5
    assert g.agents["if://agent/flaky"].reputation == 1.0
    assert g.admit("if://agent/flaky", TaskView("u", PY), 100) is None


def test_the_state_survives_a_round_trip_through_its_documents() -> None:
    g = governor()
    g.register("if://agent/alice", Manifest(capabilities=PY, model="small"), 0)
    g.register("if://agent/carol", Manifest(capabilities=PY, model="small"), 0)
    g.charge("if://agent/alice", "t", _usage(0.9), 1)
    _fail(g, "if://agent/carol", "t", 2)
    kept = {key: doc for key, doc in g.take_changes().items() if doc is not None}
    assert sorted(kept) == ["agent/if://agent/alice", "agent/if://agent/carol", "task/t"]
    g.observe("task.claimed", "u", "if://agent/carol", 5, {})
    assert g.take_changes() == {}  # a claim writes nothing: the board knows who holds what
    copy = Governor(g.policy)
    copy.restore(kept, 10)
    copy.hold("if://agent/carol", "u", 5)  # as the driver does from the board's owned tasks
    assert copy.report(10) == g.report(10)
    assert g.take_changes() == {}  # nothing changed since
    g.observe("task.completed", "t", "if://agent/alice", 11, {})
    assert list(g.take_changes()) == ["agent/if://agent/alice", "task/t"]
    assert g.take_changes() == {}


def test_a_reloaded_policy_reprices_agents_and_keeps_their_books() -> None:
    g = governor()
    g.register("if://agent/a", Manifest(capabilities=PY, model="small"), 0)
    g.charge("if://agent/a", "t", _usage(0.1), 1)
    cheaper = parse_policy("prices: {small: {usd_per_1m_in: 0.1}}", source="new.yaml")
    (loaded,) = g.reload(cheaper)
    assert loaded.payload == {"source": "new.yaml", "profile": "default"}
    assert g.agents["if://agent/a"].unit_cost == pytest.approx(0.002)
    assert g.agents["if://agent/a"].spend.usd == pytest.approx(0.1)


def test_equals_do_not_defer_to_each_other() -> None:
    g = governor()
    for name in ("a", "b"):
        g.register(f"if://agent/{name}", Manifest(capabilities=PY, model="small"), 0)
        g.seen(f"if://agent/{name}", 0)
    task = TaskView("t", PY, available_since=0)
    assert g.choose("if://agent/b", [task], 1) == task  # a ranks first by name, not better


def test_a_cancelled_trial_frees_its_owner() -> None:
    g = governor()
    agent = "if://agent/bob"
    g.register(agent, Manifest(capabilities=PY, model="small"), 0)
    g.register("if://agent/lead", Manifest(capabilities=PY, model="small"), 0)
    for n in range(3):
        _fail(g, agent, f"t{n}", n * 2)
    assert g.admit(agent, TaskView("trial", PY), 100) is None  # cooled off: half-open
    g.observe("task.claimed", "trial", agent, 100, {})  # its one trial
    assert g.agents[agent].trial == "trial"
    g.observe("task.cancelled", "trial", "if://agent/lead", 101, {"old_owner": agent})
    assert g.agents[agent].trial is None
    assert g.agents[agent].holding == {}
    assert g.admit(agent, TaskView("next", PY), 102) is None  # a new trial may start


def test_an_expired_lease_does_not_count_as_its_owner_being_alive() -> None:
    g = governor()
    g.register("if://agent/small", Manifest(capabilities=PY, model="small"), 0)
    g.register("if://agent/big", Manifest(capabilities=PY, model="big"), 0)
    g.seen("if://agent/small", 0)
    g.observe("task.claimed", "t", "if://agent/small", 0, {})
    g.observe("task.expired", "t", None, 130, {"old_owner": "if://agent/small"})
    task = TaskView("t", PY, available_since=130)
    assert g.choose("if://agent/big", [task], 131) == task  # small crashed at 0: not alive


def test_work_waits_only_for_a_cheaper_priced_agent() -> None:
    g = governor()
    g.register("if://agent/ops", Manifest(), 0)  # an operator: no price, no capability
    g.register("if://agent/cheap", Manifest(capabilities=PY, model="small"), 0)
    g.register("if://agent/peer", Manifest(capabilities=PY, model="small"), 0)
    for name in ("ops", "cheap", "peer"):
        g.seen(f"if://agent/{name}", 0)
    anything = TaskView("any", (), available_since=0)
    assert g.choose("if://agent/cheap", [anything], 1) == anything  # never waits for ops
    _fail(g, "if://agent/peer", "x", 0)  # peer's reputation falls below cheap's
    g.seen("if://agent/peer", 1)
    python = TaskView("py", PY, available_since=1)
    assert g.choose("if://agent/peer", [python], 2) == python  # same price: no waiting


def test_an_unknown_model_name_does_not_make_work_free() -> None:
    g = governor()
    g.register("if://agent/big", Manifest(capabilities=PY, model="big"), 0)
    usage = {"tokens_in": 1_000_000, "model": "mystery", "usd": 0}
    assert g.price("if://agent/big", usage) == (pytest.approx(15.0), "policy", "big")


def test_a_raised_budget_warns_again_and_a_final_failure_drops_the_task_record() -> None:
    g = governor()
    g.register("if://agent/alice", Manifest(capabilities=PY, model="small"), 0)
    assert "budget.warning" in kinds(g.charge("if://agent/alice", "t", _usage(0.85), 1))
    g.reload(parse_policy(POLICY.replace("alice: {usd: 1.0}", "alice: {usd: 10.0}")))
    assert "budget.warning" not in kinds(g.charge("if://agent/alice", "t", _usage(0.1), 2))
    assert "budget.warning" in kinds(g.charge("if://agent/alice", "t", _usage(7.5), 3))
    assert "t" in g.tasks
    g.observe(
        "task.failed", "t", "if://agent/alice", 4, {"old_owner": "if://agent/alice"}, final=True
    )
    assert "t" not in g.tasks

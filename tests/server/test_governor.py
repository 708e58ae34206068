"""The governor in a real server: who gets work, budgets, breakers, resets, reloads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infrafabric import SigningIdentity, agent_id
from infrafabric.client import Client, RemoteError
from infrafabric.protocol.keyring import KeyRole
from infrafabric.server.runner import RunningServer, open_server, run_server
from tests.harness import enrollment, signed_request

POLICY = """\
profiles:
  default:
    patience_seconds: 30
    cooloff_seconds: null
    failure_threshold: 2
    max_helpers_per_task: 2
prices:
  big: {usd_per_1m_in: 15, usd_per_1m_out: 75}
  small: {usd_per_1m_in: 0.5, usd_per_1m_out: 1.5}
budgets:
  agents:
    spender: {usd: 1.0}
"""
PY = ["code:python"]


class Governed:
    def __init__(self, server: RunningServer, admin: str, policy: Path) -> None:
        self.server, self.admin, self.policy = server, admin, policy

    @property
    def url(self) -> str:
        return self.server.url

    def enroll(
        self,
        name: str,
        capabilities: list[str] = PY,
        model: str = "small",
        *,
        role: KeyRole = KeyRole.AGENT,
        expect: int = 200,
    ) -> SigningIdentity:
        identity, document = enrollment(name, role=role, capabilities=capabilities, model=model)
        response = self.admin_post("/v1/admin/agents", json=document)
        assert response.status_code == expect, response.text
        return identity

    def admin_post(self, path: str, **options: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.admin}"}
        return httpx.post(f"{self.url}{path}", headers=headers, **options)

    def report(self) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {self.admin}"}
        document: dict[str, Any] = httpx.get(
            f"{self.url}/v1/governor/report", headers=headers
        ).json()
        return document

    def events(self, component: str = "governor") -> list[dict[str, Any]]:
        headers = {"authorization": f"Bearer {self.admin}"}
        events = httpx.get(f"{self.url}/v1/events", headers=headers).json()["events"]
        return [e for e in events if e["component"] == component]


@pytest.fixture
def governed(tmp_path: Path) -> Iterator[Governed]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    state = open_server(tmp_path / "data", synchronous="NORMAL", policy=policy)
    with run_server(state) as server:
        yield Governed(server, state.sessions.admin_token, policy)


async def _code(call: Any) -> tuple[str, int]:
    with pytest.raises(RemoteError) as refused:
        await call
    return refused.value.code, refused.value.status


def test_an_unqualified_agent_gets_no_work_and_its_claim_is_refused(governed: Governed) -> None:
    lead = governed.enroll("lead", [])
    writer = governed.enroll("writer", ["docs:write"])

    async def scenario() -> None:
        async with (
            Client.connect(governed.url, lead) as a,
            Client.connect(governed.url, writer) as w,
        ):
            await a.create_task("code", id="t", required_capabilities=PY)
            assert await w.claim_next() is None
            assert await _code(w.claim("t")) == ("NOT_QUALIFIED", 403)

    asyncio.run(scenario())
    (refused,) = [e for e in governed.events() if e["kind"] == "assignment.refused"]
    assert refused["payload"]["agent"] == writer.agent
    assert refused["task_id"] == "t"
    assert "0%" in refused["payload"]["reason"]


def test_the_cheapest_adequate_agent_gets_the_work(governed: Governed) -> None:
    big = governed.enroll("big", model="big")
    small = governed.enroll("small", model="small")

    async def scenario() -> None:
        async with Client.connect(governed.url, big) as b, Client.connect(governed.url, small) as s:
            assert await s.claim_next() is None  # small is seen, and idle
            await b.create_task("code", id="t", required_capabilities=PY)
            assert await b.claim_next() is None  # small is cheaper: the task waits for it
            claimed = await s.claim_next()
            assert claimed is not None
            assert claimed["id"] == "t"
            await b.create_task("more", id="u", required_capabilities=PY)
            assert await b.claim_next() is None  # small is busy, but alive: u waits (30 s at most)
            await s.complete("t")
            taken = await s.claim_next()
            assert taken is not None
            assert taken["id"] == "u"

    asyncio.run(scenario())
    agents = {row["agent"]: row for row in governed.report()["agents"]}
    assert agents[big.agent]["unit_cost_usd"] > agents[small.agent]["unit_cost_usd"]


def test_a_spent_budget_stops_claims_with_a_clear_reason(governed: Governed) -> None:
    spender = governed.enroll("spender", model="big")

    async def scenario() -> None:
        async with Client.connect(governed.url, spender) as agent:
            await agent.create_tasks([{"id": "a", "title": "A"}, {"id": "b", "title": "B"}])
            await agent.claim("a")
            # 50,000 tokens in at $15/1M: $0.75, 25 % of the $1 budget left
            await agent.complete("a", usage={"tokens_in": 50_000, "model": "big", "usd": 99})
            await agent.claim("b")
            await agent.complete("b", usage={"tokens_in": 20_000, "model": "big"})
            await agent.create_task("C", id="c")
            assert await _code(agent.claim("c")) == ("BUDGET_EXHAUSTED", 403)
            assert await agent.claim_next() is None

    asyncio.run(scenario())
    kinds = [e["kind"] for e in governed.events()]
    assert kinds.count("usage.charged") == 2
    assert kinds.index("budget.warning") < kinds.index("budget.exhausted")
    (charged, _) = [e for e in governed.events() if e["kind"] == "usage.charged"]
    assert charged["payload"]["usd"] == pytest.approx(0.75)  # the policy's price, not the agent's
    (row,) = governed.report()["agents"]
    assert row["spent_usd"] == pytest.approx(1.05)
    assert row["breaker"] == "open"
    board = [e for e in governed.events("board") if e["kind"] == "task.completed"]
    assert board[0]["payload"]["usage"]["usd"] == pytest.approx(0.75)  # what the witness records


def test_a_breaker_opens_after_failures_and_only_an_operator_key_resets_it(
    governed: Governed,
) -> None:
    flaky = governed.enroll("flaky")
    operator = governed.enroll("operator", [], role=KeyRole.OPERATOR)

    async def scenario() -> None:
        async with Client.connect(governed.url, flaky) as agent:
            await _fail_two_of_three(agent)
            assert await _code(agent.claim("c")) == ("BREAKER_OPEN", 403)
            assert await _code(agent.reset_breaker(flaky.agent)) == ("NOT_OPERATOR", 403)
        async with Client.connect(governed.url, operator) as op:
            assert await op.reset_breaker(flaky.agent) == {"reset": flaky.agent}
            assert await _code(op.reset_breaker(agent_id("nobody"))) == ("NOT_FOUND", 404)
        async with Client.connect(governed.url, flaky) as agent:
            assert (await agent.claim("c"))["owner"] == flaky.agent

    asyncio.run(scenario())
    kinds = [e["kind"] for e in governed.events()]
    assert "breaker.opened" in kinds
    (reset,) = [e for e in governed.events() if e["kind"] == "breaker.reset"]
    assert reset["payload"] == {"agent": flaky.agent, "by": operator.agent, "was": "open"}


def test_help_requests_invite_at_most_max_helpers_per_task(governed: Governed) -> None:
    asker = governed.enroll("asker")
    for name in ("h1", "h2", "h3", "h4"):
        governed.enroll(name)

    async def scenario() -> list[str]:
        async with Client.connect(governed.url, asker) as agent:
            await agent.create_task("A", id="a", required_capabilities=PY)
            await agent.claim("a")
            return await agent.request_help("a", PY)

    invited = asyncio.run(scenario())
    assert len(invited) == 2
    assert asker.agent not in invited


def test_a_manifest_the_policy_refuses_is_not_enrolled(governed: Governed) -> None:
    governed.policy.write_text(POLICY + "vocabulary: {strict: true}\n")
    assert governed.admin_post("/v1/admin/governor/reload").status_code == 200
    governed.enroll("odd", ["art:sculpture"], expect=422)
    headers = {"authorization": f"Bearer {governed.admin}"}
    agents = httpx.get(f"{governed.url}/v1/agents", headers=headers).json()["agents"]
    assert agents == []


def test_the_policy_reloads_and_a_bad_one_changes_nothing(governed: Governed) -> None:
    governed.enroll("a")
    governed.policy.write_text(POLICY.replace("failure_threshold: 2", "failure_threshold: 5"))
    reloaded = governed.admin_post("/v1/admin/governor/reload")
    assert reloaded.json() == {"policy": str(governed.policy), "profile": "default"}
    governed.policy.write_text(POLICY.replace("failure_threshold: 2", "failure_threshold: many"))
    refused = governed.admin_post("/v1/admin/governor/reload")
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "INVALID_POLICY"
    assert f"{governed.policy}:5: profiles.default.failure_threshold" in error["detail"]
    assert [e["kind"] for e in governed.events()].count("policy.loaded") == 1
    assert governed.report()["agents"][0]["agent"] == agent_id("a")  # books kept


def test_the_books_survive_a_restart(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    state = open_server(tmp_path / "data", synchronous="NORMAL", policy=policy)
    with run_server(state) as server:
        governed = Governed(server, state.sessions.admin_token, policy)
        spender = governed.enroll("spender", model="big")

        async def scenario() -> None:
            async with Client.connect(server.url, spender) as agent:
                await agent.create_tasks([{"id": "a", "title": "A"}, {"id": "b", "title": "B"}])
                await agent.claim("b")  # held across the restart: the board says so
                await agent.claim("a")
                await agent.fail("a", "no", usage={"tokens_in": 70_000, "model": "big"})

        asyncio.run(scenario())
        before = governed.report()
    state = open_server(tmp_path / "data", synchronous="NORMAL", policy=policy)
    with run_server(state) as server:
        after = Governed(server, state.sessions.admin_token, policy).report()
    assert after == before
    assert after["agents"][0]["spent_usd"] == pytest.approx(1.05)
    assert after["agents"][0]["tasks_failed"] == 1
    assert after["agents"][0]["holding"] == ["b"]


def test_in_audit_mode_a_forged_reset_is_refused(tmp_path: Path) -> None:
    from infrafabric.protocol.message import encode_json
    from infrafabric.protocol.verify import Mode

    state = open_server(tmp_path / "data", synchronous="NORMAL", verify_mode=Mode.AUDIT)
    with run_server(state) as server:
        governed = Governed(server, state.sessions.admin_token, tmp_path / "none.yaml")
        operator = governed.enroll("operator", [], role=KeyRole.OPERATOR)
        worker = governed.enroll("worker")
        reset = signed_request(
            operator, "if://service/governor", {"op": "reset", "agent": worker.agent}
        )
        forged = encode_json(reset).replace(b'"sequence_num":1', b'"sequence_num":2')
        refused = httpx.post(
            f"{server.url}/v1/messages", content=forged, headers={"content-type": "x"}
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "NOT_OPERATOR"
        assert [e for e in governed.events() if e["kind"] == "breaker.reset"] == []


def test_a_reloaded_policy_takes_effect(governed: Governed) -> None:
    flaky = governed.enroll("flaky")
    governed.policy.write_text(POLICY.replace("failure_threshold: 2", "failure_threshold: 5"))
    assert governed.admin_post("/v1/admin/governor/reload").status_code == 200

    async def scenario() -> None:
        async with Client.connect(governed.url, flaky) as agent:
            await _fail_two_of_three(agent)
            assert (await agent.claim("c"))["owner"] == flaky.agent  # 2 < 5: still closed

    asyncio.run(scenario())
    assert governed.report()["agents"][0]["breaker"] == "closed"


async def _fail_two_of_three(agent: Client) -> None:
    """Create tasks a, b and c; claim a and b and fail them for good (c is left)."""
    await agent.create_tasks([{"id": n, "title": n} for n in ("a", "b", "c")])
    for task in ("a", "b"):
        await agent.claim(task)
        await agent.fail(task, "crashed", retry=False)


def test_claim_next_carries_the_trace_into_the_event_log(governed: Governed) -> None:
    agent_identity = governed.enroll("tracer")

    async def scenario() -> None:
        async with Client.connect(governed.url, agent_identity) as agent:
            await agent.create_task("A", id="a")
            with Client.trace("job-9"):
                assert (await agent.claim_next()) is not None

    asyncio.run(scenario())
    (claimed,) = [e for e in governed.events("board") if e["kind"] == "task.claimed"]
    assert claimed["trace_id"] == "job-9"

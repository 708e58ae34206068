"""The agent tools, driven by the official MCP client SDK over stdio (`ifab mcp` as a
subprocess) and over Streamable HTTP (a real `ifab serve`'s `/mcp`): the same tests."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from infrafabric.client import Client
from infrafabric.keystore import Keystore
from tests.bridges.conftest import agent, data, error, http_session, lent_token
from tests.harness import PASS, Fabric

pytestmark = pytest.mark.anyio

TOOLS = {
    "whoami", "list_tasks", "get_task", "claim_next", "claim_task", "heartbeat",
    "report_progress", "complete_task", "fail_task", "report_blocker", "request_help",
    "create_task", "send_message", "read_inbox", "board_status", "witness_trace",
}  # fmt: skip


async def test_tools_are_listed_with_schemas_and_descriptions(fabric: Fabric, connect: Any) -> None:
    agent(fabric, "alice", "code:python")
    async with connect("alice") as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert len(tool.description or "") > 40, tool.name
            assert tool.input_schema["type"] == "object"
        assert tools["claim_task"].input_schema["required"] == ["task_id"]
        percent = tools["report_progress"].input_schema["properties"]["percent"]
        assert percent["enum"] == [0, 25, 50, 75, 100]
        assert tools["get_task"].annotations is not None
        assert tools["get_task"].annotations.read_only_hint is True
        me = data(await session.call_tool("whoami", {}))
        assert me["agent"] == "if://agent/alice"
        assert me["capabilities"] == ["code:python"]


async def test_a_task_claimed_progressed_and_completed(fabric: Fabric, connect: Any) -> None:
    agent(fabric, "lead")
    agent(fabric, "coder", "code:python")
    async with connect("lead") as lead, connect("coder") as coder:
        for spec in (
            {"task_id": "api", "title": "Build the API", "required_capabilities": ["code:python"]},
            {"task_id": "docs", "title": "Document it", "dependencies": ["api"]},
        ):
            data(await lead.call_tool("create_task", spec))
        assert data(await lead.call_tool("claim_next", {}))["task"] is None  # lacks code:python
        claimed = data(await coder.call_tool("claim_next", {}))["task"]
        assert (claimed["id"], claimed["state"], claimed["owner"]) == (
            "api", "claimed", "if://agent/coder"
        )  # fmt: skip
        assert claimed["lease_seconds_left"] > 60
        progressed = data(
            await coder.call_tool(
                "report_progress", {"task_id": "api", "percent": 50, "note": "routes done"}
            )
        )
        assert (progressed["task"]["state"], progressed["task"]["progress"]) == ("in_progress", 50)
        data(await coder.call_tool("heartbeat", {"task_id": "api"}))
        usage = {"tokens_in": 1200, "tokens_out": 300, "model": "local-7b"}
        done = data(
            await coder.call_tool(
                "complete_task", {"task_id": "api", "result": {"pr": 12}, "usage": usage}
            )
        )
        assert done["task"]["state"] == "completed"
        api = data(await lead.call_tool("get_task", {"task_id": "api"}))
        assert api["result"] == {"pr": 12}
        assert api["milestones"][0]["note"] == "routes done"
        status = data(await lead.call_tool("board_status", {}))
        assert status["tasks_by_state"]["completed"] == 1
        assert status["tasks_by_state"]["available"] == 1  # docs, released by api
        listed = data(await lead.call_tool("list_tasks", {"state": ["available"]}))
        assert [task["id"] for task in listed["tasks"]] == ["docs"]
        board = await lead.read_resource("infrafabric://board")
        assert "completed: 1" in board.contents[0].text  # type: ignore[union-attr]
        task = await lead.read_resource("infrafabric://task/api")
        assert "Task api: Build the API" in task.contents[0].text  # type: ignore[union-attr]
        prompt = await coder.get_prompt("swarm_worker", {"focus": "the API"})
        assert "claim_next" in prompt.messages[0].content.text  # type: ignore[union-attr]
    for _ in range(50):  # the witness appends within a second
        costed = httpx.get(
            f"{fabric.url}/v1/witness/entries",
            params={"cost": "true", "task_id": "api"},
            headers={"authorization": f"Bearer {fabric.admin_token}"},
        ).json()["entries"]
        if costed:
            break
        await asyncio.sleep(0.1)
    assert costed[0]["entry"]["cost"]["tokens_in"] == 1200
    assert costed[0]["entry"]["cost"]["model"] == "local-7b"


async def test_two_agents_contend_for_one_task_and_one_wins(fabric: Fabric, connect: Any) -> None:
    agent(fabric, "ann")
    agent(fabric, "bob")
    async with connect("ann") as ann, connect("bob") as bob:
        for round_ in range(5):
            task_id = f"prize-{round_}"
            data(await ann.call_tool("create_task", {"task_id": task_id, "title": "Prize"}))
            results = await asyncio.gather(
                ann.call_tool("claim_task", {"task_id": task_id}),
                bob.call_tool("claim_task", {"task_id": task_id}),
            )
            winners = [result for result in results if not result.is_error]
            assert len(winners) == 1
            [loser] = [result for result in results if result.is_error]
            message = error(loser)
            assert message.startswith("ILLEGAL_TRANSITION")
            assert "claim_next" in message  # what to do instead
            owner = data(await ann.call_tool("get_task", {"task_id": task_id}))["owner"]
            assert owner == data(winners[0])["task"]["owner"]


async def test_a_blocker_offers_filler_work_and_help_is_requested(
    fabric: Fabric, connect: Any
) -> None:
    agent(fabric, "worker", "code:python")
    agent(fabric, "reviewer", "review:code")
    async with connect("worker") as worker:
        data(await worker.call_tool("create_task", {"task_id": "feature", "title": "Feature"}))
        data(
            await worker.call_tool(
                "create_task", {"task_id": "tidy", "title": "Tidy imports", "filler": True}
            )
        )
        data(await worker.call_tool("claim_task", {"task_id": "feature"}))
        blocked = data(
            await worker.call_tool(
                "report_blocker",
                {
                    "task_id": "feature",
                    "kind": "waiting_on_review",
                    "description": "needs a reviewer",
                    "needed_capabilities": ["review:code"],
                    "urgency": "high",
                },
            )
        )
        assert blocked["task"]["state"] == "blocked"
        assert blocked["filler"]["id"] == "tidy"
        filler = data(await worker.call_tool("claim_task", {"task_id": "tidy"}))["task"]
        assert filler["owner"] == "if://agent/worker"
        detail = data(await worker.call_tool("get_task", {"task_id": "feature"}))
        assert detail["blocker"]["type"] == "waiting_on_review"
        helped = data(
            await worker.call_tool(
                "request_help", {"task_id": "feature", "needed_capabilities": ["review:code"]}
            )
        )
        assert helped["invited"] == ["if://agent/reviewer"]
    async with connect("reviewer") as reviewer:  # connected after the request: it waited
        invitation = data(await reviewer.call_tool("read_inbox", {}))["messages"]
        assert [(m["from"], m["kind"], m["content"]) for m in invitation] == [
            (
                "if://agent/worker",
                "request",
                {"op": "help", "task_id": "feature", "needed": ["review:code"]},
            )
        ]


async def test_messages_reach_the_inbox_and_leave_it_once_read(
    fabric: Fabric, connect: Any
) -> None:
    agent(fabric, "ann")
    agent(fabric, "bob")
    async with connect("ann") as ann, connect("bob") as bob:
        sent = data(await ann.call_tool("send_message", {"to": "bob", "text": "review #12?"}))
        assert sent["delivered"][0]["receiver"] == "if://agent/bob"
        peek = data(await bob.call_tool("read_inbox", {"acknowledge": False}))
        assert [m["content"]["text"] for m in peek["messages"]] == ["review #12?"]
        read = data(await bob.call_tool("read_inbox", {}))
        assert read["messages"][0]["from"] == "if://agent/ann"
        # still waiting: they leave the inbox at the next read, once this answer is out
        # (acknowledged before it was sent, a crash in between lost them)
        assert len(await inbox_of(fabric, "bob")) == 1
        assert data(await bob.call_tool("read_inbox", {}))["count"] == 0
        assert await inbox_of(fabric, "bob") == []


async def inbox_of(fabric: Fabric, name: str) -> list[Any]:
    """What waits in ``name``'s inbox, read with the agent's own key through the SDK."""
    identity = Keystore(fabric.home).unlock(name, PASS)
    async with Client.connect(fabric.url, identity) as client:
        return await client.inbox()


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("claim_task", {}, "task_id"),
        ("claim_task", {"task_id": "../etc"}, "task_id"),
        ("report_progress", {"task_id": "t", "percent": 33}, "percent"),
        ("create_task", {"title": ""}, "title"),
        ("create_task", {"title": "x", "priority": 101}, "priority"),
        ("list_tasks", {"state": ["sleeping"]}, "state"),
        ("send_message", {"to": "bob"}, "text"),
        ("send_message", {"to": "no such/agent", "text": "hi"}, "INVALID_ARGUMENT"),
        ("complete_task", {"task_id": "t", "usage": {"tokens": 5}}, "usage"),
        ("fail_task", {"task_id": "t", "reason": "x", "usage": {"usd": -1}}, "usage"),
    ],
)
async def test_bad_arguments_are_tool_errors_not_crashes(
    fabric: Fabric, connect: Any, tool: str, arguments: dict[str, Any], expected: str
) -> None:
    agent(fabric, "alice")
    async with connect("alice") as session:
        assert expected in error(await session.call_tool(tool, arguments))
        assert data(await session.call_tool("whoami", {}))["agent"] == "if://agent/alice"


async def test_refusals_carry_the_reason_code_and_what_to_do(fabric: Fabric, connect: Any) -> None:
    agent(fabric, "ann")
    agent(fabric, "bob")
    async with connect("ann") as ann, connect("bob") as bob:
        missing = error(await ann.call_tool("get_task", {"task_id": "nope"}))
        assert missing.startswith("NOT_FOUND")
        assert "list_tasks" in missing
        data(await ann.call_tool("create_task", {"task_id": "t1", "title": "One"}))
        data(await ann.call_tool("claim_task", {"task_id": "t1"}))
        stolen = error(await bob.call_tool("complete_task", {"task_id": "t1"}))
        assert stolen.startswith("NOT_OWNER")
        assert "claim_next" in stolen
        assert data(await bob.call_tool("claim_next", {}))["task"] is None  # bob goes on


async def test_witness_trace_follows_a_traced_job(fabric: Fabric, connect: Any) -> None:
    from infrafabric.client import Client
    from infrafabric.keystore import Keystore

    agent(fabric, "alice")
    identity = Keystore(fabric.home).unlock("alice", fabric.env()["IFAB_PASSPHRASE"])
    async with Client.connect(fabric.url, identity) as sdk:
        with Client.trace("job-7"):
            await sdk.create_task("Traced", id="traced")
            await sdk.claim("traced")
            await sdk.complete("traced", {"ok": True})
    async with connect("alice") as session:
        for _ in range(50):  # the witness appends within a second
            trace = data(await session.call_tool("witness_trace", {"trace_id": "job-7"}))
            if len(trace["entries"]) >= 3:
                break
            await asyncio.sleep(0.1)
        events = [entry["event"] for entry in trace["entries"]]
        assert events[:3] == ["task.created", "task.claimed", "task.completed"]


async def test_what_one_client_was_shown_is_not_removed_by_another_of_the_agent(
    fabric: Fabric,
) -> None:
    """Remembered by agent, one MCP client's read_inbox removed what another had been
    shown, and that one's answer may never have reached it."""
    agent(fabric, "ann")
    agent(fabric, "bob")
    async with http_session(fabric.url, await lent_token(fabric, "ann")) as ann:
        data(await ann.call_tool("send_message", {"to": "bob", "text": "one"}))
    first, second = await lent_token(fabric, "bob"), await lent_token(fabric, "bob")
    async with http_session(fabric.url, first) as one, http_session(fabric.url, second) as two:
        assert data(await one.call_tool("read_inbox", {}))["count"] == 1
        assert data(await two.call_tool("read_inbox", {}))["count"] == 1  # still there
        assert data(await one.call_tool("read_inbox", {}))["count"] == 0  # one's, removed

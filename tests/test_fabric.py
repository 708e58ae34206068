"""The embedded mode: the SDK against a fabric in this process, no server."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from infrafabric.board.rules import BoardConfig
from infrafabric.client import RemoteError
from infrafabric.fabric import Fabric


def test_an_embedded_fabric_speaks_the_same_api(tmp_path: Path) -> None:
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        alice = fabric.enroll("alice", ["code:python"])
        bob = fabric.enroll("bob")

        async def scenario() -> None:
            async with fabric.connect(alice) as agent, fabric.connect(bob) as other:
                await agent.create_tasks(
                    [{"id": "a", "title": "A"}, {"id": "b", "title": "B", "dependencies": ["a"]}]
                )
                async with other.stream(["if://topic/board/task/*"]) as frames:
                    task = await agent.claim_next()
                    assert task is not None
                    assert task["id"] == "a"
                    await agent.complete("a", {"ok": 1})
                    kinds = []
                    async for frame in frames:
                        kinds.append(frame.data["event"]["kind"])
                        if "task.released" in kinds:
                            break
                assert kinds == ["task.claimed", "task.completed", "task.released"]
                assert (await other.task("b"))["state"] == "available"
                await agent.send(bob.agent, "inform", {"hi": 1})
                [(position, message)] = await other.inbox()
                assert message.content == {"hi": 1}
                assert await other.ack(position)
                with pytest.raises(RemoteError) as refused:
                    await other.complete("b", {})
                assert refused.value.code == "NOT_OWNER"

        asyncio.run(scenario())


def test_many_embedded_agents_claim_every_task_once(tmp_path: Path) -> None:
    with Fabric.open(
        tmp_path / "board", synchronous="NORMAL", config=BoardConfig(lease_seconds=3600)
    ) as fabric:
        agents = [fabric.enroll(f"agent-{i:02d}") for i in range(50)]
        completed: Counter[str] = Counter()

        async def worker(identity: object) -> None:
            async with fabric.connect(identity) as agent:  # type: ignore[arg-type]
                while (task := await agent.claim_next()) is not None:
                    await agent.complete(task["id"])
                    completed[task["id"]] += 1

        async def scenario() -> None:
            async with fabric.connect(agents[0]) as planner:
                await planner.create_tasks([{"id": f"t{i:03d}", "title": "x"} for i in range(500)])
            await asyncio.gather(*(worker(identity) for identity in agents))

        asyncio.run(scenario())
        assert len(completed) == 500
        assert set(completed.values()) == {1}


def test_request_reply_and_its_timeout(tmp_path: Path) -> None:
    with Fabric.open(tmp_path / "board", synchronous="NORMAL") as fabric:
        alice, bob, silent = fabric.enroll("alice"), fabric.enroll("bob"), fabric.enroll("silent")

        async def responder(ready: asyncio.Event) -> None:
            async with fabric.connect(bob) as agent, agent.stream() as frames:
                ready.set()
                async for frame in frames:
                    question = frame.message
                    assert question is not None
                    await agent.reply(question, {"answer": question.content["x"] * 2})
                    await agent.ack(frame.position)  # type: ignore[arg-type]
                    return

        async def scenario() -> None:
            ready = asyncio.Event()
            serving = asyncio.create_task(responder(ready))
            await ready.wait()
            async with fabric.connect(alice) as agent:
                answer = await agent.request(bob.agent, {"x": 21}, timeout=10)
                assert answer.content == {"answer": 42}
                assert answer.sender == bob.agent
                with pytest.raises(TimeoutError):
                    await agent.request(silent.agent, {"x": 1}, timeout=0.5)
            await serving

        asyncio.run(scenario())

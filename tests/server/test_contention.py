"""100 agents, each a real SDK client over HTTP, race over 1,000 tasks on one server."""

from __future__ import annotations

import asyncio
from collections import Counter

from infrafabric.client import Client
from tests.server.conftest import Fabric

AGENTS = 100
TASKS = 1000


def test_every_task_is_claimed_and_completed_exactly_once(fabric: Fabric) -> None:
    identities = [fabric.enroll(f"worker-{i:03d}") for i in range(AGENTS)]
    planner = fabric.enroll("planner")
    completed_by: Counter[str] = Counter()

    async def worker(identity: object) -> None:
        async with Client.connect(fabric.url, identity) as agent:  # type: ignore[arg-type]
            while (task := await agent.claim_next()) is not None:
                await agent.complete(task["id"], {"by": agent.agent})
                completed_by[task["id"]] += 1

    async def scenario() -> None:
        async with Client.connect(fabric.url, planner) as agent:
            for start in range(0, TASKS, 250):
                await agent.create_tasks(
                    [{"id": f"t{i:04d}", "title": "x"} for i in range(start, start + 250)]
                )
        await asyncio.gather(*(worker(identity) for identity in identities))

    asyncio.run(scenario())
    assert sorted(completed_by) == [f"t{i:04d}" for i in range(TASKS)]
    assert set(completed_by.values()) == {1}
    events = fabric.admin_get("/v1/events?limit=5000").json()["events"]
    kinds = Counter(event["kind"] for event in events)
    assert kinds["task.claimed"] == TASKS
    assert kinds["task.completed"] == TASKS

"""Crashes, for real: kill -9 an agent mid-task, kill -9 the server mid-stream."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infrafabric import Outbox, SigningIdentity, encode_json
from infrafabric.client import Client, RemoteError
from tests.harness import Fabric
from tests.harness import enroll as enroll_over_http

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from infrafabric import SigningIdentity
    from infrafabric.client import Client

    async def main():
        identity = SigningIdentity.from_seed("if://agent/crasher", bytes.fromhex(sys.stdin.readline().strip()))
        async with Client.connect(sys.argv[1], identity) as agent:
            task = await agent.claim_next()
            print("claimed", task["id"], flush=True)
            await asyncio.sleep(3600)  # working... until kill -9

    asyncio.run(main())
    """
)


@pytest.fixture
def fabric(tmp_path: Path) -> Iterator[Fabric]:
    running = Fabric(tmp_path)
    running.start("--lease", "2")
    yield running
    running.kill()


def enroll(fabric: Fabric, name: str) -> SigningIdentity:
    return enroll_over_http(fabric.url, fabric.admin_token, name)


def test_an_agent_killed_mid_task_loses_it_to_another_after_its_lease(fabric: Fabric) -> None:
    crasher, rescuer = enroll(fabric, "crasher"), enroll(fabric, "rescuer")

    async def setup() -> None:
        async with Client.connect(fabric.url, rescuer) as agent:
            await agent.create_task("the only task", id="only")

    asyncio.run(setup())
    with subprocess.Popen(
        [sys.executable, "-c", WORKER, fabric.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as worker:
        assert worker.stdin is not None
        assert worker.stdout is not None
        worker.stdin.write(crasher.seed.hex() + "\n")
        worker.stdin.flush()
        assert worker.stdout.readline().split() == ["claimed", "only"]
        worker.kill()  # SIGKILL: no goodbye, no give_up
        assert worker.wait(timeout=10) == -signal.SIGKILL

    async def take_over() -> dict[str, object]:
        async with Client.connect(fabric.url, rescuer) as agent:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                task = await agent.claim_next()
                if task is not None:
                    return task
                await asyncio.sleep(0.2)
        raise AssertionError("the task never came back")

    started = time.monotonic()
    task = asyncio.run(take_over())
    assert time.monotonic() - started < 10  # a 2 s lease, a 1 s sweep
    assert task["id"] == "only"
    assert task["attempts"] == 1
    assert task["last_owner"] == crasher.agent


TASKS = 6000  # more than one second of claims and completions: the kill lands mid-stream


def test_acknowledged_operations_survive_kill_9_of_the_server(tmp_path: Path) -> None:
    fabric = Fabric(tmp_path)
    fabric.start()
    worker = enroll(fabric, "worker")
    acknowledged: list[tuple[str, str]] = []

    async def stream() -> None:
        async with Client.connect(fabric.url, worker) as agent:
            for start in range(0, TASKS, 1000):
                await agent.create_tasks(
                    [{"id": f"t{i:05d}", "title": "x"} for i in range(start, start + 1000)]
                )
            killer = threading.Timer(1.0, fabric.kill, args=(signal.SIGKILL,))
            killer.start()

            async def work_until_the_server_dies() -> None:
                while True:
                    task = await agent.claim_next()
                    assert task is not None, "the stream ended before the kill"
                    acknowledged.append(("claimed", task["id"]))
                    await agent.complete(task["id"], {"n": len(acknowledged)})
                    acknowledged.append(("completed", task["id"]))

            with pytest.raises(RemoteError) as died:  # the server dies under us, mid-stream
                await work_until_the_server_dies()
            assert died.value.code == "DISCONNECTED"
            killer.join()

    asyncio.run(stream())
    assert acknowledged, "the server died before anything was acknowledged"
    fabric.start()  # same data directory
    token = (fabric.data / "admin.token").read_text().strip()
    tasks: dict[str, Any] = {}
    after = ""
    while after is not None:  # the board a page at a time
        page = httpx.get(
            f"{fabric.url}/v1/tasks",
            params={"after": after, "limit": 5000},
            headers={"authorization": f"Bearer {token}"},
        ).json()
        tasks.update((t["id"], t) for t in page["tasks"])
        after = page["next"]
    assert len(tasks) == TASKS
    for operation, task_id in acknowledged:
        state = tasks[task_id]["state"]
        assert state in ({"claimed", "completed"} if operation == "claimed" else {"completed"}), (
            task_id,
            state,
        )
    events: list[dict[str, Any]] = []
    while page := httpx.get(
        f"{fabric.url}/v1/events",
        params={"after": events[-1]["seq"] if events else 0, "limit": 5000},
        headers={"authorization": f"Bearer {token}"},
    ).json()["events"]:
        events += page
    completed_events = [e["task_id"] for e in events if e["kind"] == "task.completed"]
    assert len(completed_events) == len(set(completed_events))  # each completion once
    assert {tid for tid, t in tasks.items() if t["state"] == "completed"} == set(completed_events)
    fabric.kill()


def test_the_sdk_signs_in_again_after_a_server_restart(tmp_path: Path) -> None:
    fabric = Fabric(tmp_path)
    fabric.start()
    worker = enroll(fabric, "worker")

    async def scenario() -> None:
        async with Client.connect(fabric.url, worker) as agent:
            await agent.create_task("survives", id="s")
            fabric.kill(signal.SIGKILL)
            fabric.start()  # tokens were in the old process's memory
            assert (await agent.task("s"))["title"] == "survives"

    asyncio.run(scenario())
    fabric.kill()


def test_a_message_acknowledged_before_a_kill_9_cannot_be_replayed_after(tmp_path: Path) -> None:
    fabric = Fabric(tmp_path)
    fabric.start()
    worker = enroll(fabric, "worker")
    outbox = Outbox(worker)

    def post(wire: bytes) -> httpx.Response:
        return httpx.post(
            f"{fabric.url}/v1/messages", content=wire, headers={"content-type": "application/json"}
        )

    def create(title: str) -> bytes:
        return encode_json(
            outbox.message(
                now=time.time(),
                performative="request",
                receiver="if://service/board",
                content={"op": "create", "tasks": [{"title": title}]},  # no id: a replay adds one
            )
        )

    first, second = create("first"), create("second")
    assert post(second).status_code == 200  # sequence 2 before 1: the window holds 1 open
    assert post(first).status_code == 200
    fabric.kill(signal.SIGKILL)
    fabric.start()  # same data directory, a new process with an empty memory
    for wire in (first, second):
        refused = post(wire)
        assert (refused.status_code, refused.json()["error"]["code"]) == (409, "REPLAY")
    token = (fabric.data / "admin.token").read_text().strip()
    tasks = httpx.get(f"{fabric.url}/v1/tasks", headers={"authorization": f"Bearer {token}"})
    assert sorted(t["title"] for t in tasks.json()["tasks"]) == ["first", "second"]
    assert post(create("third")).status_code == 200  # the sender carries on where it was
    fabric.kill()

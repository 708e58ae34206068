"""The demo swarm behind ``make run``: a real server and agents in separate processes.

The launcher opens a fresh data directory, starts the server, enrolls six agents with
their own Ed25519 identities and capabilities, loads a sample board (dependencies, a
filler task, work that needs help) and starts each agent as its own process
(``python -m infrafabric.swarm AGENT URL``, its private key passed on stdin). One agent
is scripted to crash (``os._exit``) in the middle of a task: its lease runs out and
another agent takes the task over. The launcher follows the board's events on the
WebSocket and prints them as they happen, then a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import websockets.asyncio.client

from infrafabric.board.rules import BoardConfig
from infrafabric.client import Client, RemoteError
from infrafabric.protocol.identity import SigningIdentity
from infrafabric.protocol.keyring import new_key_record
from infrafabric.protocol.message import agent_id
from infrafabric.server.runner import RunningServer, open_server, run_server

__all__ = ["AGENTS", "BOARD", "SwarmReport", "run_swarm", "start_order"]

#: A short lease so the crash is visible within seconds.
DEMO_LEASE: Final = 3.0


@dataclass(frozen=True)
class AgentPlan:
    name: str
    capabilities: tuple[str, ...]
    role: str  # "worker", "crasher" (dies mid-task once), "blocker" (blocks, takes a filler)
    model: str  # priced by DEMO_POLICY: the governor prefers the cheaper of equals


AGENTS: Final = (
    AgentPlan("planner", ("plan:roadmap", "write:docs"), "worker", "large"),
    AgentPlan("coder-1", ("code:python", "test:pytest"), "worker", "small"),
    AgentPlan("coder-2", ("code:python", "test:pytest"), "crasher", "small"),
    AgentPlan("reviewer", ("review:code", "write:docs"), "blocker", "large"),
    AgentPlan("tester", ("test:pytest", "code:python"), "worker", "medium"),
    AgentPlan("writer", ("write:docs",), "worker", "small"),
)

#: The governor's policy for the demo: a price table, and patience on the demo's
#: timescale (a task waits at most 2 s for a cheaper idle agent).
DEMO_POLICY: Final = """\
profiles:
  default:
    patience_seconds: 2
prices:
  small: {usd_per_1m_in: 0.15, usd_per_1m_out: 0.6}
  medium: {usd_per_1m_in: 3, usd_per_1m_out: 15}
  large: {usd_per_1m_in: 15, usd_per_1m_out: 75}
"""

BOARD: Final = [
    {"id": "spike", "title": "Spike the parser", "priority": 85, "required_capabilities": ["code:python"]},
    {"id": "roadmap", "title": "Agree the roadmap", "priority": 90, "required_capabilities": ["plan:roadmap"]},
    {"id": "api", "title": "Build the API", "priority": 80, "required_capabilities": ["code:python"], "dependencies": ["roadmap"]},
    {"id": "storage", "title": "Build the storage layer", "priority": 80, "required_capabilities": ["code:python"], "dependencies": ["roadmap"]},
    {"id": "review", "title": "Review the API", "priority": 70, "required_capabilities": ["review:code"], "dependencies": ["api"]},
    {"id": "tests", "title": "Write integration tests", "priority": 60, "required_capabilities": ["test:pytest"], "dependencies": ["api", "storage"]},
    {"id": "docs", "title": "Write the user guide", "priority": 50, "required_capabilities": ["write:docs"], "dependencies": ["review"]},
    {"id": "release", "title": "Cut the release", "priority": 40, "required_capabilities": ["plan:roadmap"], "dependencies": ["docs", "tests"]},
    {"id": "changelog", "title": "Proofread the changelog", "priority": 30, "filler": True, "required_capabilities": ["review:code"]},
]  # fmt: skip


@dataclass
class SwarmReport:
    url: str
    data_dir: Path
    events: Counter[str]
    states: Counter[str]
    seconds: float


def run_swarm(
    *,
    port: int = 8765,
    data_dir: Path | None = None,
    show: Callable[[dict[str, Any]], None] = lambda event: None,
    keep_serving: Callable[[RunningServer], None] = lambda server: None,
    timeout: float = 120.0,
) -> SwarmReport:
    """Run the demo to the end (every task finished, or ``timeout``); ``show`` sees each
    board event live; ``keep_serving`` runs while the server is still up afterwards."""
    directory = data_dir or Path(tempfile.mkdtemp(prefix="ifab-run-"))
    directory.mkdir(parents=True, exist_ok=True)
    policy = directory / "policy.yaml"
    policy.write_text(DEMO_POLICY)
    state = open_server(
        directory,
        synchronous="NORMAL",
        config=BoardConfig(lease_seconds=DEMO_LEASE),
        policy=policy,
    )
    started = time.monotonic()
    with run_server(state, port=_port(port)) as server:
        identities = {
            plan.name: _enroll(server, state.sessions.admin_token, plan) for plan in AGENTS
        }
        events: Counter[str] = Counter()
        asyncio.run(_load_board(server.url, identities["planner"]))
        with _agents(server.url, identities):
            asyncio.run(_follow(server.url, state.sessions.admin_token, events, show, timeout))
        states = Counter(task.state.value for task in state.service.store.tasks())
        report = SwarmReport(server.url, directory, events, states, time.monotonic() - started)
        keep_serving(server)
    return report


def _port(wanted: int) -> int:
    """``wanted`` if it is free, else any free port (the demo should never fail on that)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", wanted))
        except OSError:
            return 0
    return wanted


def _enroll(server: RunningServer, admin_token: str, plan: AgentPlan) -> SigningIdentity:
    identity = SigningIdentity.generate(agent_id(plan.name))
    record = new_key_record(identity.agent, identity.public_key, version=1, now=time.time() - 60)
    document = {
        "keys": {"format": "infrafabric-keyring/1", "keys": [msgspec.to_builtins(record)]},
        "capabilities": list(plan.capabilities),
        "description": plan.role,
        "model": plan.model,
    }
    response = httpx.post(
        f"{server.url}/v1/admin/agents",
        json=document,
        headers={"authorization": f"Bearer {admin_token}"},
    )
    response.raise_for_status()
    return identity


def start_order() -> list[AgentPlan]:
    """Every agent of the demo, each to be its own process: the crasher first."""
    return sorted(AGENTS, key=lambda plan: plan.role != "crasher")


@contextlib.contextmanager
def _agents(
    url: str, identities: dict[str, SigningIdentity]
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start the agent processes; the crasher first, alone until it holds a task, so that
    its crash (and the takeover after its lease) happens in every run."""
    processes = []
    try:
        for plan in start_order():
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
                [sys.executable, "-m", "infrafabric.swarm", plan.name, plan.role, url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            processes.append(process)
            assert process.stdin is not None
            process.stdin.write(identities[plan.name].seed.hex().encode() + b"\n")
            process.stdin.close()
            if plan.role == "crasher":
                assert process.stdout is not None
                if select.select([process.stdout], [], [], 30)[0]:  # never wait forever
                    process.stdout.readline()  # "claimed <task>" (or nothing, once it is gone)
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()


async def _follow(
    url: str,
    admin_token: str,
    events: Counter[str],
    show: Callable[[dict[str, Any]], None],
    timeout: float,
) -> None:
    ws_url = url.replace("http://", "ws://", 1)
    deadline = time.monotonic() + timeout
    async with websockets.asyncio.client.connect(f"{ws_url}/v1/ws?token={admin_token}") as socket:
        await socket.send(json.dumps({"type": "subscribe", "topics": ["if://topic/board/**"]}))
        await socket.recv()  # "subscribed"
        finished: set[str] = set()
        while len(finished) < len(BOARD) and time.monotonic() < deadline:
            try:
                frame = json.loads(await asyncio.wait_for(socket.recv(), timeout=1.0))
            except TimeoutError:
                continue
            event = frame.get("event")
            if event is None:
                continue
            events[event["kind"]] += 1
            show(event)
            if event["state"] in ("completed", "failed", "dead", "cancelled"):
                finished.add(event["task_id"])


async def _load_board(url: str, identity: SigningIdentity) -> None:
    """The sample board, created in the planner's name before any agent starts (its own
    process then works the planning tasks, as a second client of its identity)."""
    async with Client.connect(url, identity) as agent:
        await agent.create_tasks(BOARD)


async def _work(agent: Client, role: str) -> None:
    rng = random.Random(agent.agent)  # noqa: S311 - pacing of a demo
    while True:
        task = await agent.claim_next()
        if task is None:
            await asyncio.sleep(0.3)
            continue
        try:
            await _do(agent, task, role, rng)
        except RemoteError:
            continue  # e.g. the lease ran out while this agent dawdled: the board moved on


async def _do(agent: Client, task: dict[str, Any], role: str, rng: random.Random) -> None:
    print("claimed", task["id"], flush=True)  # the launcher waits for the crasher's first claim
    for percent in (25, 50, 75):
        await asyncio.sleep(rng.uniform(0.2, 0.5))
        await agent.progress(task["id"], percent, f"{percent}% of {task['title'].lower()}")
        if role == "crasher" and percent == 50:
            os._exit(1)  # a crash at its first task: no goodbye, no give_up; the lease will run out
    if role == "blocker" and task["id"] == "review":
        _, filler = await agent.block(
            task["id"], "waiting_on_access", "needs read access to the repo"
        )
        if filler is not None:
            with contextlib.suppress(RemoteError):  # someone idle may have taken it first
                await agent.claim(filler["id"])
                await agent.complete(filler["id"], {"fixed": 3, "done_by": agent.agent})
        await agent.unblock(task["id"])
    if task["id"] == "tests":
        await agent.request_help(task["id"], ["test:pytest"])
    usage = {"tokens_in": rng.randint(2_000, 30_000), "tokens_out": rng.randint(500, 6_000)}
    await agent.complete(task["id"], {"done_by": agent.agent}, usage=usage)


def agent_main() -> None:
    """Entry point of one agent process: ``python -m infrafabric.swarm NAME ROLE URL``."""
    name, role, url = sys.argv[1:4]
    identity = SigningIdentity.from_seed(
        agent_id(name), bytes.fromhex(sys.stdin.readline().strip())
    )

    async def main() -> None:
        async with Client.connect(url, identity) as agent:
            await _work(agent, role)

    with contextlib.suppress(KeyboardInterrupt, httpx.HTTPError, RemoteError):
        asyncio.run(main())


if __name__ == "__main__":
    agent_main()

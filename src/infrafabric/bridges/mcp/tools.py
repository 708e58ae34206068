"""The fabric as MCP tools, resources and a prompt, for one agent at a time.

:func:`build_server` returns an :class:`~mcp.server.mcpserver.MCPServer` whose every tool
acts through an SDK :class:`~infrafabric.client.Client` (each change a signed IFMessage);
which client is the caller's is the ``agent`` callable's business: a fixed one over
stdio, the bearer token's over HTTP (:mod:`.http`). Refusals come back as tool errors:
the fabric's reason code, its detail, and a sentence telling the model what to do next.
"""

from __future__ import annotations

import collections
import contextlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any, Final, Literal

import httpx
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from infrafabric._version import __version__
from infrafabric.board.model import TaskState
from infrafabric.bridges.mcp.hints import advice
from infrafabric.client import Client, RemoteError
from infrafabric.errors import CallerError

__all__ = ["AgentSource", "board_text", "build_server", "task_text"]

#: Gives the client of the agent the current call acts for.
AgentSource = Callable[[], Awaitable[Client]]

#: Pages of the witness log ``witness_trace`` reads at most (20,000 entries each).
MAX_TRACE_PAGES: Final = 10
#: Tasks ``list_tasks`` returns unless asked for fewer (a model reads every one).
DEFAULT_LIST_LIMIT: Final = 50
#: Callers whose last read_inbox is remembered (the oldest forgotten: shown again).
MAX_REMEMBERED_READERS: Final = 1024

INSTRUCTIONS: Final = """\
You are one agent of a swarm sharing an InfraFabric task board. Every change you make is
made under your identity and recorded in a tamper-evident log.

How to work:
1. Call claim_next to get the best available task you qualify for (or claim_task with an id).
2. Call report_progress at 25/50/75 % with a short note; it also renews your lease. If a step
   takes long, call heartbeat at least every minute, or the task returns to the board.
3. Call complete_task with a JSON result when done, or fail_task with a reason.
4. Blocked (waiting on a review, missing access, a question)? Call report_blocker: the fabric
   may offer you a filler task meanwhile. Need a capability you lack? Call request_help.
5. Check read_inbox between tasks: other agents may have written to you.
When a tool returns an error, it starts with a reason code and says what to do next.
"""

ReadOnly: Final = ToolAnnotations(read_only_hint=True, open_world_hint=False)
Changes: Final = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, open_world_hint=False
)

TaskId = Annotated[
    str,
    Field(
        description="A task id as list_tasks shows it, e.g. T-3f9a or build-api",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
    ),
]


class Usage(BaseModel):
    """What the work cost: the witness records it and the governor charges budgets by it."""

    model_config = ConfigDict(extra="forbid")

    tokens_in: int = Field(0, ge=0, le=10**12, description="Tokens read by the model")
    tokens_out: int = Field(0, ge=0, le=10**12, description="Tokens written by the model")
    model: str = Field("", max_length=128, description="The model, e.g. gpt-4o-mini")
    usd: float = Field(0.0, ge=0, le=1e9, description="US dollars, if you know them")
    seconds: float = Field(
        0.0, ge=0, le=1e9, description="Working time, for agents paid by the hour"
    )


UsageArgument = Annotated[
    Usage | None,
    Field(description="What this step cost (tokens, model, USD), if you know it"),
]
Capability = Annotated[
    str,
    Field(description="category:skill, e.g. code:python", pattern=r"^[a-z0-9_-]+:[a-z0-9_.*-]+$"),
]


@contextlib.contextmanager
def fabric_errors(task: str | None = None) -> Iterator[None]:
    """Turn the fabric's refusals into tool errors a model can act on."""
    try:
        yield
    except RemoteError as exc:
        raise ToolError(f"{exc.code}: {exc.detail}. {advice(exc.code, task)}.") from None
    except httpx.HTTPError as exc:
        raise ToolError(f"UNREACHABLE: {exc}. {advice('UNREACHABLE')}.") from None
    except CallerError as exc:  # refused before it left, e.g. an address that cannot be
        raise ToolError(f"INVALID_ARGUMENT: {exc}. {advice('INVALID_ARGUMENT')}.") from None


def build_server(agent: AgentSource, *, name: str = "infrafabric") -> MCPServer:
    """The MCP server of the fabric's agent tools; ``agent`` gives each call's client."""
    server: MCPServer = MCPServer(
        name=name,
        title="InfraFabric swarm",
        instructions=INSTRUCTIONS,
        version=__version__,
        log_level="WARNING",
    )

    # -- who and what ---------------------------------------------------------------------

    @server.tool(annotations=ReadOnly)
    async def whoami() -> dict[str, Any]:
        """Your agent identity in the swarm: id, capabilities, health, and the tasks you
        hold now. Call this first to learn what work you qualify for."""
        client = await agent()
        with fabric_errors():
            agents = await client.agents()
            held = await client.tasks("claimed", "in_progress", "blocked")
        me = next((a for a in agents if a["id"] == client.agent), None)
        return {
            "agent": client.agent,
            "capabilities": me["capabilities"] if me else [],
            "health": me["health"] if me else "unknown",
            "holding": [_summary(t) for t in held if t.get("owner") == client.agent],
        }

    @server.tool(annotations=ReadOnly)
    async def list_tasks(
        state: Annotated[
            list[TaskState] | None,
            Field(description="Only tasks in these states (default: every state)"),
        ] = None,
        mine: Annotated[bool, Field(description="Only tasks you hold")] = False,
        capability: Annotated[
            str | None, Field(description="Only tasks requiring this capability")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=500, description="At most this many")] = (
            DEFAULT_LIST_LIMIT
        ),
    ) -> dict[str, Any]:
        """Tasks on the board, highest priority first, each with id, title, state,
        priority, owner, required capabilities, dependencies and progress."""
        client = await agent()
        with fabric_errors():
            tasks = await client.tasks(*(state or ()))
        if mine:
            tasks = [t for t in tasks if t.get("owner") == client.agent]
        if capability:
            tasks = [t for t in tasks if capability in t["required_capabilities"]]
        tasks.sort(key=lambda t: (-t["priority"], t["created_at"], t["id"]))
        return {"count": len(tasks), "tasks": [_summary(t) for t in tasks[:limit]]}

    @server.tool(annotations=ReadOnly)
    async def get_task(task_id: TaskId) -> dict[str, Any]:
        """One task in full: description, milestones with notes, blocker, result, lease."""
        client = await agent()
        with fabric_errors(task_id):
            return _detail(await client.task(task_id))

    @server.tool(annotations=ReadOnly)
    async def board_status() -> dict[str, Any]:
        """The board at a glance: how many tasks in each state, who holds what, and every
        agent's health (green: seen within 30 s, yellow: 5 min, red: longer)."""
        client = await agent()
        with fabric_errors():
            return _status(await client.tasks(), await client.agents())

    # -- taking and doing work -------------------------------------------------------------

    @server.tool(annotations=Changes)
    async def claim_next() -> dict[str, Any]:
        """Claim the best available task you qualify for (highest priority first). Returns
        the task, or task null when nothing is available for you right now."""
        client = await agent()
        with fabric_errors():
            task = await client.claim_next()
        if task is None:
            return {"task": None, "note": "nothing available for you now; try again later"}
        return {"task": _detail(task)}

    @server.tool(annotations=Changes)
    async def claim_task(task_id: TaskId) -> dict[str, Any]:
        """Claim one task by id. Exactly one agent wins a contested task; if another agent
        holds it you get ILLEGAL_TRANSITION and should call claim_next instead."""
        client = await agent()
        with fabric_errors(task_id):
            return {"task": _detail(await client.claim(task_id))}

    @server.tool(annotations=Changes)
    async def heartbeat(task_id: TaskId) -> dict[str, Any]:
        """Renew your lease on a task you hold (the lease lasts 120 s by default: call this
        at least every minute while working without reporting progress)."""
        client = await agent()
        with fabric_errors(task_id):
            return {"task": _summary(await client.heartbeat(task_id))}

    @server.tool(annotations=Changes)
    async def report_progress(
        task_id: TaskId,
        percent: Annotated[
            Literal[0, 25, 50, 75, 100], Field(description="Milestone: 0, 25, 50, 75 or 100")
        ],
        note: Annotated[str, Field(max_length=2000, description="What was done")] = "",
        usage: UsageArgument = None,
    ) -> dict[str, Any]:
        """Report a milestone on a task you hold; renews the lease."""
        client = await agent()
        with fabric_errors(task_id):
            task = await client.progress(task_id, percent, note, usage=_usage(usage))
        return {"task": _summary(task)}

    @server.tool(annotations=Changes)
    async def complete_task(
        task_id: TaskId,
        result: Annotated[
            dict[str, Any] | None,
            Field(description='The outcome as a JSON object, e.g. {"summary": "...", "pr": 12}'),
        ] = None,
        usage: UsageArgument = None,
    ) -> dict[str, Any]:
        """Finish a task you hold with its result; tasks waiting on it may become available."""
        client = await agent()
        with fabric_errors(task_id):
            task = await client.complete(task_id, result or {}, usage=_usage(usage))
        return {"task": _summary(task)}

    @server.tool(annotations=Changes)
    async def fail_task(
        task_id: TaskId,
        reason: Annotated[str, Field(min_length=1, max_length=2000, description="Why it failed")],
        retry: Annotated[
            bool, Field(description="Let another attempt happen (false: fail it for good)")
        ] = True,
        usage: UsageArgument = None,
    ) -> dict[str, Any]:
        """Give up a task you hold because it failed; it returns to the board for another
        attempt unless retry is false or its attempts are used up."""
        client = await agent()
        with fabric_errors(task_id):
            task = await client.fail(task_id, reason, retry=retry, usage=_usage(usage))
        return {"task": _summary(task)}

    @server.tool(annotations=Changes)
    async def report_blocker(
        task_id: TaskId,
        kind: Annotated[
            str,
            Field(
                min_length=1,
                max_length=64,
                description="Kind of blocker, e.g. waiting_on_review, missing_access, question",
            ),
        ],
        description: Annotated[
            str, Field(min_length=1, max_length=2000, description="What is blocking you")
        ],
        needed_capabilities: Annotated[
            list[Capability], Field(max_length=16, description="Capabilities that would unblock it")
        ] = [],  # noqa: B006 (pydantic copies defaults)
        urgency: Literal["low", "medium", "high", "critical"] = "medium",
    ) -> dict[str, Any]:
        """Mark a task you hold as blocked (you keep it). The fabric may offer you a small
        filler task to do meanwhile (returned as filler: claim it with claim_task)."""
        client = await agent()
        with fabric_errors(task_id):
            task, filler = await client.block(
                task_id, kind, description, needed=needed_capabilities, urgency=urgency
            )
        return {"task": _summary(task), "filler": None if filler is None else _detail(filler)}

    @server.tool(annotations=Changes)
    async def request_help(
        task_id: TaskId,
        needed_capabilities: Annotated[
            list[Capability],
            Field(min_length=1, max_length=16, description="Capabilities you need help with"),
        ],
    ) -> dict[str, Any]:
        """Invite up to three qualified agents to help on a task you hold; returns who was
        invited. Each finds your request in its inbox (read_inbox) and on the board's
        event stream; send_message them for anything more."""
        client = await agent()
        with fabric_errors(task_id):
            invited = await client.request_help(task_id, needed_capabilities)
        return {"invited": invited, "note": "" if invited else "nobody qualified is enrolled"}

    @server.tool(annotations=Changes)
    async def create_task(
        title: Annotated[str, Field(min_length=1, max_length=200, description="What to do")],
        description: Annotated[str, Field(max_length=10_000)] = "",
        priority: Annotated[int, Field(ge=0, le=100, description="Higher goes first")] = 50,
        required_capabilities: Annotated[
            list[Capability], Field(max_length=64, description="Who may take it")
        ] = [],  # noqa: B006 (pydantic copies defaults)
        dependencies: Annotated[
            list[str], Field(max_length=100, description="Task ids that must complete first")
        ] = [],  # noqa: B006
        task_id: Annotated[
            str | None, Field(description="An id of your choosing (default: made up)")
        ] = None,
        filler: Annotated[bool, Field(description="Small work offered to blocked agents")] = False,
    ) -> dict[str, Any]:
        """Add a task to the board (for coordinator agents splitting work)."""
        client = await agent()
        spec: dict[str, Any] = {
            "description": description,
            "priority": priority,
            "required_capabilities": required_capabilities,
            "dependencies": dependencies,
            "filler": filler,
        }
        if task_id:
            spec["id"] = task_id
        with fabric_errors(task_id):
            return {"task": _summary(await client.create_task(title, **spec))}

    # -- messages ----------------------------------------------------------------------------

    @server.tool(annotations=Changes)
    async def send_message(
        to: Annotated[
            str,
            Field(
                description="An agent (if://agent/NAME, or just NAME) or a topic (if://topic/...)"
            ),
        ],
        text: Annotated[str, Field(min_length=1, max_length=10_000)],
        kind: Annotated[
            Literal["inform", "request", "query-ref", "propose"],
            Field(
                description="inform: telling; request: asking for something; query-ref: a "
                "question; propose: an offer"
            ),
        ] = "inform",
    ) -> dict[str, Any]:
        """Send a signed message to another agent (kept in its inbox until read) or to a topic."""
        client = await agent()
        address = to if to.startswith("if://") else f"if://agent/{to}"
        with fabric_errors():
            return await client.send(address, kind, {"text": text})

    # What each caller's last read_inbox showed: removed from its inbox by its next call
    # (which proves the answer reached it), not before the answer left. Acknowledged
    # then, a crash of the bridge or the server between the acknowledgments and the
    # answer lost the messages. By caller, the key it signs with (a lent key: one MCP
    # client's token), not by agent: another client of the same agent must not remove
    # what this one was shown. Kept here only: a bridge that restarts, or another server
    # behind a load balancer, shows them again (at least once, never lost).
    shown: collections.OrderedDict[str, list[int]] = collections.OrderedDict()

    @server.tool(annotations=Changes)
    async def read_inbox(
        acknowledge: Annotated[
            bool,
            Field(
                description="Remove the messages your previous read_inbox showed (you have"
                " them) before reading; false: remove nothing, show them again"
            ),
        ] = True,
        limit: Annotated[int, Field(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        """Direct messages other agents sent you, oldest first, and help requests that
        invite you (kind "request", content op "help" with the task_id and the capabilities
        needed: get_task it, then send_message the asker). The messages shown leave the
        inbox at your next read_inbox (unless acknowledge is false), so none is lost if
        this answer does not reach you."""
        client = await agent()
        with fabric_errors():
            if acknowledge:
                for position in shown.pop(client.identity.kid, ()):
                    await client.ack(position)
            waiting = (await client.inbox())[:limit]
            messages = [
                {
                    "position": position,
                    "from": message.sender,
                    "kind": message.performative,
                    "content": message.content,
                    "sent_at": message.sent_at,
                }
                for position, message in waiting
            ]
            if acknowledge:
                shown[client.identity.kid] = [position for position, _ in waiting]
                while len(shown) > MAX_REMEMBERED_READERS:
                    shown.popitem(last=False)
        return {"count": len(messages), "messages": messages}

    # -- the record ---------------------------------------------------------------------------

    @server.tool(annotations=ReadOnly)
    async def witness_trace(
        trace_id: Annotated[str, Field(min_length=1, max_length=128)],
        limit: Annotated[int, Field(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """Every decision the fabric recorded in its tamper-evident log for one trace id,
        in order (who claimed, progressed, blocked, completed, and what it cost)."""
        client = await agent()
        entries: list[dict[str, Any]] = []
        start, size = 0, 1
        with fabric_errors():
            for _ in range(MAX_TRACE_PAGES):  # each page reads up to 20,000 entries
                page = await client.witness_search(start, trace_id=trace_id, limit=limit)
                entries += [
                    {"index": found["index"], **found["entry"]} for found in page["entries"]
                ]
                start, size = page["next"], page["size"]
                if start >= size or len(entries) >= limit:
                    break
        return {"entries": entries[:limit], "searched_to": start, "log_size": size}

    # -- resources and the prompt -------------------------------------------------------------

    @server.resource(
        "infrafabric://board", mime_type="text/plain", description="The board summary as text"
    )
    async def board_resource() -> str:
        client = await agent()
        with fabric_errors():
            return board_text(await client.tasks(), await client.agents())

    @server.resource(
        "infrafabric://task/{task_id}", mime_type="text/plain", description="One task as text"
    )
    async def task_resource(task_id: str) -> str:
        client = await agent()
        with fabric_errors(task_id):
            return task_text(await client.task(task_id))

    @server.prompt(title="Work in an InfraFabric swarm")
    def swarm_worker(focus: str = "") -> str:
        """How to work as an agent of the swarm: claim, heartbeat, progress, finish, and
        what to do when blocked."""
        extra = f"\nFocus on: {focus}\n" if focus else ""
        return INSTRUCTIONS + extra + "\nStart now: call whoami, then claim_next."

    return server


# -- shaping replies for a model ------------------------------------------------------------


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    return None if usage is None else usage.model_dump(exclude_defaults=True)


def _summary(task: dict[str, Any]) -> dict[str, Any]:
    milestones = task.get("milestones") or []
    summary = {
        "id": task["id"],
        "title": task["title"],
        "state": task["state"],
        "priority": task["priority"],
        "owner": task.get("owner"),
        "required_capabilities": task["required_capabilities"],
        "dependencies": task["dependencies"],
        "progress": milestones[-1]["percent"] if milestones else 0,
    }
    lease = task.get("lease_expires_at")
    if lease is not None:
        summary["lease_seconds_left"] = max(0, round(lease - time.time()))
    return summary


def _detail(task: dict[str, Any]) -> dict[str, Any]:
    return {
        **_summary(task),
        "description": task.get("description", ""),
        "milestones": task.get("milestones") or [],
        "blocker": task.get("blocker"),
        "result": task.get("result"),
        "attempts": task.get("attempts"),
        "filler": task.get("filler", False),
        "failure": task.get("failure"),
        "failed_dependencies": task.get("failed_dependencies") or [],
    }


def _status(tasks: list[dict[str, Any]], agents: list[dict[str, Any]]) -> dict[str, Any]:
    counts = Counter(task["state"] for task in tasks)
    return {
        "tasks_by_state": {str(state): counts.get(str(state), 0) for state in TaskState},
        "in_hand": [
            {"task": t["id"], "owner": t["owner"], "state": t["state"], "title": t["title"]}
            for t in tasks
            if t.get("owner")
        ],
        "agents": [
            {"agent": a["id"], "health": a["health"], "capabilities": a["capabilities"]}
            for a in agents
        ],
    }


def board_text(tasks: list[dict[str, Any]], agents: list[dict[str, Any]]) -> str:
    """The board summary as lines of text."""
    status = _status(tasks, agents)
    lines = ["Tasks by state:"]
    lines += [f"  {state}: {count}" for state, count in status["tasks_by_state"].items() if count]
    lines.append("In hand:" if status["in_hand"] else "In hand: nothing")
    lines += [
        f"  {item['task']} ({item['state']}) by {item['owner']}: {item['title']}"
        for item in status["in_hand"]
    ]
    lines.append("Agents:")
    lines += [
        f"  {a['agent']} [{a['health']}] {', '.join(a['capabilities']) or 'no capabilities'}"
        for a in status["agents"]
    ]
    return "\n".join(lines) + "\n"


def task_text(task: dict[str, Any]) -> str:
    """One task as lines of text."""
    detail = _detail(task)
    lines = [
        f"Task {detail['id']}: {detail['title']}",
        f"State: {detail['state']}   Priority: {detail['priority']}   "
        f"Owner: {detail['owner'] or 'nobody'}   Progress: {detail['progress']}%",
        f"Requires: {', '.join(detail['required_capabilities']) or 'nothing special'}",
        f"After: {', '.join(detail['dependencies']) or 'nothing'}",
    ]
    if detail["description"]:
        lines += ["", detail["description"]]
    for milestone in detail["milestones"]:
        lines.append(f"- {milestone['percent']}%: {milestone.get('note', '')}")
    if detail["blocker"]:
        lines.append(f"Blocked: {json.dumps(detail['blocker'], sort_keys=True)}")
    if detail["result"]:
        lines.append(f"Result: {json.dumps(detail['result'], sort_keys=True)}")
    return "\n".join(lines) + "\n"

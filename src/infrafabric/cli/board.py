"""``ifab task``, ``ifab agent``, ``ifab status``, ``ifab tail``: the board from a shell.

Agent commands act as a local identity (``--as NAME``, see ``ifab identity``) through
the SDK: each change is a signed message. Operator commands (enrolling agents, reading
the board without an identity) use the admin token (``--admin-token`` or
``$IFAB_ADMIN_TOKEN``, or the ``admin.token`` file of a local data directory).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import msgspec
import typer
import websockets.asyncio.client
import yaml
from rich.console import Console
from rich.table import Table

from infrafabric.board.model import MILESTONES, TaskState, Urgency
from infrafabric.cli.common import (
    EXIT_USAGE,
    fail,
    keystore,
    passphrase,
    print_table,
    reported_errors,
)
from infrafabric.client import Client, RemoteError, next_page, path_segment, tasks_query
from infrafabric.errors import CallerError
from infrafabric.server.runner import ENV_ADMIN_TOKEN, default_data_dir, header_safe

task_app = typer.Typer(
    help="Tasks on a fabric server: add, import, list, show, claim, progress, done, fail,"
    " block, help.",
    no_args_is_help=True,
)
agent_app = typer.Typer(help="Agents of a fabric server: enroll, list.", no_args_is_help=True)

ENV_SERVER = "IFAB_SERVER"
DEFAULT_SERVER = "http://127.0.0.1:8765"

Server = Annotated[str, typer.Option("--server", envvar=ENV_SERVER, help="The fabric's URL.")]
As = Annotated[str, typer.Option("--as", help="Identity to act as (see `ifab identity list`).")]
AsOptional = Annotated[
    str | None, typer.Option("--as", help="Read as this identity instead of the operator.")
]
AdminToken = Annotated[
    str | None,
    typer.Option(
        "--admin-token", envvar=ENV_ADMIN_TOKEN, help="Operator token (default: local data dir's)."
    ),
]
T = TypeVar("T")


def _run(action: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with reported_errors():
        try:
            return asyncio.run(action())
        except RemoteError as exc:
            fail(f"{exc.code}: {exc.detail}")
        except httpx.HTTPError as exc:
            fail(f"cannot reach the fabric: {exc}")


def _as_agent(server: str, name: str, work: Callable[[Client], Awaitable[T]]) -> T:
    store = keystore()

    async def go() -> T:
        identity = store.unlock(name, passphrase(f"Passphrase for {name}: "))
        async with Client.connect(server, identity) as agent:
            return await work(agent)

    return _run(go)


def _admin_token(token: str | None) -> str:
    if token:
        try:
            return header_safe(token, f"--admin-token (or {ENV_ADMIN_TOKEN})")
        except CallerError as exc:
            fail(str(exc))
    path = default_data_dir() / "admin.token"
    try:
        return path.read_text().strip()
    except OSError:
        fail(
            f"no operator token: pass --admin-token, set {ENV_ADMIN_TOKEN}, or run on the server ({path})"
        )


def _admin_request(
    server: str, token: str | None, method: str, path: str, **options: Any
) -> dict[str, Any]:
    """An operator's request (admin token); an error reply ends the command with its code."""
    try:
        response = httpx.request(
            method,
            f"{server}{path}",
            headers={"authorization": f"Bearer {_admin_token(token)}"},
            **options,
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach the fabric at {server}: {exc}")
    return _answer(response)


def _answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON object a fabric answers with; a refusal ends the command with its code.
    An answer that is not one (an error page from a proxy in front of the fabric, or
    something else listening at that address) ends it with the status and the start of
    the text."""
    try:
        document = response.json()
    except ValueError:  # (json.JSONDecodeError, UnicodeDecodeError)
        text = response.text.strip()[:200] or "(empty)"
        fail(f"HTTP {response.status_code} from {response.url.path}, not JSON: {text}")
    error = document.get("error") if isinstance(document, dict) else None
    if response.status_code != 200 or not isinstance(document, dict):
        if isinstance(error, dict):
            fail(f"{error.get('code', 'ERROR')}: {error.get('detail', '')}")
        fail(f"HTTP {response.status_code} from {response.url.path}: unexpected answer")
    return document


def _read(
    server: str, name: str | None, token: str | None, path: str, **params: Any
) -> dict[str, Any]:
    if name is None:
        return _admin_request(server, token, "GET", path, params=params)

    async def get(agent: Client) -> dict[str, Any]:
        return await agent._get(path, params=params)

    return _as_agent(server, name, get)


def _read_tasks(
    server: str, name: str | None, token: str | None, states: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Every task (or those in ``states``): ``GET /v1/tasks`` answers a page at a time."""
    if name is not None:

        async def get(agent: Client) -> list[dict[str, Any]]:
            return await agent.tasks(*states)

        return _as_agent(server, name, get)
    tasks: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = _admin_request(server, token, "GET", "/v1/tasks", params=tasks_query(states, after))
        tasks += page["tasks"]
        try:
            after = next_page(after, page)
        except RemoteError as exc:
            fail(f"{exc.code}: {exc.detail}")
        if after is None:
            return tasks


def _show(task: dict[str, Any] | None) -> None:
    if task is None:
        typer.echo("nothing to claim")
        return
    owner = f" owner={task['owner']}" if task.get("owner") else ""
    typer.echo(f"{task['id']}  {task['state']}  p{task['priority']}{owner}  {task['title']}")


# -- tasks -------------------------------------------------------------------------------


@task_app.command("add")
def task_add(
    title: Annotated[str, typer.Argument(help="What to do.")],
    agent: As,
    server: Server = DEFAULT_SERVER,
    task_id: Annotated[str | None, typer.Option("--id", help="Task id (default: made up).")] = None,
    priority: Annotated[int, typer.Option("--priority", min=0, max=100)] = 50,
    needs: Annotated[list[str], typer.Option("--needs", help="Required capability (repeat).")] = [],  # noqa: B006
    after: Annotated[
        list[str], typer.Option("--after", help="A task that must complete first (repeat).")
    ] = [],  # noqa: B006
    filler: Annotated[
        bool, typer.Option("--filler", help="Small work for blocked agents.")
    ] = False,
    description: Annotated[str, typer.Option("--description")] = "",
) -> None:
    """Add one task."""
    spec: dict[str, Any] = {
        "title": title,
        "priority": priority,
        "required_capabilities": needs,
        "dependencies": after,
        "filler": filler,
        "description": description,
    }
    if task_id:
        spec["id"] = task_id
    _show(_as_agent(server, agent, lambda client: client.create_task(**spec)))


@task_app.command("import")
def task_import(
    path: Annotated[
        Path, typer.Argument(help="YAML board: a list `tasks:` of {id, title, needs, after, ...}.")
    ],
    agent: As,
    server: Server = DEFAULT_SERVER,
) -> None:
    """Create every task of a YAML board at once (dependencies may point within the file)."""
    specs = load_board(path)
    created = _as_agent(server, agent, lambda client: client.create_tasks(specs))
    typer.echo(f"imported {len(created)} tasks from {path}")


def load_board(path: Path) -> list[dict[str, Any]]:
    """Read a YAML board into task specs; fails with the file and entry at fault."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        fail(f"{path}: {exc}")
    if not isinstance(document, dict) or not isinstance(document.get("tasks"), list):
        fail(f"{path}: expected a mapping with a list `tasks:`")
    renames: dict[str, str] = {"needs": "required_capabilities", "after": "dependencies"}
    specs = []
    for index, entry in enumerate(document["tasks"], start=1):
        if not isinstance(entry, dict) or "title" not in entry:
            fail(f"{path}: task #{index} needs at least a title")
        for short, field in renames.items():
            if short in entry and field in entry:  # one would silently replace the other
                fail(f"{path}: task #{index} gives both {short} and {field}; keep one")
        specs.append({renames.get(str(key), str(key)): value for key, value in entry.items()})
    return specs


@task_app.command("list")
def task_list(
    server: Server = DEFAULT_SERVER,
    state: Annotated[
        list[TaskState],
        typer.Option(
            "--state",
            metavar="STATE",
            help="Only this state (repeat): waiting, available, claimed, in_progress,"
            " blocked, completed, failed, cancelled or dead.",
        ),
    ] = [],  # noqa: B006
    agent: AsOptional = None,
    admin_token: AdminToken = None,
) -> None:
    """List tasks (as an identity with --as, else as the operator)."""
    states = [s.value for s in state]  # (an unknown state is a usage error, exit 2)
    tasks = _read_tasks(server, agent, admin_token, states)
    rows = [
        (t["id"], t["state"], str(t["priority"]), t.get("owner") or "", t["title"][:60])
        for t in tasks
    ]
    print_table(("id", "state", "priority", "owner", "title"), rows)


@task_app.command("show")
def task_show(
    task_id: str,
    server: Server = DEFAULT_SERVER,
    agent: AsOptional = None,
    admin_token: AdminToken = None,
) -> None:
    """Show one task as JSON."""
    task = _read(server, agent, admin_token, f"/v1/tasks/{path_segment(task_id)}")["task"]
    typer.echo(json.dumps(task, indent=2, sort_keys=True))


@task_app.command("claim")
def task_claim(
    agent: As,
    task_id: Annotated[
        str | None, typer.Argument(help="Task to claim (default: the best one for you).")
    ] = None,
    server: Server = DEFAULT_SERVER,
) -> None:
    """Claim a task; without an id, the best available task your capabilities fit."""
    _show(
        _as_agent(
            server, agent, lambda client: client.claim(task_id) if task_id else client.claim_next()
        )
    )


@task_app.command("progress")
def task_progress(
    task_id: str,
    percent: Annotated[int, typer.Argument(help="0, 25, 50, 75 or 100.")],
    agent: As,
    note: Annotated[str, typer.Option("--note")] = "",
    server: Server = DEFAULT_SERVER,
) -> None:
    """Report a milestone (renews the lease)."""
    if percent not in MILESTONES:
        raise typer.BadParameter(f"one of {', '.join(map(str, MILESTONES))}", param_hint="PERCENT")
    _show(_as_agent(server, agent, lambda client: client.progress(task_id, percent, note)))


@task_app.command("done")
def task_done(
    task_id: str,
    agent: As,
    result: Annotated[str, typer.Option("--result", help="Result as a JSON object.")] = "{}",
    server: Server = DEFAULT_SERVER,
) -> None:
    """Complete a task you own."""
    try:
        outcome = json.loads(result)
    except ValueError as exc:
        fail(f"--result is not JSON: {exc}", 2)
    if not isinstance(outcome, dict):
        fail("--result must be a JSON object", 2)
    _show(_as_agent(server, agent, lambda client: client.complete(task_id, outcome)))


@task_app.command("fail")
def task_fail(
    task_id: str,
    reason: str,
    agent: As,
    final: Annotated[
        bool, typer.Option("--final", help="Do not retry: the task fails for good.")
    ] = False,
    server: Server = DEFAULT_SERVER,
) -> None:
    """Fail a task you own (retried unless --final)."""
    _show(_as_agent(server, agent, lambda client: client.fail(task_id, reason, retry=not final)))


@task_app.command("block")
def task_block(
    task_id: str,
    agent: As,
    kind: Annotated[str, typer.Option("--type", help="Kind of blocker, e.g. waiting_on_review.")],
    description: Annotated[str, typer.Option("--description")],
    needs: Annotated[
        list[str], typer.Option("--needs", help="Capability that would unblock it.")
    ] = [],  # noqa: B006
    urgency: Annotated[
        Urgency, typer.Option("--urgency", help="How soon it must be unblocked.")
    ] = Urgency.MEDIUM,
    server: Server = DEFAULT_SERVER,
) -> None:
    """Report a blocker; prints the filler task offered meanwhile, if any."""
    task, filler = _as_agent(
        server,
        agent,
        lambda client: client.block(
            task_id, kind, description, needed=needs, urgency=urgency.value
        ),
    )
    _show(task)
    if filler:
        typer.echo("filler offered:")
        _show(filler)


@task_app.command("help")
def task_help(
    task_id: str,
    agent: As,
    needs: Annotated[list[str], typer.Option("--needs", help="Capability wanted (repeat).")],
    server: Server = DEFAULT_SERVER,
) -> None:
    """Ask qualified agents for help on a task you own; prints who was invited."""
    invited = _as_agent(server, agent, lambda client: client.request_help(task_id, needs))
    typer.echo("invited: " + (", ".join(invited) or "nobody qualified"))


# -- agents ------------------------------------------------------------------------------


@agent_app.command("enroll")
def agent_enroll(
    name: Annotated[
        str, typer.Argument(help="Local identity to enroll (its public keys are sent).")
    ],
    capabilities: Annotated[
        list[str], typer.Option("--cap", help="A capability, category:skill (repeat).")
    ] = [],  # noqa: B006
    description: Annotated[str, typer.Option("--description")] = "",
    model: Annotated[
        str, typer.Option("--model", help="Its model (priced by the policy's price table).")
    ] = "",
    usd_per_1m_in: Annotated[
        float | None, typer.Option("--usd-per-1m-in", min=0, help="Its own price per 1M tokens in.")
    ] = None,
    usd_per_1m_out: Annotated[
        float | None, typer.Option("--usd-per-1m-out", min=0, help="Per 1M tokens out.")
    ] = None,
    usd_per_hour: Annotated[
        float | None, typer.Option("--usd-per-hour", min=0, help="Or per hour of work.")
    ] = None,
    swarm: Annotated[
        str | None, typer.Option("--swarm", help="Its swarm (default: the policy's listing).")
    ] = None,
    server: Server = DEFAULT_SERVER,
    admin_token: AdminToken = None,
) -> None:
    """Enroll a local identity in the fabric with its capability manifest (operator)."""
    store = keystore()
    with reported_errors():
        info = store.info(name)
        keys = store.load_keyring().to_file(info.agent)
    document: dict[str, Any] = {
        "keys": msgspec.to_builtins(keys),
        "capabilities": capabilities,
        "description": description,
        "model": model,
        "swarm": swarm,
    }
    prices = {
        "usd_per_1m_in": usd_per_1m_in,
        "usd_per_1m_out": usd_per_1m_out,
        "usd_per_hour": usd_per_hour,
    }
    if any(value is not None for value in prices.values()):
        document["price"] = {name: value for name, value in prices.items() if value is not None}
    _admin_request(server, admin_token, "POST", "/v1/admin/agents", json=document)
    typer.echo(f"enrolled {info.agent} with {', '.join(capabilities) or 'no capabilities'}")


@agent_app.command("list")
def agent_list(
    server: Server = DEFAULT_SERVER, agent: AsOptional = None, admin_token: AdminToken = None
) -> None:
    """List enrolled agents with their health: green, yellow or red by how long ago each
    was last heard from, against the server's thresholds (``ifab serve --healthy-within``
    and ``--alive-within``: 30 s and 5 min unless set)."""
    agents = _read(server, agent, admin_token, "/v1/agents")["agents"]
    rows = [(a["id"], a["health"], ", ".join(a["capabilities"])) for a in agents]
    print_table(("agent", "health", "capabilities"), rows)


# -- watching ----------------------------------------------------------------------------


def status(
    server: Server = DEFAULT_SERVER, agent: AsOptional = None, admin_token: AdminToken = None
) -> None:
    """The board at a glance: tasks by state, who holds what, agents' health."""
    tasks = _read_tasks(server, agent, admin_token)
    agents = _read(server, agent, admin_token, "/v1/agents")["agents"]
    console = Console(highlight=False, soft_wrap=True)
    counts = Counter(task["state"] for task in tasks)
    summary = Table("state", "tasks", title=f"Board at {server}")
    for task_state in TaskState:
        summary.add_row(str(task_state), str(counts.get(str(task_state), 0)))
    console.print(summary)
    working = Table("task", "state", "owner", "progress", "title", title="Work in hand")
    for task in tasks:
        if task.get("owner"):
            percent = task["milestones"][-1]["percent"] if task["milestones"] else 0
            working.add_row(
                task["id"], task["state"], task["owner"], f"{percent}%", task["title"][:50]
            )
    console.print(working)
    crew = Table("agent", "health", "capabilities", title="Agents")
    for record in agents:
        colour = {"green": "green", "yellow": "yellow"}.get(record["health"], "red")
        crew.add_row(
            record["id"], f"[{colour}]{record['health']}[/]", ", ".join(record["capabilities"])
        )
    console.print(crew)


def tail(
    server: Server = DEFAULT_SERVER,
    topic: Annotated[
        list[str] | None,
        typer.Option("--topic", help="Topic pattern (repeat; default if://topic/board/**)."),
    ] = None,
    count: Annotated[
        int, typer.Option("--count", min=0, help="Stop after this many events (0: never).")
    ] = 0,
    seconds: Annotated[
        float, typer.Option("--seconds", min=0, help="Stop after this long (0: never).")
    ] = 0,
    admin_token: AdminToken = None,
) -> None:
    """Follow events live (board events by default) as one JSON line each."""
    token = _admin_token(admin_token)
    ws_url = server.replace("http://", "ws://", 1).replace("https://", "wss://", 1)

    async def follow() -> None:
        deadline = time.monotonic() + seconds if seconds else None
        seen = 0
        # (close_timeout: Ctrl-C ends tail at once, not after a closing handshake that
        # a busy server may answer late; the server copes with a dropped follower)
        async with websockets.asyncio.client.connect(
            f"{ws_url}/v1/ws?token={token}", close_timeout=1
        ) as socket:
            await socket.send(
                json.dumps({"type": "subscribe", "topics": topic or ["if://topic/board/**"]})
            )
            while count == 0 or seen < count:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    text = await asyncio.wait_for(socket.recv(), timeout=remaining)
                except TimeoutError:
                    return
                frame = json.loads(text)
                if frame.get("type") == "error":  # the answer to the subscribe frame
                    error = frame.get("error") or {}
                    fail(f"{error.get('code')}: {error.get('detail')}", EXIT_USAGE)
                if frame.get("type") == "event":
                    typer.echo(
                        json.dumps(frame.get("event") or frame.get("message"), sort_keys=True)
                    )
                    seen += 1

    try:
        asyncio.run(follow())
    except (OSError, websockets.exceptions.WebSocketException) as exc:
        fail(f"cannot follow {server}: {exc}")
    except KeyboardInterrupt:
        pass

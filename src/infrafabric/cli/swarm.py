"""``ifab swarm``: the main job of ``make run``: a server and a demo swarm you can watch."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from infrafabric.cli.common import reported_errors
from infrafabric.server.runner import RunningServer
from infrafabric.swarm import AGENTS, BOARD, run_swarm

_COLOURS = {
    "task.claimed": "cyan",
    "task.completed": "green",
    "task.expired": "red",
    "task.blocked": "yellow",
    "filler.offered": "magenta",
    "help.requested": "magenta",
    "task.released": "blue",
}


def swarm(
    port: Annotated[
        int,
        typer.Option(
            "--port", min=0, max=65535, help="Port for the server (falls back to any free one)."
        ),
    ] = 8765,
    data: Annotated[
        Path | None, typer.Option("--data", help="Data directory (default: a fresh temporary one).")
    ] = None,
    exit_after: Annotated[
        bool, typer.Option("--exit", help="Stop the server once the board is done.")
    ] = False,
) -> None:
    """Start a server and a swarm of agent processes on a sample board; watch it live.

    One agent crashes mid-task on purpose; its lease runs out and another takes over. A
    blocked agent is offered filler work; a tester asks for help. The server keeps
    running afterwards (Ctrl-C stops it) so you can point real agents at it.
    """
    console = Console(highlight=False, soft_wrap=True)
    console.print(
        f"[bold]InfraFabric[/]: a server on embedded SQLite, {len(AGENTS)} agents (each its own process and "
        f"Ed25519 identity), {len(BOARD)} tasks with dependencies.\n"
    )

    def show(event: dict[str, Any]) -> None:
        colour = _COLOURS.get(event["kind"], "white")
        actor = (event.get("actor") or "").removeprefix("if://agent/")
        detail = _detail(event)
        console.print(f"[{colour}]{event['kind']:<22}[/] {event['task_id']:<9} {actor:<9} {detail}")

    def keep_serving(server: RunningServer) -> None:
        console.print(
            f"\nThe server is still running at [bold]{server.url}[/] (data in {report_dir()})."
        )
        console.print(
            f"Watch it in a browser at [bold]{server.url}/[/] (sign in with admin.token from the "
            "data directory). See docs/server.md to connect agents, docs/agents.md for MCP clients."
        )
        # the demo's data directory is not the default one the CLI reads its token from
        console.print(
            f"To enroll an agent of yours: [bold]IFAB_SERVER={server.url} "
            f"IFAB_DATA={report_dir()} ifab agent enroll NAME --cap CATEGORY:SKILL[/]"
        )
        if exit_after:
            return
        console.print("Ctrl-C to stop.")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()

    directory: list[Path] = []

    def report_dir() -> Path:
        return directory[0] if directory else Path("?")

    if data is not None:
        directory.append(data)
    with reported_errors():  # e.g. an $IFAB_ADMIN_TOKEN no header can carry
        report = run_swarm(
            port=port,
            data_dir=data,
            show=show,
            keep_serving=_capture(directory, keep_serving, console),
        )
    if not directory:
        directory.append(report.data_dir)


def _capture(directory: list[Path], keep_serving: Any, console: Console) -> Any:
    def wrapped(server: RunningServer) -> None:
        tasks = server.state.service.store.tasks()
        if not directory:
            directory.append(server.state.keyring_dir.parent)
        table = Table("task", "state", "attempts", "done by", title="\nSummary")
        for task in tasks:
            done_by = (task.result or {}).get("done_by", "")
            table.add_row(
                task.id,
                task.state.value,
                str(task.attempts),
                str(done_by).removeprefix("if://agent/"),
            )
        console.print(table)
        governor = server.state.service.governor
        if governor is not None:
            costs = Table(
                "agent",
                "model",
                "spent",
                "reputation",
                "breaker",
                title="\nCost (the governor's books)",
            )
            for row in governor.report()["agents"]:
                costs.add_row(
                    row["agent"].removeprefix("if://agent/"),
                    row["model"],
                    f"${row['spent_usd']:.4f}",
                    f"{row['reputation']:.2f}",
                    row["breaker"],
                )
            console.print(costs)
        keep_serving(server)

    return wrapped


def _detail(event: dict[str, Any]) -> str:
    payload = event.get("payload", {})
    kind = event["kind"]
    if kind == "task.progress":
        return f"{payload.get('percent')}%"
    if kind == "task.expired":
        return f"lease ran out; attempt {payload.get('attempts')} of {payload.get('old_owner', '').removeprefix('if://agent/')}"
    if kind == "filler.offered":
        return f"offered to {payload.get('offered_to', '').removeprefix('if://agent/')} while blocked on {payload.get('blocked_task')}"
    if kind == "help.requested":
        return "invited " + ", ".join(
            i.removeprefix("if://agent/") for i in payload.get("invited", [])
        )
    if kind == "task.blocked":
        return str(payload.get("blocker", {}).get("description", ""))
    if kind == "task.released":
        return f"after {payload.get('after')}"
    return ""

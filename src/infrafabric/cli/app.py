"""The ``ifab`` command: the root of every subcommand."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from infrafabric._version import __version__
from infrafabric.cli import (
    backup,
    board,
    governor,
    identity,
    keyring,
    mcp,
    mesh,
    message,
    serve,
    swarm,
    witness,
)
from infrafabric.demo import DemoEvent, run_demo

app = typer.Typer(
    name="ifab",
    help=(
        "InfraFabric: a coordination fabric for swarms of AI agents.\n\n"
        "Keys live under $IFAB_HOME (default: your config dir); passphrases come from "
        "$IFAB_PASSPHRASE or a terminal prompt."
    ),
    epilog="Exit status: 0 success; 1 refused (rejected message, wrong passphrase, bad input); 2 usage error.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(identity.app, name="identity")
app.add_typer(message.app, name="message")
app.add_typer(keyring.app, name="keyring")
app.add_typer(board.task_app, name="task")
app.add_typer(board.agent_app, name="agent")
app.add_typer(witness.app, name="witness")
app.add_typer(governor.app, name="governor")
app.add_typer(mcp.app, name="mcp")
app.add_typer(mesh.app, name="mesh")
app.command("serve")(serve.serve)
app.command("swarm")(swarm.swarm)
app.command("status")(board.status)
app.command("tail")(board.tail)
app.command("backup")(backup.backup)
app.command("restore")(backup.restore)


@app.command("version")
def version() -> None:
    """Print the InfraFabric version."""
    typer.echo(__version__)


@app.command("demo")
def demo(
    agents: Annotated[int, typer.Option("--agents", min=2, max=8, help="Agents in the swarm.")] = 4,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=10_000, help="Steps to run.")] = 16,
    delay: Annotated[
        float, typer.Option("--delay", min=0.0, max=10.0, help="Seconds between steps.")
    ] = 0.25,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for a repeatable run.")] = None,
) -> None:
    """Watch a small swarm exchange signed messages while attacks on it are refused."""
    console = Console(highlight=False, soft_wrap=True)
    console.print(
        f"[bold]InfraFabric demo[/]: {agents} agents, {rounds} steps; every message is an "
        "Ed25519-signed IFMessage v2.1 checked by the receiver's verifier.\n"
    )

    def show(event: DemoEvent) -> None:
        verdict = "[green]accepted[/]" if event.accepted else f"[red]REJECTED {event.reason}[/]"
        if event.accepted and event.reason:
            verdict = f"[yellow]accepted with {event.reason}[/]"
        console.print(
            f"{event.step:>3}  {event.story:<44} {event.sender:>10} -> {event.receiver:<10} "
            f"{event.performative:<10} {verdict}  [dim]{event.note}[/]"
        )

    outcomes = run_demo(
        agents=agents,
        rounds=rounds,
        start=time.time(),
        seed=seed,
        emit=show,
        pause=lambda: time.sleep(delay),
    )
    table = Table("outcome", "messages", title="\nSummary")
    for outcome, count in sorted(outcomes.items()):
        table.add_row(outcome, str(count))
    console.print(table)


def main() -> None:
    app()

"""``ifab governor``: the governor's books, its policy, and breaker resets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from infrafabric.cli.board import (
    DEFAULT_SERVER,
    AdminToken,
    As,
    AsOptional,
    Server,
    _admin_request,
    _as_agent,
    _read,
)
from infrafabric.cli.common import fail
from infrafabric.client import Client
from infrafabric.governor.policy import PolicyError, load_policy
from infrafabric.protocol.message import agent_id

app = typer.Typer(
    help="The governor: budgets, breakers, reputation and its policy.", no_args_is_help=True
)
policy_app = typer.Typer(help="The governor's YAML policy.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@app.command()
def report(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of tables.")] = False,
    server: Server = DEFAULT_SERVER,
    agent: AsOptional = None,
    admin_token: AdminToken = None,
) -> None:
    """Budgets, spend, breakers and reputation of every agent and swarm."""
    document = _read(server, agent, admin_token, "/v1/governor/report")
    if as_json:
        typer.echo(json.dumps(document, indent=2))
        return
    policy = document["policy"]
    console = Console()
    console.print(f"policy {policy['source']}, profile {policy['profile']}")
    agents = Table(
        "agent", "model", "swarm", "reputation", "breaker", "spent", "budget", "done", "failed"
    )
    for row in document["agents"]:
        agents.add_row(
            row["agent"].removeprefix("if://agent/"),
            row["model"] or "-",
            row["swarm"] or "-",
            f"{row['reputation']:.2f} {row['band']}",
            row["breaker"]
            + (f" ({row['consecutive_failures']} failed)" if row["consecutive_failures"] else ""),
            f"${row['spent_usd']:.4f} / {row['spent_tokens']} tok",
            _budget(row),
            str(row["tasks_done"]),
            str(row["tasks_failed"]),
        )
    console.print(agents)
    if document["swarms"]:
        swarms = Table("swarm", "members", "spent", "budget")
        for row in document["swarms"]:
            swarms.add_row(
                row["swarm"],
                ", ".join(row["members"]),
                f"${row['spent_usd']:.4f} / {row['spent_tokens']} tok",
                _budget(row),
            )
        console.print(swarms)


@policy_app.command("check")
def policy_check(
    file: Annotated[Path, typer.Argument(help="The policy file (YAML).")],
    profile: Annotated[str | None, typer.Option("--profile", help="Check this profile.")] = None,
) -> None:
    """Validate a policy file and print the active profile's values.

    The first problem is printed with its file, line and key (exit 1)."""
    try:
        policy = load_policy(file, profile=profile)
    except PolicyError as exc:
        fail(str(exc))
    typer.echo(
        f"ok: {file} (profile {policy.profile_name} of {', '.join(sorted(policy.profiles))})"
    )
    for name, value in sorted(_flat(json.loads(json.dumps(_builtins(policy.profile)))).items()):
        typer.echo(f"  {name}: {value}")
    if policy.prices:
        typer.echo(f"  prices: {', '.join(sorted(policy.prices))}")
    if policy.swarms:
        typer.echo(f"  swarms: {', '.join(sorted(policy.swarms))}")


@app.command()
def reset(
    agent: Annotated[
        str, typer.Argument(help="The agent whose breaker to close (name or if:// id).")
    ],
    operator: As,
    server: Server = DEFAULT_SERVER,
) -> None:
    """Close an agent's circuit breaker (signed by an operator identity).

    Make one with `ifab identity new NAME --operator` and enroll it."""
    target = agent if agent.startswith("if://") else agent_id(agent)

    async def work(client: Client) -> dict[str, Any]:
        return await client.reset_breaker(target)

    _as_agent(server, operator, work)
    typer.echo(f"reset {target}'s breaker")


@app.command()
def reload(server: Server = DEFAULT_SERVER, admin_token: AdminToken = None) -> None:
    """Make the server read its policy file again (as SIGHUP does).

    A file that does not load changes nothing; its problem is printed."""
    document = _admin_request(server, admin_token, "POST", "/v1/admin/governor/reload")
    typer.echo(f"policy reloaded: {document['policy']} (profile {document['profile']})")


def _budget(row: dict[str, Any]) -> str:
    parts = []
    if row.get("budget_usd") is not None:
        parts.append(f"${row['budget_usd']:.2f}")
    if row.get("budget_tokens") is not None:
        parts.append(f"{row['budget_tokens']} tok")
    return " / ".join(parts) or "-"


def _builtins(value: Any) -> Any:
    import msgspec

    return msgspec.to_builtins(value)


def _flat(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat

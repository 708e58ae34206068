"""``ifab mcp``: an MCP server over stdio acting for one local identity, and the tokens
that let HTTP MCP clients act for it through a server's ``/mcp``.

The passphrase comes from ``$IFAB_PASSPHRASE`` (put it in the MCP client's ``env``) or a
terminal prompt: stdin and stdout carry the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer

from infrafabric.cli.board import DEFAULT_SERVER, ENV_SERVER, As, Server, _as_agent, _run
from infrafabric.cli.common import EXIT_USAGE, fail, keystore, passphrase, reported_errors
from infrafabric.client import Client
from infrafabric.protocol.identity import SigningIdentity
from infrafabric.server.runner import default_data_dir

if TYPE_CHECKING:
    from infrafabric.fabric import Fabric

app = typer.Typer(
    help=(
        "Let MCP clients (coding assistants, desktop assistants, agent frameworks) work in "
        "the swarm as one of your identities.\n\n"
        "`ifab mcp --as NAME --server URL` speaks MCP over stdio, acting for NAME through "
        "the fabric at URL; without --server it runs a fabric of its own in --data. For "
        "HTTP MCP clients, `ifab mcp token --as NAME` lends a key the client sends to the "
        "server's /mcp as a bearer token. See docs/agents.md."
    ),
    invoke_without_command=True,
)

#: How long a lent key lasts unless asked otherwise.
DEFAULT_TOKEN_HOURS: Final = 8.0


@app.callback()
def mcp(
    context: typer.Context,
    agent: Annotated[
        str | None, typer.Option("--as", help="Identity to act as (see `ifab identity list`).")
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar=ENV_SERVER,
            help="The fabric's URL; without it, a fabric in this process over --data.",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Without --server: the fabric's data directory (default $IFAB_DATA or your "
            "data dir); no server may be using it.",
        ),
    ] = None,
    capabilities: Annotated[
        list[str],
        typer.Option("--cap", help="Without --server: enroll NAME with this capability (repeat)."),
    ] = [],  # noqa: B006
) -> None:
    """Serve the fabric's agent tools over MCP stdio, acting for --as NAME."""
    if context.invoked_subcommand is not None:
        return
    if agent is None:
        fail("--as NAME is required: the identity the MCP client acts for", EXIT_USAGE)
    identity = _unlock(agent)
    if server is not None:
        _run(lambda: _serve_remote(server, identity))
    else:
        _run(lambda: _serve_embedded(data or default_data_dir(), identity, capabilities))


@app.command("token")
def token(
    agent: As,
    server: Server = DEFAULT_SERVER,
    hours: Annotated[
        float,
        typer.Option("--hours", min=0.02, max=720, help="How long the token lasts (max 30 days)."),
    ] = DEFAULT_TOKEN_HOURS,
) -> None:
    """Print a bearer token for the server's /mcp: a fresh key NAME lends for --hours.

    The server keeps only the key's public half; `ifab mcp recall KID` revokes it sooner.
    """
    from infrafabric.bridges.mcp.token import format_token

    lent: list[SigningIdentity] = []

    async def lend(client: Client) -> dict[str, object]:
        delegate = SigningIdentity.generate(client.agent)
        lent.append(delegate)
        return await client.delegate(delegate.public_key, round(hours * 3600))

    record = _as_agent(server, agent, lend)
    typer.echo(f"lent key {record['kid']} until {record['valid_until']}", err=True)
    typer.echo(format_token(lent[0]))


# A kid is base64url, so one in 64 begins with "-": take an unknown option as the kid
# rather than refuse it (the command has no short options for it to clash with).
@app.command("recall", context_settings={"ignore_unknown_options": True})
def recall(
    kid: Annotated[str, typer.Argument(help="The lent key's kid, as `ifab mcp token` printed.")],
    agent: As,
    server: Server = DEFAULT_SERVER,
) -> None:
    """Revoke a token before its time is up: the server refuses it from now on."""
    record = _as_agent(server, agent, lambda client: client.recall(kid))
    typer.echo(f"recalled {record['kid']}")


def _unlock(name: str) -> SigningIdentity:
    with reported_errors():  # no such identity, a wrong passphrase: one line, status 1
        return keystore().unlock(name, passphrase(f"Passphrase for {name}: "))


async def _serve_remote(server: str, identity: SigningIdentity) -> None:
    async with Client.connect(server, identity) as client:
        await _serve_stdio(client)


async def _serve_embedded(data: Path, identity: SigningIdentity, capabilities: list[str]) -> None:
    async with (
        _embedded(data, identity, capabilities) as fabric,
        fabric.connect(identity) as client,
    ):
        await _serve_stdio(client)


@contextlib.asynccontextmanager
async def _embedded(
    data: Path, identity: SigningIdentity, capabilities: list[str]
) -> AsyncIterator[Fabric]:
    """The fabric in ``data`` with ``identity`` enrolled (keeping its capabilities unless
    ``capabilities`` are given: this process is the fabric's operator)."""
    from infrafabric.fabric import Fabric

    fabric = await asyncio.to_thread(Fabric.open, data)
    try:
        known = fabric.state.service.agent(identity.agent)
        kept = list(known.capabilities) if known is not None else []
        fabric.enroll(identity, capabilities or kept)
        yield fabric
    finally:
        await asyncio.to_thread(fabric.close)


async def _serve_stdio(client: Client) -> None:
    from infrafabric.bridges.mcp.tools import build_server

    async def caller() -> Client:
        return client

    await build_server(caller).run_stdio_async()

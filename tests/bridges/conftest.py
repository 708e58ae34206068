"""A real `ifab serve` and MCP sessions to it: `ifab mcp` over stdio, or `/mcp` over HTTP,
each driven by the official `mcp` client SDK."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from infrafabric.bridges.mcp.token import format_token
from infrafabric.client import Client
from infrafabric.keystore import Keystore
from infrafabric.protocol.identity import SigningIdentity
from tests.harness import IFAB, PASS, Fabric, local_agent

agent = local_agent  # (the name these tests know it by)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # what the fabric's SDK runs on


@contextlib.asynccontextmanager
async def stdio_session(
    fabric: Fabric, *args: str, embedded: bool = False
) -> AsyncIterator[ClientSession]:
    """`ifab mcp ARGS` as a subprocess, initialized (``embedded``: without $IFAB_SERVER)."""
    assert IFAB is not None
    env = fabric.env()
    if embedded:
        del env["IFAB_SERVER"]
    parameters = StdioServerParameters(command=IFAB, args=["mcp", *args], env=env)
    async with (
        stdio_client(parameters) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@contextlib.asynccontextmanager
async def http_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    """An MCP session with the server's `/mcp`, sending ``token`` as the bearer."""
    headers = {"authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def data(result: CallToolResult) -> Any:
    """A successful tool call's JSON result."""
    assert not result.is_error, text(result)
    return json.loads(text(result))


def text(result: CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


def error(result: CallToolResult) -> str:
    """A refused tool call's message (the call must have been refused), without the
    ``Error executing tool NAME: `` the SDK puts before it."""
    assert result.is_error, text(result)
    return re.sub(r"^Error executing tool \w+: ", "", text(result))


@pytest.fixture(params=["stdio", "http"])
def connect(request: pytest.FixtureRequest, fabric: Fabric) -> Any:
    """``connect(name)``: an MCP session acting for enrolled identity ``name``, over
    `ifab mcp --as name --server URL` (stdio) or the server's `/mcp` with a token from
    `ifab mcp token --as name` (HTTP)."""

    @contextlib.asynccontextmanager
    async def open_session(name: str) -> AsyncIterator[ClientSession]:
        if request.param == "stdio":
            async with stdio_session(fabric, "--as", name, "--server", fabric.url) as session:
                yield session
            return
        async with http_session(fabric.url, await lent_token(fabric, name)) as session:
            yield session

    return open_session


async def lent_token(fabric: Fabric, name: str) -> str:
    """What `ifab mcp token --as name` prints, made in this process (the CLI's own
    tests run the command)."""
    identity = Keystore(fabric.home).unlock(name, PASS)
    lent = SigningIdentity.generate(identity.agent)
    async with Client.connect(fabric.url, identity) as client:
        await client.delegate(lent.public_key, 3600)
    return format_token(lent)

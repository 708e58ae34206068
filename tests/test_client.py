"""The SDK against an HTTP peer that drops a kept-alive connection as a request arrives on
it (what a server's idle timeout does to an unlucky request): a read goes again on a new
connection; a change is never sent twice."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable

import httpx
import pytest

from infrafabric import SigningIdentity, agent_id
from infrafabric.client import Client


async def _serve_second_connection_only(requests: list[bytes], reset: bool) -> asyncio.Server:
    """The first connection is read and closed (``reset``: reset) without an answer;
    later ones get 200."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        request = await reader.readuntil(b"\r\n\r\n")
        requests.append(request.split(b"\r\n", 1)[0])
        if connections == 1 and reset:  # a reset rather than an orderly close
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if connections > 1:
            body = json.dumps({"tasks": [], "acknowledged": True}).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _client(port: int) -> tuple[Client, httpx.AsyncClient]:
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
    client = Client(f"http://127.0.0.1:{port}", SigningIdentity.generate(agent_id("a")), http, 0)
    client._token, client._token_until = "token", float("inf")  # signed in already
    return client, http


def requests_made(reset: bool, call: Callable[[Client], Awaitable[None]]) -> list[bytes]:
    """The request lines the peer saw while ``call`` ran against it."""

    async def scenario() -> list[bytes]:
        requests: list[bytes] = []
        server = await _serve_second_connection_only(requests, reset)
        port = server.sockets[0].getsockname()[1]
        client, http = await _client(port)
        async with server, http:
            await call(client)
        return requests

    return asyncio.run(scenario())


@pytest.mark.parametrize("reset", [False, True])
def test_a_read_dropped_by_the_server_is_sent_again_once(reset: bool) -> None:
    async def read(client: Client) -> None:
        assert await client.tasks() == []

    assert requests_made(reset, read) == [b"GET /v1/tasks? HTTP/1.1"] * 2


@pytest.mark.parametrize("reset", [False, True])
def test_a_change_dropped_by_the_server_is_not_sent_again(reset: bool) -> None:
    async def change(client: Client) -> None:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.ack(7)

    assert requests_made(reset, change) == [b"POST /v1/inbox/ack HTTP/1.1"]

"""The SDK against peers that misbehave: an HTTP peer that drops a kept-alive connection
as a request arrives on it (what a server's idle timeout does to an unlucky request): a
read goes again on a new connection, a change is never sent twice; a WebSocket peer that
stops reading: calls still end at their timeout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import websockets.asyncio.server

from infrafabric import SigningIdentity, agent_id
from infrafabric import client as client_module
from infrafabric.client import Client, RemoteError
from infrafabric.service import ServiceError
from tests.harness import Fabric, enroll


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


async def _client(port: int, timeout: float = 30.0) -> tuple[Client, httpx.AsyncClient]:
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
    identity = SigningIdentity.generate(agent_id("a"))
    client = Client(f"http://127.0.0.1:{port}", identity, http, 0, timeout=timeout)
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

    assert requests_made(reset, read) == [b"GET /v1/tasks?limit=5000 HTTP/1.1"] * 2


@pytest.mark.parametrize("reset", [False, True])
def test_a_change_dropped_by_the_server_is_not_sent_again(reset: bool) -> None:
    async def change(client: Client) -> None:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client._request("POST", "/v1/messages", content=b"{}")

    assert requests_made(reset, change) == [b"POST /v1/messages HTTP/1.1"]


@contextlib.asynccontextmanager
async def _stalled_peer(connections: list[str]) -> AsyncIterator[int]:
    """A WebSocket peer that accepts connections and never reads from them (a wedged
    server); yields its port. Its small receive buffer (set before listening, so every
    accepted socket has it) makes a big frame fill the way at once."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    listener.bind(("127.0.0.1", 0))

    async def handle(connection: websockets.asyncio.server.ServerConnection) -> None:
        connections.append(connection.request.path if connection.request else "")
        connection.transport.pause_reading()
        await connection.wait_closed()

    async with websockets.asyncio.server.serve(
        handle, sock=listener, max_size=None, ping_interval=None, close_timeout=0.1
    ):
        yield listener.getsockname()[1]


@pytest.fixture
def frames_of_any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK refuses a message over 64 KiB before sending it (no server takes one); the
    fake peers here take any, and a frame of 16 MiB is what fills the TCP buffers."""
    monkeypatch.setattr(client_module, "DEFAULT_MAX_BYTES", 2**25)


@pytest.mark.usefixtures("frames_of_any_size")
def test_calls_to_a_peer_that_stopped_reading_end_at_their_timeout() -> None:
    """A frame the peer does not take keeps its send waiting for the buffer to drain: the
    call still fails at its timeout with TIMEOUT, and so does a call queued behind it
    (the send lock does not outlive the deadline); the stuck connection is dropped and
    the next call opens another."""

    async def scenario() -> None:
        connections: list[str] = []
        async with _stalled_peer(connections) as port:
            client, http = await _client(port, timeout=1.0)
            big = asyncio.create_task(client.send("if://topic/x", "inform", {"blob": "y" * 2**24}))
            await asyncio.sleep(0.5)  # the big frame holds the send lock by now
            small = asyncio.create_task(client.send("if://topic/x", "inform", {"i": 1}))
            # (bounded: before the fix both calls hung here for as long as the peer lived)
            done = await asyncio.wait_for(asyncio.gather(big, small, return_exceptions=True), 10)
        # closed after the peer closed its end: a closing handshake with a peer that does
        # not read would wait out websockets' close timeout (10 s)
        await client._close_socket()
        await http.aclose()
        assert [type(outcome) for outcome in done] == [RemoteError, RemoteError]
        assert [outcome.code for outcome in done] == ["TIMEOUT", "TIMEOUT"]  # type: ignore[union-attr]
        # both frames left: either may have been carried out
        assert all("may have been carried out" in str(outcome) for outcome in done)
        assert len(connections) == 2  # the small call did not go out behind the stuck frame

    asyncio.run(scenario())


@pytest.mark.usefixtures("frames_of_any_size")
def test_a_call_cancelled_while_its_frame_waits_leaves_the_other_calls_their_replies() -> None:
    """A caller that gives up a call (cancels it) while the peer has not taken its frame
    yet: the frame went whole to the transport, so the connection stays; a call already
    waiting on it still gets its reply once the peer reads again, and no second
    connection is opened. (Dropping the connection, as a timeout does for a stuck peer,
    failed the other call with DISCONNECTED.)"""

    async def scenario() -> tuple[dict[str, object], list[str]]:
        connections: list[str] = []
        resume = asyncio.Event()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        listener.bind(("127.0.0.1", 0))

        async def handle(connection: websockets.asyncio.server.ServerConnection) -> None:
            connections.append(connection.request.path if connection.request else "")
            connection.transport.pause_reading()  # a slow peer, for a while
            await resume.wait()
            connection.transport.resume_reading()
            async for text in connection:
                frame = json.loads(text)
                result = {"answered": frame["id"]}
                await connection.send(
                    json.dumps({"type": "reply", "id": frame["id"], "result": result})
                )

        async with websockets.asyncio.server.serve(
            handle, sock=listener, max_size=None, ping_interval=None, close_timeout=0.1
        ):
            client, http = await _client(listener.getsockname()[1], timeout=30.0)
            waiting = asyncio.create_task(client.send("if://topic/x", "inform", {"i": 1}))
            await asyncio.sleep(0.3)  # its frame is out; its reply is not
            big = asyncio.create_task(client.send("if://topic/x", "inform", {"blob": "y" * 2**24}))
            await asyncio.sleep(0.3)  # the big frame waits for the peer to take it
            assert not big.done()
            big.cancel()
            with pytest.raises(asyncio.CancelledError):
                await big
            resume.set()
            reply = await asyncio.wait_for(waiting, 10)
            await client._close_socket()
            await http.aclose()
        return reply, connections

    reply, connections = asyncio.run(scenario())
    assert reply == {"answered": 1}
    assert len(connections) == 1


def test_a_call_whose_message_never_left_says_so_when_it_times_out() -> None:
    """A server that never answers the WebSocket handshake: the call times out before its
    message is sent, and the TIMEOUT no longer says it may have been carried out."""

    async def scenario() -> RemoteError:
        with socket.socket() as silent:  # the kernel accepts; nobody ever answers
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            client, http = await _client(silent.getsockname()[1], timeout=1.0)
            with pytest.raises(RemoteError) as caught:
                await asyncio.wait_for(client.send("if://topic/x", "inform", {"i": 1}), 10)
            await http.aclose()
        return caught.value

    refusal = asyncio.run(scenario())
    assert refusal.code == "TIMEOUT"
    assert "never sent" in str(refusal)


def test_a_stream_and_a_request_whose_server_dies_fail_with_disconnected(fabric: Fabric) -> None:
    """A stream's WebSocket that drops (the server killed: no closing handshake) ends
    ``stream()`` and a waiting ``request()`` with the SDK's DISCONNECTED, not websockets'
    own exception."""
    asker = enroll(fabric.url, fabric.admin_token, "asker")
    silent = enroll(fabric.url, fabric.admin_token, "silent")

    async def scenario() -> tuple[RemoteError, RemoteError]:
        async with (
            Client.connect(fabric.url, asker) as agent,
            Client.connect(fabric.url, silent) as other,
            other.stream() as frames,
        ):
            asking = asyncio.create_task(agent.request(silent.agent, {"x": 1}, timeout=30))
            async for frame in frames:  # the request has arrived: the server goes down
                assert frame.kind == "message"
                fabric.kill(signal.SIGKILL)
                break
            with pytest.raises(RemoteError) as streamed:
                async for _ in frames:
                    pass
            with pytest.raises(RemoteError) as requested:
                await asking
            return streamed.value, requested.value

    streamed, requested = asyncio.run(scenario())
    assert (streamed.code, streamed.status) == ("DISCONNECTED", 503)
    assert (requested.code, requested.status) == ("DISCONNECTED", 503)


def test_a_task_id_is_one_escaped_path_segment(fabric: Fabric) -> None:
    """``task("a?b")`` asks for task ``a?b``, not for task ``a`` with a query string."""
    lead = enroll(fabric.url, fabric.admin_token, "lead")

    async def scenario() -> list[str]:
        async with Client.connect(fabric.url, lead) as agent:
            await agent.create_task("The real a", id="a")
            assert (await agent.task("a"))["title"] == "The real a"
            answers = []
            for task_id in ("a?b", "a#b", ".."):
                with pytest.raises(RemoteError) as missing:
                    await agent.task(task_id)
                # the service's answer about that very id, not the router's about a path
                answers.append(f"{missing.value.code}: {missing.value.detail}")
            return answers

    assert asyncio.run(scenario()) == [
        "NOT_FOUND: no task a?b",
        "NOT_FOUND: no task a#b",
        "NOT_FOUND: no task ..",
    ]


@pytest.mark.parametrize("ahead_ms", [1_000, 10**9])
def test_a_message_refused_for_its_number_is_signed_again_only_above_a_plausible_highest(
    ahead_ms: int,
) -> None:
    """A refusal naming a highest a second ahead is another client of the identity: once
    more, numbered past it. One naming a highest far ahead (a rogue server, or whoever
    wrote the reply) would push this identity's numbers to the top for good: refused."""
    sent: list[int] = []

    async def refusing(data: bytes) -> dict[str, object]:  # a peer that refuses once
        number = json.loads(data)["sequence_num"]
        sent.append(number)
        if len(sent) == 1:
            raise ServiceError("REPLAY", "sequence taken", 409, highest=number + ahead_ms)
        return {"ok": True}

    async def scenario() -> None:
        identity = SigningIdentity.generate(agent_id("a"))
        async with httpx.AsyncClient(base_url="http://unused.invalid") as http:
            client = Client("http://unused.invalid", identity, http, 0, submit=refusing)
            if ahead_ms > 600_000:
                with pytest.raises(RemoteError) as refused:
                    await client.send("if://agent/b", "inform", {})
                assert refused.value.highest == sent[0] + ahead_ms
                assert len(sent) == 1
            else:
                await client.send("if://agent/b", "inform", {})
                assert sent[0] + ahead_ms < sent[1] <= sent[0] + ahead_ms + 32

    asyncio.run(scenario())


def test_forged_highests_cannot_walk_the_numbers_ahead_of_the_clock() -> None:
    """The limit was measured from the client's own numbers, which each retry moved on:
    replies naming a highest just under it walked them ten minutes a call (25 hours in 50
    calls). From the clock alone, the second such reply is refused."""
    sent: list[int] = []

    async def forging(data: bytes) -> dict[str, object]:
        number = json.loads(data)["sequence_num"]
        sent.append(number)
        if len(sent) % 2:  # each call's first attempt: "numbered past by 500 s"
            raise ServiceError("REPLAY", "sequence taken", 409, highest=number + 500_000)
        return {"ok": True}

    async def scenario() -> None:
        identity = SigningIdentity.generate(agent_id("a"))
        async with httpx.AsyncClient(base_url="http://unused.invalid") as http:
            client = Client("http://unused.invalid", identity, http, 0, submit=forging)
            await client.send("if://agent/b", "inform", {})  # 500 s ahead: plausible
            with pytest.raises(RemoteError):  # 1,000 s ahead of the clock: not a peer's
                await client.send("if://agent/b", "inform", {})

    asyncio.run(scenario())


def test_a_next_page_that_does_not_move_on_is_refused() -> None:
    """A server (or whatever wrote the reply) whose ``next`` repeats would have the SDK,
    the CLI and the dashboard ask for the same page for ever."""
    from infrafabric.client import next_page

    assert next_page(None, {"tasks": [], "next": None}) is None
    assert next_page(None, {"tasks": []}) is None  # a server that answers the board whole
    assert next_page(None, {"next": "t1"}) == "t1"
    assert next_page("t1", {"next": "t2"}) == "t2"
    for after, following in (("t2", "t2"), ("t2", "t1"), ("t2", 3)):
        with pytest.raises(RemoteError) as refused:
            next_page(after, {"next": following})
        assert refused.value.code == "MALFORMED"

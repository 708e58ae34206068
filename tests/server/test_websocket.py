"""The WebSocket's limits and refusals, over a real server: what one client does must
not cost the others their events, and every refusal names its reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import websockets.asyncio.client
import websockets.exceptions
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from infrafabric import SigningIdentity, agent_id
from infrafabric.client import Client, RemoteError
from infrafabric.protocol.identity import b64url_encode
from infrafabric.server.app import MAX_FRAME_BYTES, TOKEN_EXPIRED_CLOSE, ServerState
from infrafabric.server.runner import open_server, run_server
from tests.server.conftest import Fabric, token_of


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def ws_url(fabric: Fabric, token: str, *query: str) -> str:
    return (
        fabric.url.replace("http://", "ws://")
        + f"/v1/ws?token={token}"
        + "".join(f"&{part}" for part in query)
    )


async def frames_until(socket: Any, wanted: str, most: int = 2000) -> list[dict[str, Any]]:
    """Frames read until one of type ``wanted`` (included)."""
    seen = []
    for _ in range(most):
        frame = json.loads(await asyncio.wait_for(socket.recv(), 10))
        seen.append(frame)
        if frame["type"] == wanted:
            return seen
    raise AssertionError(f"no {wanted!r} frame in {most}")


async def first_board_event(watcher: Client, creator: Client, task_id: str) -> str | None:
    """The topic of the first board event ``watcher``'s stream gets once ``creator``
    creates ``task_id`` (made as soon as the stream is entered: it is subscribed by then)."""
    async with watcher.stream(["if://topic/board/**"]) as events:
        await creator.create_task("watched", id=task_id)
        frame = await asyncio.wait_for(anext(events), 10)
    return frame.topic


def test_an_inbox_as_long_as_the_queue_is_delivered_on_connect(
    small_queues: tuple[Fabric, ServerState],
) -> None:
    """The waiting inbox went into the connection's bounded queue all at once: an agent
    with as many waiting messages as the queue holds was closed as too slow by the
    answer to its own subscribe frame, and could never stream again."""
    fabric, _ = small_queues
    alice, bob = fabric.enroll("alice"), fabric.enroll("bob")

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as sender:
            for n in range(30):  # more than the queue holds
                await sender.send(bob.agent, "inform", {"n": n})
        async with Client.connect(fabric.url, bob) as receiver:
            url = ws_url(fabric, await token_of(fabric, receiver))
            async with websockets.asyncio.client.connect(url) as socket:
                await socket.send(json.dumps({"type": "subscribe", "topics": ["if://topic/news"]}))
                frames = await frames_until(socket, "subscribed")
                while len([f for f in frames if f["type"] == "message"]) < 30:
                    frames.append(json.loads(await asyncio.wait_for(socket.recv(), 10)))
                # still open: a live message reaches it after the backlog
                async with Client.connect(fabric.url, alice) as sender:
                    await sender.send(bob.agent, "inform", {"n": "live"})
                live = json.loads(await asyncio.wait_for(socket.recv(), 10))
        contents = [f["message"]["content"]["n"] for f in frames if f["type"] == "message"]
        assert contents == list(range(30))
        assert live["message"]["content"] == {"n": "live"}

    run(scenario())


def test_subscriptions_are_checked_and_bounded(fabric: Fabric) -> None:
    """A pattern of thousands of `**` once broke the fan-out of every event (a
    RecursionError) or held the event loop for seconds; any number of frames could
    add 64 patterns each."""
    alice, bob = fabric.enroll("alice"), fabric.enroll("bob")

    async def scenario() -> None:
        async with (
            Client.connect(fabric.url, alice) as attacker,
            Client.connect(fabric.url, bob) as follower,
        ):
            url = ws_url(fabric, await token_of(fabric, attacker))
            async with websockets.asyncio.client.connect(url, max_size=None) as socket:
                deep = "if://topic/" + "/".join(["**"] * 3000)
                for topics, problem in [
                    ([deep], "characters"),
                    (["if://topic/**/a/**/b/**"], "2 **"),
                    (["news"], "if:// address"),
                    ([f"if://topic/t{n}" for n in range(65)], "at most 64"),
                ]:
                    await socket.send(json.dumps({"type": "subscribe", "id": 1, "topics": topics}))
                    refusal = json.loads(await asyncio.wait_for(socket.recv(), 10))
                    assert (refusal["type"], refusal["error"]["code"]) == ("error", "MALFORMED")
                    assert problem in refusal["error"]["detail"]
                # 40 now, then 40 more in another frame: refused as a whole
                first = [f"if://topic/a{n}" for n in range(40)]
                await socket.send(json.dumps({"type": "subscribe", "topics": first}))
                assert len((await frames_until(socket, "subscribed"))[-1]["topics"]) == 40
                second = [f"if://topic/b{n}" for n in range(40)]
                await socket.send(json.dumps({"type": "subscribe", "topics": second}))
                refusal = json.loads(await asyncio.wait_for(socket.recv(), 10))
                assert refusal["error"]["code"] == "MALFORMED"
                await socket.send(json.dumps({"type": "subscribe", "topics": []}))
                assert len((await frames_until(socket, "subscribed"))[-1]["topics"]) == 40
            created = await first_board_event(follower, attacker, "t1")
            assert created == "if://topic/board/task/created"

    run(scenario())


@pytest.mark.parametrize(
    ("frame", "status", "code", "detail"),
    [
        (b'{"type": "subscribe", "topics": []}', 400, "MALFORMED", "binary"),
        ('{"type": "subscribe", "x": "' + "a" * 70_000 + '"}', 413, "TOO_LARGE", "too large"),
        ('{"type": "subscribe", "topics": 3}', 400, "MALFORMED", "not a frame"),
        ('{"type": "dance"}', 400, "MALFORMED", "unknown frame"),
        # msgspec raised RecursionError, which dropped the connection without a word
        (
            '{"type": "send", "id": 7, "message": ' + "[" * 1000 + "]" * 1000 + "}",
            400,
            "MALFORMED",
            "nested too deep",
        ),
    ],
)
def test_an_unreadable_frame_is_refused_with_its_status_and_the_connection_goes_on(
    fabric: Fabric, frame: str | bytes, status: int, code: str, detail: str
) -> None:
    """Such refusals once had no ``status``, though every other error frame has one."""
    alice = fabric.enroll("alice")

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as client:
            url = ws_url(fabric, await token_of(fabric, client), "inbox=false")
            async with websockets.asyncio.client.connect(url) as socket:
                await socket.send(frame)
                refusal = json.loads(await asyncio.wait_for(socket.recv(), 10))
                assert (refusal["type"], refusal["status"]) == ("error", status)
                assert refusal["error"]["code"] == code
                assert detail in refusal["error"]["detail"]
                await socket.send(json.dumps({"type": "subscribe", "topics": ["if://topic/x"]}))
                reply = json.loads(await asyncio.wait_for(socket.recv(), 10))
                assert reply == {"type": "subscribed", "id": None, "topics": ["if://topic/x"]}

    run(scenario())


def test_a_message_too_large_for_a_frame_gets_its_413_at_once(fabric: Fabric) -> None:
    """The refusal of a frame too large to read named no request, so the SDK's call
    waited out its timeout (TIMEOUT, 504) instead of getting TOO_LARGE; the connection
    then still serves the next call."""
    alice, bob = fabric.enroll("alice"), fabric.enroll("bob")

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice, timeout=10) as agent:
            with pytest.raises(RemoteError) as refused:
                await agent.send(bob.agent, "inform", {"text": "x" * 70_000})
            assert (refused.value.code, refused.value.status) == ("TOO_LARGE", 413)
            sent = await agent.send(bob.agent, "inform", {"text": "small"})
            assert sent["delivered"][0]["receiver"] == bob.agent

    run(scenario())


def test_a_frame_far_too_large_is_cut_off_while_it_arrives(fabric: Fabric) -> None:
    """uvicorn took in frames up to 16 MiB whole (per connection) before the server
    refused them; one larger than any frame the server could accept closes with 1009."""
    alice = fabric.enroll("alice")

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as client:
            url = ws_url(fabric, await token_of(fabric, client), "inbox=false")
            async with websockets.asyncio.client.connect(url) as socket:
                await socket.send('{"type": "subscribe", "x": "' + "a" * MAX_FRAME_BYTES + '"}')
                with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                    await asyncio.wait_for(socket.recv(), 10)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1009  # "message too big"

    run(scenario())


def test_a_handshake_without_a_valid_token_is_refused_with_its_reason(fabric: Fabric) -> None:
    """Closed before it was accepted, the socket reached the client as a bare 403."""

    async def scenario() -> None:
        for token in ("not-a-token", "", "%C3%A9"):  # the last: not ASCII, was a 500
            with pytest.raises(websockets.exceptions.InvalidStatus) as caught:
                async with websockets.asyncio.client.connect(ws_url(fabric, token)):
                    pass
            response = caught.value.response
            assert response.status_code == 401
            assert json.loads(response.body)["error"]["code"] == "UNAUTHENTICATED"

    run(scenario())


def test_only_the_fabric_publishes_on_the_topics_of_its_own_events(fabric: Fabric) -> None:
    """Any agent could publish on if://topic/board/..., and followers of the board read
    it among the fabric's decisions."""
    carol = fabric.enroll("carol")

    async def scenario() -> None:
        async with Client.connect(fabric.url, carol) as agent:
            for topic in (
                "if://topic/board/task/completed",
                "if://topic/board",
                "if://topic/governor/assignment/refused",
                "if://topic/witness/x",
                "if://topic/keys/rotated",
            ):
                with pytest.raises(RemoteError) as caught:
                    await agent.send(topic, "inform", {"forged": True})
                assert (caught.value.code, caught.value.status) == ("RESERVED_TOPIC", 403)
            # a topic that only begins like one is the agents' own
            sent = await agent.send("if://topic/boards/news", "inform", {"n": 1})
            assert sent["published"] == ["if://topic/boards/news"]

    run(scenario())


def test_the_sdk_refuses_a_pattern_the_server_would_and_reads_a_refusal(
    fabric: Fabric, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, stream() sent any pattern and skipped the server's error frame: a refused
    subscription looked like a quiet topic."""
    from infrafabric import client as sdk
    from infrafabric.fabric import Fabric as Embedded

    alice = fabric.enroll("alice")
    deep = "if://topic/" + "/".join(["**"] * 3)

    async def refused(agent: Client, topics: list[str]) -> RemoteError:
        with pytest.raises(RemoteError) as caught:
            async with agent.stream(topics) as frames:
                await asyncio.wait_for(anext(frames), 10)
        return caught.value

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as agent:
            for topics in ([deep], [f"if://topic/t{n}" for n in range(65)]):
                assert (await refused(agent, topics)).code == "MALFORMED"
            # a client without the check (an older SDK, say) hears the server's refusal
            monkeypatch.setattr(sdk, "_checked_topics", list)
            refusal = await refused(agent, [deep])
            assert (refusal.code, refusal.status) == ("MALFORMED", 400)
            assert "2 **" in refusal.detail
            monkeypatch.undo()
        with Embedded.open(tmp_path / "embedded", synchronous="NORMAL") as local:
            async with local.connect(local.enroll("bob")) as agent:
                assert (await refused(agent, [deep])).code == "MALFORMED"

    run(scenario())


def test_the_routers_own_refusals_carry_a_reason_code(fabric: Fabric) -> None:
    """An unknown path or a method a route does not take got Starlette's plain text."""
    unknown = httpx.get(f"{fabric.url}/v1/nothing-here")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "NOT_FOUND"
    assert "/v1/nothing-here" in unknown.json()["error"]["detail"]
    wrong = httpx.delete(f"{fabric.url}/v1/tasks")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in wrong.headers["allow"]


def test_a_bug_in_a_route_answers_json_internal(tmp_path: Path) -> None:
    """Starlette's own answer to an exception is a plain-text page."""
    from starlette.routing import Route

    from infrafabric.server.app import create_app

    def broken(request: Any) -> Any:
        raise RuntimeError("a bug")

    state = open_server(tmp_path / "data", synchronous="NORMAL")
    try:
        app = create_app(state)
        app.router.routes.append(Route("/broken", broken))  # a route with a bug, for the test

        async def scenario() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.get("/broken")

        answer = run(scenario())
    finally:
        state.close()
    assert answer.status_code == 500
    assert answer.json() == {"error": {"code": "INTERNAL", "detail": "RuntimeError"}}


def test_a_stream_signs_in_again_when_its_token_is_refused(fabric: Fabric) -> None:
    """The request socket signed in again on a refused handshake, the stream did not: it
    failed as DISCONNECTED until the token expired (up to 15 minutes)."""
    alice = fabric.enroll("alice")

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as agent:
            await agent._ensure_token()
            agent._token = "a-token-the-server-no-longer-honours"  # as after a key change
            created = await first_board_event(agent, agent, "s1")
            assert created == "if://topic/board/task/created"

    run(scenario())


def test_a_stream_is_entered_once_the_server_took_its_subscription(
    small_queues: tuple[Fabric, ServerState],
) -> None:
    """stream() yielded as soon as its subscribe frame was sent, so the event of a change
    made right away could be missed (tests slept 0.2 s first). It now waits for the
    server's answer, keeping what the inbox sent before it."""
    fabric, state = small_queues
    alice, bob = fabric.enroll("alice"), fabric.enroll("bob")

    async def scenario() -> list[Any]:
        async with Client.connect(fabric.url, alice) as sender:
            await sender.send(bob.agent, "inform", {"waiting": True})
        async with Client.connect(fabric.url, bob) as agent, agent.stream(["if://topic/x"]) as got:
            assert state.hub is not None
            following = [c.topics for c in state.hub.connections if c.topics]
            assert following == [{"if://topic/x"}]  # taken before the block was entered
            first = await asyncio.wait_for(anext(got), 10)  # the inbox's, kept meanwhile
            return [first.kind, first.data["message"]["content"]]

    assert run(scenario()) == ["message", {"waiting": True}]


def test_an_ack_is_a_signed_message_and_the_unsigned_ways_answer_where_it_went(
    fabric: Fabric,
) -> None:
    """Acknowledging changes an inbox: a signed request to if://service/inbox, as every
    change is. The bearer-token ways (REST, a frame) changed it on a token alone."""
    alice, bob = fabric.enroll("alice"), fabric.enroll("bob")

    async def scenario() -> None:
        async with (
            Client.connect(fabric.url, alice) as client,
            Client.connect(fabric.url, bob) as sender,
        ):
            await sender.send(alice.agent, "inform", {"n": 1})
            [(position, _)] = await client.inbox()
            token = await token_of(fabric, client)
            async with httpx.AsyncClient() as http:
                answer = await http.post(
                    f"{fabric.url}/v1/inbox/ack",
                    json={"position": position},
                    headers={"authorization": f"Bearer {token}"},
                )
            assert (answer.status_code, answer.json()["error"]["code"]) == (410, "SIGNED_ACK")
            assert "if://service/inbox" in answer.json()["error"]["detail"]
            url = ws_url(fabric, token, "inbox=false")
            async with websockets.asyncio.client.connect(url) as socket:
                await socket.send(json.dumps({"type": "ack", "id": 1, "position": position}))
                refusal = json.loads(await asyncio.wait_for(socket.recv(), 10))
                assert (refusal["status"], refusal["error"]["code"]) == (410, "SIGNED_ACK")
            assert [p for p, _ in await client.inbox()] == [position]  # nothing changed
            with pytest.raises(RemoteError) as huge:
                await client.ack(-1)
            assert (huge.value.code, huge.value.status) == ("INVALID_OPERATION", 422)
            assert await client.ack(position) is True
            assert await client.ack(position) is False  # gone already
            assert await client.inbox() == []
            # someone else's position is not theirs to take away
            await client.send(bob.agent, "inform", {"n": 2})
            [(bobs, _)] = await sender.inbox()
            assert await client.ack(bobs) is False
            assert [p for p, _ in await sender.inbox()] == [bobs]

    run(scenario())


@pytest.fixture
def short_tokens(tmp_path: Path) -> Iterator[Fabric]:
    """A real server whose session tokens live 3 s (15 minutes by default)."""
    state = open_server(tmp_path / "data", synchronous="NORMAL")
    state.sessions.token_seconds = 3.0
    with run_server(state) as server:
        yield Fabric(server, state.sessions.admin_token)


def test_a_socket_closes_when_its_token_expires_unless_renewed(short_tokens: Fabric) -> None:
    """A socket lived on after its token expired (pings kept it up), so an agent whose
    key was revoked went on reading every board event and its direct messages."""
    fabric = short_tokens
    alice, bob = fabric.enroll("alice"), fabric.enroll("bob")

    async def fresh_token(client: Client) -> str:
        await client._authenticate()
        assert client._token is not None
        return client._token

    async def answer(socket: Any, frame: dict[str, Any]) -> dict[str, Any]:
        await socket.send(json.dumps(frame))
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), 10))
        return reply

    async def scenario() -> None:
        async with (
            Client.connect(fabric.url, alice) as client,
            Client.connect(fabric.url, bob) as other,
        ):
            kept_url = ws_url(fabric, await fresh_token(client), "inbox=false")
            left_url = ws_url(fabric, await fresh_token(client), "inbox=false")
            async with (
                websockets.asyncio.client.connect(kept_url) as kept,
                websockets.asyncio.client.connect(left_url) as left,
            ):
                for token, status, code in [
                    ("not-a-token", 401, "UNAUTHENTICATED"),
                    (
                        await fresh_token(other),
                        403,
                        "NOT_OWNER",
                    ),  # bob's renews no socket of alice's
                ]:
                    refused = await answer(kept, {"type": "renew", "id": 1, "token": token})
                    assert (refused["status"], refused["error"]["code"]) == (status, code)
                await asyncio.sleep(1.0)
                renewed = await answer(
                    kept, {"type": "renew", "id": 2, "token": await fresh_token(client)}
                )
                assert renewed["type"] == "renewed"
                assert 2.0 < renewed["expires_in"] <= 3.0
                with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                    await asyncio.wait_for(left.recv(), 10)  # its token expires in about 2 s
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == TOKEN_EXPIRED_CLOSE
                # past the first token's expiry, the renewed socket still answers
                subscribed = await answer(kept, {"type": "subscribe", "topics": ["if://topic/x"]})
                assert subscribed["type"] == "subscribed"
                with pytest.raises(websockets.exceptions.ConnectionClosed):
                    await asyncio.wait_for(kept.recv(), 10)  # until its new token expires

    run(scenario())


def test_the_sdk_renews_its_sockets_before_their_tokens_expire(short_tokens: Fabric) -> None:
    """Its request socket and its streams outlive many tokens without a reconnect: the
    calls in flight and the events of a stream go on."""
    fabric = short_tokens
    alice, bob = fabric.enroll("alice"), fabric.enroll("bob")

    async def scenario() -> None:
        async with (
            Client.connect(fabric.url, alice) as agent,
            Client.connect(fabric.url, bob) as planner,
        ):
            await agent.tasks()  # (a read: signs in)
            await agent.send(bob.agent, "inform", {"n": 0})
            socket = agent._socket
            async with agent.stream(["if://topic/board/**"]) as frames:
                seen = []
                # 7 s, more than two token lives; a call every 0.5 s, within the 0.75 s
                # before each expiry when the SDK renews (a socket left idle through it
                # is closed, and the next call opens another)
                for round_ in range(1, 15):
                    await asyncio.sleep(0.5)
                    await planner.create_task(f"round {round_}", id=f"t{round_}")
                    await agent.send(bob.agent, "inform", {"n": round_})
                    async with asyncio.timeout(10):
                        async for frame in frames:
                            if (
                                frame.kind == "event"
                                and frame.data["event"]["kind"] == "task.created"
                            ):
                                seen.append(frame.data["event"]["task_id"])
                                break
            assert seen == [f"t{n}" for n in range(1, 15)]
            assert agent._socket is socket  # renewed in band, not opened again
            assert not socket.closed

    run(scenario())


def test_the_sdk_renews_nothing_on_a_server_whose_tokens_do_not_say_when_they_expire() -> None:
    """An older server neither closes a socket when its token expires nor knows the
    renew frame: a renewal there would end the stream with MALFORMED."""

    async def challenge(request: Request) -> JSONResponse:
        return JSONResponse({"challenge": b64url_encode(b"c" * 40)})

    async def token(request: Request) -> JSONResponse:
        return JSONResponse({"token": f"token-{time.monotonic()}", "agent": "if://agent/old"})

    older = Starlette(
        routes=[
            Route("/v1/auth/challenge", challenge, methods=["POST"]),
            Route("/v1/auth/token", token, methods=["POST"]),
        ]
    )
    identity = SigningIdentity.generate(agent_id("old"))

    async def scenario() -> None:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=older), base_url="http://older"
        ) as http:
            client = Client("http://older", identity, http, last_sequence=0)
            await client._authenticate()
            assert client._token is not None
            assert await client._renewed("the token a socket was opened with") is None

    run(scenario())


def test_the_sdk_renews_with_a_fresh_token_once_the_held_one_is_due(fabric: Fabric) -> None:
    alice = fabric.enroll("alice")

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as client:
            held = await token_of(fabric, client)
            assert await client._renewed(held) is None  # not due yet
            client._token_until = 0.0  # due
            fresh = await client._renewed(held)
            assert fresh is not None
            assert fresh != held

    run(scenario())


def test_a_message_far_too_large_fails_alone_not_the_calls_beside_it(fabric: Fabric) -> None:
    """The SDK sent it, the server's WebSocket layer closed the connection (1009) and
    every call in flight on it failed DISCONNECTED, some of them carried out."""
    alice, bob = fabric.enroll("alice"), fabric.enroll("bob")

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as agent:
            await agent.tasks()
            small = [agent.send(bob.agent, "inform", {"n": n}) for n in range(20)]
            huge = agent.send(bob.agent, "inform", {"x": "a" * 300_000})
            *sent, refused = await asyncio.gather(*small, huge, return_exceptions=True)
            assert all(isinstance(result, dict) for result in sent), sent
            assert isinstance(refused, RemoteError)
            assert (refused.code, refused.status) == ("TOO_LARGE", 413)

    run(scenario())


def test_a_frame_carried_out_when_the_token_expires_still_gets_its_reply(
    short_tokens: Fabric, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The expiry cancelled the handler mid-frame: the message was committed, and its
    reply never sent (the client read DISCONNECTED, "may have been carried out")."""
    fabric = short_tokens
    alice, bob = fabric.enroll("alice"), fabric.enroll("bob")
    committer = fabric.server.state.committer
    real_submit = committer.submit

    async def slow_submit(*args: Any, **kwargs: Any) -> dict[str, Any]:
        await asyncio.sleep(2.0)  # across the token's expiry
        return await real_submit(*args, **kwargs)

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as client:
            token = await token_of(fabric, client)
            outbox = client.outbox
            async with websockets.asyncio.client.connect(
                ws_url(fabric, token, "inbox=false")
            ) as socket:
                await asyncio.sleep(1.5)  # the token expires 1.5 s on: while it is carried out
                message = outbox.message(
                    now=time.time(), performative="inform", receiver=bob.agent, content={}
                )
                monkeypatch.setattr(committer, "submit", slow_submit)
                await socket.send(
                    json.dumps({"type": "send", "id": 9, "message": msgspec.to_builtins(message)})
                )
                reply = json.loads(await asyncio.wait_for(socket.recv(), 10))
                assert (reply["type"], reply["id"]) == ("reply", 9)
                with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                    await asyncio.wait_for(socket.recv(), 10)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == TOKEN_EXPIRED_CLOSE

    run(scenario())


def test_a_connection_whose_client_is_gone_leaves_no_task_behind(fabric: Fabric) -> None:
    """A send that failed (the client gone) made the handler's cleanup stop short: the
    task waiting for the token's expiry lived on, holding the connection, 15 minutes."""
    alice = fabric.enroll("alice")
    state = fabric.server.state
    assert state.hub is not None

    async def token() -> str:
        async with Client.connect(fabric.url, alice) as client:
            return await token_of(fabric, client)

    query = f"token={run(token())}&inbox=false".encode()

    async def drive() -> list[str]:
        gone = asyncio.Event()
        frames = iter(
            [
                {"type": "websocket.connect"},
                {"type": "websocket.receive", "text": json.dumps({"type": "subscribe"})},
            ]
        )

        async def receive() -> dict[str, Any]:
            following = next(frames, None)
            if following is not None:
                return following
            await gone.wait()
            await asyncio.sleep(0.05)
            return {"type": "websocket.disconnect", "code": 1006}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "websocket.send":
                gone.set()
                raise OSError("the client is gone")  # as uvicorn's ClientDisconnected

        scope = {
            "type": "websocket", "asgi": {"version": "3.0"}, "path": "/v1/ws",
            "raw_path": b"/v1/ws", "query_string": query, "headers": [(b"host", b"x")],
            "scheme": "ws", "server": ("127.0.0.1", 1), "client": ("127.0.0.1", 2),
            "root_path": "", "subprotocols": [], "extensions": {"websocket.http.response": {}},
        }  # fmt: skip
        app = fabric.server.server.config.loaded_app
        with contextlib.suppress(Exception):
            await app(scope, receive, send)
        await asyncio.sleep(0.2)
        return [task.get_coro().__qualname__ for task in asyncio.all_tasks() if not task.done()]

    alive = asyncio.run_coroutine_threadsafe(drive(), state.hub.loop).result(20)
    assert "_expire" not in alive
    assert "_send_frames" not in alive


def test_a_socket_still_serves_while_its_token_lasts_if_signing_in_again_fails(
    fabric: Fabric,
) -> None:
    """Once its token was due for renewal, a failed sign-in (the HTTP side unreachable a
    moment) failed calls the open socket could still carry."""
    alice, bob = fabric.enroll("alice"), fabric.enroll("bob")

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as agent:
            await agent.send(bob.agent, "inform", {"n": 1})  # the socket opens
            working = agent._http
            async with httpx.AsyncClient(base_url="http://127.0.0.1:9") as unreachable:
                agent._http = unreachable
                agent._token_until = 0.0  # due: it signs in again before the next call
                sent = await agent.send(bob.agent, "inform", {"n": 2})
                assert sent["delivered"][0]["receiver"] == bob.agent
                agent._socket.expires = 0.0  # and once the held token has expired, it fails
                with pytest.raises(httpx.HTTPError):
                    await agent.send(bob.agent, "inform", {"n": 3})
            agent._http = working

    run(scenario())

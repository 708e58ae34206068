"""The server over real HTTP and WebSocket, with the SDK and with hand-made requests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from infrafabric import (
    Keyring,
    Outbox,
    SigningIdentity,
    agent_id,
    build_message,
    encode_json,
    new_key_record,
)
from infrafabric.client import Client, RemoteError
from infrafabric.protocol.verify import Verifier
from infrafabric.server.app import ServerState
from infrafabric.server.hub import REPLAY_LIMIT
from infrafabric.server.openapi import OPENAPI
from infrafabric.server.runner import open_server, run_server
from tests.harness import signed_request
from tests.server.conftest import Fabric, token_of


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_health_and_openapi_describe_every_route(fabric: Fabric) -> None:
    health = httpx.get(f"{fabric.url}/v1/health").json()
    assert health["status"] == "ok"
    spec = httpx.get(f"{fabric.url}/v1/openapi.json").json()
    routes = {route.path for route in fabric.server.server.config.app.routes}  # type: ignore[attr-defined]
    assert routes == set(spec["paths"]) == set(OPENAPI["paths"])


def test_an_agent_works_a_board_through_the_sdk(fabric: Fabric) -> None:
    alice = fabric.enroll("alice", ("code:python",))

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as agent:
            created = await agent.create_tasks(
                [
                    {"id": "a", "title": "write"},
                    {"id": "b", "title": "review", "dependencies": ["a"]},
                ]
            )
            assert [t["state"] for t in created] == ["available", "waiting"]
            task = await agent.claim_next()
            assert task is not None
            assert task["id"] == "a"
            await agent.progress("a", 50, "half way")
            done = await agent.complete("a", {"lines": 120})
            assert done["state"] == "completed"
            assert (await agent.task("b"))["state"] == "available"
            events = await agent.events()
            kinds = [event["kind"] for event in events if event["component"] == "board"]
            assert kinds[-3:] == ["task.progress", "task.completed", "task.released"]

    run(scenario())


def test_authentication_refuses_wrong_keys_and_reused_challenges(fabric: Fabric) -> None:
    alice = fabric.enroll("alice")
    impostor = SigningIdentity.generate(alice.agent)

    async def scenario() -> None:
        with pytest.raises(RemoteError) as caught:
            async with Client.connect(fabric.url, impostor):
                pass
        assert caught.value.code == "UNKNOWN_KEY"
        assert caught.value.status == 401

    run(scenario())
    challenge = httpx.post(f"{fabric.url}/v1/auth/challenge", json={"agent": alice.agent}).json()[
        "challenge"
    ]
    from infrafabric.protocol.identity import b64url_decode, b64url_encode
    from infrafabric.server.auth import auth_input

    answer = {
        "agent": alice.agent,
        "kid": alice.kid,
        "challenge": challenge,
        "signature": b64url_encode(
            alice.sign_bytes(auth_input(b64url_decode(challenge), alice.agent))
        ),
    }
    assert httpx.post(f"{fabric.url}/v1/auth/token", json=answer).status_code == 200
    again = httpx.post(f"{fabric.url}/v1/auth/token", json=answer)
    assert (again.status_code, again.json()["error"]["code"]) == (401, "BAD_CHALLENGE")
    assert httpx.get(f"{fabric.url}/v1/tasks").json()["error"]["code"] == "UNAUTHENTICATED"


def test_an_enrollment_refused_halfway_through_its_keys_trusts_none_of_them(
    fabric: Fabric, tmp_path: Path
) -> None:
    """The records before the one refused stayed trusted in the server's memory (not on
    disk, not witnessed): the agent could sign in and act until the server restarted."""
    bob = SigningIdentity.generate(agent_id("bob"))
    twice = SigningIdentity.generate(agent_id("bob"))  # one key listed as two versions
    now = time.time() - 60
    records = [
        new_key_record(bob.agent, bob.public_key, version=1, now=now),
        new_key_record(bob.agent, twice.public_key, version=2, now=now),
        new_key_record(bob.agent, twice.public_key, version=3, now=now),
    ]
    document = {
        "format": "infrafabric-keyring/1",
        "keys": [msgspec.to_builtins(r) for r in records],
    }
    refused = httpx.post(
        f"{fabric.url}/v1/admin/agents",
        json={"keys": document},
        headers={"authorization": f"Bearer {fabric.admin}"},
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "KEY_CONFLICT")

    async def scenario() -> None:
        with pytest.raises(RemoteError) as caught:
            async with Client.connect(fabric.url, bob):
                pass
        assert (caught.value.code, caught.value.status) == ("UNKNOWN_KEY", 401)

    run(scenario())
    assert not list((tmp_path / "data").rglob("bob.json"))  # nor written down
    assert bob.agent not in [a["id"] for a in fabric.admin_get("/v1/agents").json()["agents"]]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/events?limit=0",  # a pager that never advances: it answered [] for ever
        "/v1/events?after=-1",
        "/v1/events?limit=1e3",
        "/v1/events?after=" + "9" * 19,
        "/v1/inbox?after=x",
        "/v1/events?after=%C2%B2",  # "²": a digit to str.isdigit, not to int()
    ],
)
def test_a_query_number_out_of_its_range_is_refused_with_a_reason(
    fabric: Fabric, path: str
) -> None:
    alice = fabric.enroll("alice")

    async def token() -> str:
        async with Client.connect(fabric.url, alice) as client:
            return await token_of(fabric, client)

    reply = httpx.get(f"{fabric.url}{path}", headers={"authorization": f"Bearer {run(token())}"})
    assert (reply.status_code, reply.json()["error"]["code"]) == (400, "MALFORMED"), reply.text


def test_a_signature_of_the_wrong_length_is_refused_as_bad_not_as_a_crash(fabric: Fabric) -> None:
    """PyNaCl raises its own ValueError for a signature that is not 64 bytes; it reached
    the client as a 500."""
    from infrafabric.protocol.identity import b64url_decode, b64url_encode
    from infrafabric.server.auth import auth_input

    alice = fabric.enroll("alice")
    challenge = httpx.post(f"{fabric.url}/v1/auth/challenge", json={"agent": alice.agent}).json()[
        "challenge"
    ]
    good = alice.sign_bytes(auth_input(b64url_decode(challenge), alice.agent))
    for signature in (b"\0\0\0", good[:63], good + b"\0", b""):
        answer = {
            "agent": alice.agent,
            "kid": alice.kid,
            "challenge": challenge,
            "signature": b64url_encode(signature),
        }
        refused = httpx.post(f"{fabric.url}/v1/auth/token", json=answer)
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "BAD_SIGNATURE")
    # an answer that is not base64url is a malformed request (400), as the docs' table says
    for field in ("signature", "challenge"):
        garbled = {**answer, field: "!!"}
        refused = httpx.post(f"{fabric.url}/v1/auth/token", json=garbled)
        assert (refused.status_code, refused.json()["error"]["code"]) == (400, "MALFORMED")
    # a refused answer does not spend the challenge: the right one still gets a token
    answer["signature"] = b64url_encode(good)
    assert httpx.post(f"{fabric.url}/v1/auth/token", json=answer).status_code == 200


def _post(fabric: Fabric, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{fabric.url}/v1/messages", content=body, headers={"content-type": "application/json"}
    )


def _board_state(fabric: Fabric) -> tuple[Any, Any]:
    return fabric.admin_get("/v1/tasks").json(), fabric.admin_get("/v1/events").json()


def op(
    outbox: Outbox, content: dict[str, Any], *, to: str = "if://service/board", age: float = 0
) -> bytes:
    """A signed request from ``outbox``, sent ``age`` seconds ago."""
    return encode_json(
        outbox.message(now=time.time() - age, performative="request", receiver=to, content=content)
    )


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda o, ok: b"{not json", 400, "MALFORMED"),
        (lambda o, ok: b"{" + b" " * 70_000 + b"}", 413, "TOO_LARGE"),
        (lambda o, ok: ok.replace(b'"claim"', b'"cancel"'), 401, "BAD_SIGNATURE"),
        (lambda o, ok: op(o, {"op": "claim", "task_id": "a"}, age=900), 401, "EXPIRED"),
        (lambda o, ok: op(o, {"op": "fly"}), 422, "INVALID_OPERATION"),
        (lambda o, ok: op(o, {"op": "complete", "task_id": "a"}), 403, "NOT_OWNER"),
        (lambda o, ok: op(o, {}, to="if://service/nope"), 404, "UNKNOWN_SERVICE"),
    ],
    ids=[
        "malformed",
        "oversized",
        "forged",
        "expired",
        "unknown-op",
        "not-owner",
        "unknown-service",
    ],
)
def test_bad_requests_get_a_reason_code_and_change_nothing(
    fabric: Fabric, make: Any, status: int, code: str
) -> None:
    alice = fabric.enroll("alice")
    outbox = Outbox(alice, last_sequence=1000)
    setup = outbox.message(
        now=time.time(),
        performative="request",
        receiver="if://service/board",
        content={"op": "create", "tasks": [{"id": "a", "title": "A"}]},
    )
    assert _post(fabric, encode_json(setup)).status_code == 200
    valid = encode_json(
        outbox.message(
            now=time.time(),
            performative="request",
            receiver="if://service/board",
            content={"op": "claim", "task_id": "a"},
        )
    )
    before = _board_state(fabric)
    response = _post(fabric, make(outbox, valid))
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert _board_state(fabric) == before


def test_a_replayed_request_is_refused(fabric: Fabric) -> None:
    alice = fabric.enroll("alice")
    outbox = Outbox(alice, last_sequence=1000)
    create = encode_json(
        outbox.message(
            now=time.time(),
            performative="request",
            receiver="if://service/board",
            content={"op": "create", "tasks": [{"title": "once"}]},
        )
    )
    assert _post(fabric, create).status_code == 200
    replay = _post(fabric, create)
    assert (replay.status_code, replay.json()["error"]["code"]) == (409, "REPLAY")
    # the very bytes again: no highest, or a client would sign the operation anew
    assert "highest" not in replay.json()["error"]
    assert len(fabric.admin_get("/v1/tasks").json()["tasks"]) == 1
    # a fresh message under a number taken, or one below the window: the refusal names the
    # highest accepted, so that a client (the SDK) may number its next above it
    for last, code in ((1000, "REPLAY"), (900, "OUT_OF_SEQUENCE")):
        again = Outbox(alice, last_sequence=last).message(
            now=time.time(),
            performative="request",
            receiver="if://service/board",
            content={"op": "create", "tasks": [{"title": "again"}]},
        )
        refused = _post(fabric, encode_json(again))
        assert refused.status_code == 409
        assert (refused.json()["error"]["code"], refused.json()["error"]["highest"]) == (code, 1001)
    assert len(fabric.admin_get("/v1/tasks").json()["tasks"]) == 1


def test_agents_must_be_enrolled_and_messages_signed(fabric: Fabric) -> None:
    stranger = SigningIdentity.generate(agent_id("stranger"))
    outbox = Outbox(stranger)
    response = _post(
        fabric,
        encode_json(
            outbox.message(
                now=time.time(),
                performative="request",
                receiver="if://service/board",
                content={"op": "claim_next"},
            )
        ),
    )
    assert response.json()["error"]["code"] == "UNKNOWN_KEY"
    unsigned = build_message(
        performative="request",
        sender="if://agent/stranger",
        receiver="if://service/board",
        content={"op": "claim_next"},
        now=time.time(),
        sequence_num=1,
    )
    assert _post(fabric, encode_json(unsigned)).json()["error"]["code"] == "UNSIGNED"


def test_direct_messages_wait_in_the_inbox_until_acknowledged(fabric: Fabric) -> None:
    alice, bob = fabric.enroll("alice"), fabric.enroll("bob")

    async def scenario() -> None:
        async with (
            Client.connect(fabric.url, alice) as sender,
            Client.connect(fabric.url, bob) as receiver,
        ):
            await sender.send(bob.agent, "inform", {"note": "offline delivery"})
            async with receiver.stream() as frames:
                await sender.send(bob.agent, "inform", {"note": "live delivery"})
                received = []
                async for frame in frames:
                    received.append(frame)
                    if len(received) == 2:
                        break
            notes = [frame.message.content["note"] for frame in received]  # type: ignore[union-attr]
            assert notes == ["offline delivery", "live delivery"]
            assert [m.content["note"] for _, m in await receiver.inbox()] == notes
            for frame in received:
                assert await receiver.ack(frame.position)  # type: ignore[arg-type]
            assert await receiver.inbox() == []

    run(scenario())


def test_a_direct_message_to_an_agent_that_is_not_enrolled_is_refused(fabric: Fabric) -> None:
    """It was stored in an inbox nobody would ever read, and a request to a mistyped
    agent waited out its whole timeout."""
    alice, bob = fabric.enroll("alice"), fabric.enroll("bob")

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as sender:
            for receivers in (["if://agent/nobody"], [bob.agent, "if://agent/nobody"]):
                with pytest.raises(RemoteError) as caught:
                    await sender.send(receivers, "inform", {"hello": True})
                assert (caught.value.code, caught.value.status) == ("UNKNOWN_RECEIVER", 404)
                assert "if://agent/nobody" in str(caught.value)
        async with Client.connect(fabric.url, bob) as receiver:
            assert await receiver.inbox() == []  # all its receivers or none

    run(scenario())


def test_a_help_request_waits_in_the_inbox_of_each_agent_it_invites(fabric: Fabric) -> None:
    alice = fabric.enroll("alice", ("code:python",))
    reviewer = fabric.enroll("reviewer", ("review:code",))
    bystander = fabric.enroll("bystander", ("code:python",))
    keyring = Keyring()
    keyring.add(new_key_record(alice.agent, alice.public_key, version=1, now=time.time() - 60))

    async def scenario() -> None:
        async with (
            Client.connect(fabric.url, alice) as asker,
            Client.connect(fabric.url, reviewer) as helper,
            Client.connect(fabric.url, bystander) as other,
            helper.stream() as frames,
        ):
            await asker.create_tasks([{"id": "feature", "title": "Feature"}])
            await asker.claim("feature")
            assert await asker.request_help("feature", ["review:code"]) == [reviewer.agent]
            live = await asyncio.wait_for(frames.__aiter__().__anext__(), 5)
            [(position, waiting)] = await helper.inbox()  # also for an agent not listening
            assert live.position == position
            assert live.message == waiting
            assert waiting.sender == alice.agent
            assert waiting.content == {
                "op": "help",
                "task_id": "feature",
                "needed": ["review:code"],
            }
            verdict = Verifier(keyring).check(encode_json(waiting), now=time.time())
            assert verdict.reason is None  # the asker's own signature, not the fabric's
            assert await other.inbox() == []  # not qualified, not invited
            assert await helper.ack(position)
            assert await helper.inbox() == []

    run(scenario())


def test_board_events_stream_to_subscribers(fabric: Fabric) -> None:
    alice, watcher = fabric.enroll("alice"), fabric.enroll("watcher")

    async def scenario() -> None:
        async with (
            Client.connect(fabric.url, watcher) as observer,
            Client.connect(fabric.url, alice) as worker,
        ):
            async with observer.stream(["if://topic/board/task/*"]) as frames:
                # (subscribed once inside: the first change is seen without waiting)
                await worker.create_task("watched", id="w")
                await worker.claim("w")
                kinds = []
                async for frame in frames:
                    kinds.append(frame.data["event"]["kind"])
                    if "task.claimed" in kinds:
                        break
            assert kinds == ["task.created", "task.claimed"]

    run(scenario())


def test_a_subscriber_asking_for_replay_gets_the_latest_messages_of_its_topics_first(
    fabric: Fabric,
) -> None:
    """A client that reconnects asks for ``replay`` to catch up on what it missed: it gets
    the topic messages the hub still keeps (the latest REPLAY_LIMIT, whatever their
    topic), only those of its topics, oldest first, before live ones; a client that does
    not ask gets live messages only."""
    hub = fabric.server.state.hub
    assert hub is not None
    alice, late, fresh = fabric.enroll("alice"), fabric.enroll("late"), fabric.enroll("fresh")
    news, other = "if://topic/news", "if://topic/other"

    async def until_live(frames: Any) -> list[Any]:
        """What the stream brings up to and excluding the live message ``n: live``."""
        got = []
        async for frame in frames:
            n = frame.data["message"]["content"]["n"]
            if n == "live":
                return got
            got.append((frame.topic, n))
        raise AssertionError("the stream ended before the live message")

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as sender:
            published: list[tuple[str, int]] = []
            for n in range(REPLAY_LIMIT + 5):  # a few more than the hub keeps
                await sender.send(news, "inform", {"n": n})
                published.append((news, n))
                if n % 40 == 0:
                    await sender.send(other, "inform", {"n": n})
                    published.append((other, n))
            kept = published[-REPLAY_LIMIT:]
            expected = [(topic, n) for topic, n in kept if topic == news]
            assert expected[-1] == (news, REPLAY_LIMIT + 4)
            assert len(expected) < REPLAY_LIMIT  # messages of the other topic took room
            async with (
                Client.connect(fabric.url, late) as reconnecting,
                Client.connect(fabric.url, fresh) as newcomer,
                reconnecting.stream([news], replay=True) as replayed,
                newcomer.stream([news]) as live_only,
            ):
                await eventually(lambda: sum(1 for c in hub.connections.copy() if c.topics) == 2)
                await sender.send(news, "inform", {"n": "live"})
                caught_up = await asyncio.wait_for(until_live(replayed), 10)
                assert caught_up == expected
                assert await asyncio.wait_for(until_live(live_only), 10) == []

    run(scenario())


async def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait until ``condition`` holds (a loaded machine may take a while), or fail."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.05)


def raw_websocket(url: str, token: str) -> socket.socket:
    """A WebSocket client that subscribes to the flood topic, then never reads again: its
    receive buffer is tiny, so the kernel pushes back on the server at once."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    connection.sendall(
        f"GET /v1/ws?token={token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert connection.recv(12) == b"HTTP/1.1 101"
    payload = json.dumps({"type": "subscribe", "topics": ["if://topic/flood"]}).encode()
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    connection.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)  # one masked text frame
    return connection


def test_a_client_that_stops_reading_is_dropped_and_stalls_nobody(
    small_queues: tuple[Fabric, ServerState],
) -> None:
    fabric, state = small_queues
    alice, slow = fabric.enroll("alice"), fabric.enroll("slow")

    async def scenario() -> None:
        async with Client.connect(fabric.url, slow) as lazy:
            await lazy._ensure_token()
            stalled = raw_websocket(fabric.url, lazy._token or "")
            await eventually(
                lambda: [c.agent for c in state.hub.connections] == [slow.agent]  # type: ignore[union-attr]
            )
            async with Client.connect(fabric.url, alice) as busy:
                # 200 x 60 KB: past the socket buffers, then the queue. Each send
                # would fail with TIMEOUT (the SDK's 30 s) were the sender held up
                # behind the stalled reader; every one is answered.
                for _ in range(200):
                    sent = await busy.send("if://topic/flood", "inform", {"blob": "x" * 60_000})
                    assert sent["published"] == ["if://topic/flood"]
            await eventually(lambda: state.hub.connections == set())  # type: ignore[union-attr]
            stalled.close()

    run(scenario())


def test_the_sync_client_for_code_that_is_not_async(fabric: Fabric) -> None:
    from infrafabric.client import SyncClient

    worker = fabric.enroll("worker")
    with SyncClient.connect(fabric.url, worker) as agent:
        agent.create_task("plain code", id="p")
        assert agent.claim_next()["id"] == "p"
        assert agent.complete("p", {"ok": True})["state"] == "completed"
        with pytest.raises(AttributeError, match="async Client"):
            agent.stream  # noqa: B018 - the attribute access is the test
        # Client.trace works here too (docs/server.md says so): it had no trace
        assert agent.identity is worker
        with agent.trace("trace-of-q"):
            agent.create_task("traced", id="q")
        created = [e for e in agent.events() if e["kind"] == "task.created"]
        assert [e.get("trace_id") for e in created] == [None, "trace-of-q"]


def test_websocket_frames_carry_signed_messages_and_name_each_refusal(fabric: Fabric) -> None:
    import websockets.asyncio.client

    alice, bob = fabric.enroll("alice"), fabric.enroll("bob")

    async def scenario() -> None:
        async with Client.connect(fabric.url, alice) as sender:
            await sender.send(bob.agent, "inform", {"waiting": True})  # for bob's inbox
        async with Client.connect(fabric.url, bob) as client:
            await client._ensure_token()
            ws_url = fabric.url.replace("http://", "ws://")
            outbox = Outbox(bob)
            good = op(outbox, {"op": "create", "tasks": [{"id": "w", "title": "W"}]})
            forged = op(outbox, {"op": "claim", "task_id": "w"}).replace(b'"w"', b'"x"')
            async with websockets.asyncio.client.connect(
                f"{ws_url}/v1/ws?inbox=false&token={client._token}"
            ) as socket_:
                frames = [
                    b'{"type":"send","id":1,"message":%s}' % good,
                    b'{"type":"send","id":2,"message":%s}' % forged,
                    b'{"type":"send","id":3}',
                    b'{"type":"send","id":4,"message":[1,2]}',
                    b'{"type":"fly","id":5}',
                    b'{"id":6,"type":7}',
                ]
                for frame in frames:
                    await socket_.send(frame.decode())
                replies = [json.loads(await socket_.recv()) for _ in frames]
            # a request-only connection got no copy of bob's pending message
            assert [reply["id"] for reply in replies] == [1, 2, 3, 4, 5, 6]
            assert replies[0]["type"] == "reply"
            assert replies[0]["result"]["tasks"][0]["id"] == "w"
            assert [
                (reply["type"], reply["error"]["code"], reply.get("status"))
                for reply in replies[1:]
            ] == [
                ("error", "BAD_SIGNATURE", 401),
                ("error", "MALFORMED", 400),
                ("error", "MALFORMED", 400),
                ("error", "MALFORMED", 400),
                ("error", "MALFORMED", 400),
            ]
            async with websockets.asyncio.client.connect(
                f"{ws_url}/v1/ws?token={client._token}"
            ) as socket_:  # the default connection delivers the inbox
                pushed = json.loads(await socket_.recv())
            assert (pushed["type"], pushed["message"]["content"]) == ("message", {"waiting": True})

    run(scenario())


def test_the_sdk_reconnects_after_a_server_restart(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def serve() -> Any:
        return run_server(open_server(tmp_path / "data", synchronous="NORMAL"), port=port)

    async def scenario() -> None:
        first = contextlib.ExitStack()  # the first server, stopped in the middle
        server = first.enter_context(serve())
        fabric = Fabric(server, (tmp_path / "data" / "admin.token").read_text().strip())
        alice = fabric.enroll("alice")
        async with Client.connect(server.url, alice) as agent:
            await agent.create_task("before", id="a")
            await asyncio.to_thread(first.close)  # it stops and lets go of its data
            with pytest.raises(RemoteError) as caught:
                await agent.create_task("while down", id="b")
            assert caught.value.code == "DISCONNECTED"
            assert caught.value.retryable
            with serve():  # same port, same data, a new socket
                await agent.create_task("after", id="c")
                assert [t["id"] for t in await agent.tasks()] == ["a", "c"]

    run(scenario())


def test_any_checked_message_counts_as_hearing_from_its_agent(fabric: Fabric) -> None:
    """An agent that only talks (a mesh peer's hellos, direct messages) is alive too;
    a message that failed a check proves nothing about its sender."""
    chatty, quiet = fabric.enroll("chatty"), fabric.enroll("quiet")

    async def talk() -> None:
        async with Client.connect(fabric.url, chatty) as agent:
            await agent.send("if://topic/chatter", "inform", {"hello": True})

    asyncio.run(talk())
    forged = encode_json(signed_request(quiet, "if://topic/chatter", {"x": 1})).replace(
        b'"x":1', b'"x":2'
    )
    assert (
        httpx.post(
            f"{fabric.url}/v1/messages",
            content=forged,
            headers={"content-type": "application/json"},
        ).status_code
        == 401
    )
    agents = {a["id"]: a for a in fabric.admin_get("/v1/agents").json()["agents"]}
    assert agents[chatty.agent]["health"] == "green"
    assert agents[chatty.agent]["seen_at"] is not None
    assert agents[quiet.agent]["seen_at"] is None


def test_a_task_is_cancelled_by_its_creator_or_an_operator_only(fabric: Fabric) -> None:
    from infrafabric import KeyRole
    from tests.harness import enroll

    alice, bob = fabric.enroll("alice"), fabric.enroll("bob")
    operator = enroll(fabric.url, fabric.admin, "ops", role=KeyRole.OPERATOR)

    async def scenario() -> None:
        async with (
            Client.connect(fabric.url, alice) as creator,
            Client.connect(fabric.url, bob) as other,
            Client.connect(fabric.url, operator) as ops,
        ):
            await creator.create_tasks([{"id": "a", "title": "A"}, {"id": "b", "title": "B"}])
            with pytest.raises(RemoteError) as refused:
                await other.cancel("a", "not mine")
            assert (refused.value.code, refused.value.status) == ("NOT_CREATOR", 403)
            assert (await ops.cancel("a", "stale"))["state"] == "cancelled"  # refused before
            assert (await creator.cancel("b", "done with it"))["state"] == "cancelled"

    run(scenario())


def test_a_blocked_agent_is_offered_the_fillers_the_governor_would_give_it(
    fabric: Fabric,
) -> None:
    """``code:*`` covers ``code:python`` for the governor, which gives such an agent main
    work needing it; the filler offer used the board's exact test and passed over the
    better filler for one that needs nothing."""
    alice = fabric.enroll("alice", ("code:*",))

    async def scenario() -> tuple[str | None, str | None]:
        async with Client.connect(fabric.url, alice) as agent:
            await agent.create_tasks(
                [
                    {
                        "id": "main",
                        "title": "M",
                        "required_capabilities": ["code:python"],
                        "priority": 90,
                    },
                    {
                        "id": "fill",
                        "title": "F",
                        "required_capabilities": ["code:python"],
                        "filler": True,
                    },
                    {"id": "fill-any", "title": "F", "filler": True, "priority": 10},
                ]
            )
            claimed = await agent.claim_next()
            _, filler = await agent.block("main", "waiting", "needs a review")
            return (claimed and claimed["id"]), (filler and filler["id"])

    assert run(scenario()) == ("main", "fill")


def test_the_board_is_listed_a_page_at_a_time(
    fabric: Fabric, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GET /v1/tasks`` answers a page (read under the store's lock: the whole of a
    large board held every claim up while it was read); the SDK, the CLI and the
    dashboard read the pages in turn."""
    from infrafabric.cli.board import _read_tasks
    from infrafabric.server import app

    alice = fabric.enroll("alice")
    ids = [f"t{i}" for i in range(7)]

    async def make() -> None:
        async with Client.connect(fabric.url, alice) as agent:
            await agent.create_tasks([{"id": i, "title": i} for i in ids])
            await agent.claim("t3")

    run(make())
    first = fabric.admin_get("/v1/tasks?limit=3").json()
    assert ([t["id"] for t in first["tasks"]], first["next"]) == (ids[:3], "t2")
    second = fabric.admin_get("/v1/tasks?limit=3&after=t2").json()
    assert ([t["id"] for t in second["tasks"]], second["next"]) == (ids[3:6], "t5")
    last = fabric.admin_get("/v1/tasks?limit=3&after=t5").json()
    assert ([t["id"] for t in last["tasks"]], last["next"]) == (["t6"], None)
    claimed = fabric.admin_get("/v1/tasks?state=claimed&limit=3").json()
    assert ([t["id"] for t in claimed["tasks"]], claimed["next"]) == (["t3"], None)
    assert [t["id"] for t in fabric.admin_get("/v1/tasks").json()["tasks"]] == ids
    for refused in ("limit=0", "limit=-1", "limit=x", f"after={'a' * 129}"):
        reply = fabric.admin_get(f"/v1/tasks?{refused}")
        assert (reply.status_code, reply.json()["error"]["code"]) == (400, "MALFORMED"), refused
    monkeypatch.setattr(app, "MAX_TASK_PAGE", 2)  # a page of two, whatever is asked
    assert len(fabric.admin_get("/v1/tasks?limit=5000").json()["tasks"]) == 2

    async def listed() -> tuple[list[str], list[str]]:
        async with Client.connect(fabric.url, alice) as agent:
            every = [t["id"] for t in await agent.tasks()]
            available = [t["id"] for t in await agent.tasks("available")]
            return every, available

    every, available = run(listed())
    assert every == ids
    assert available == [i for i in ids if i != "t3"]
    assert [t["id"] for t in _read_tasks(fabric.url, None, fabric.admin)] == ids
    assert [t["id"] for t in _read_tasks(fabric.url, None, fabric.admin, ["claimed"])] == ["t3"]

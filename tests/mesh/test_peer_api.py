"""The mesh peer from Python: the SDK's `send` prefers the mesh, and a peer that stops
reading cannot make its sender's memory grow (real aiortc channels, a real server)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

from infrafabric.client import Client
from infrafabric.keystore import Keystore
from infrafabric.mesh.peer import MeshMessage, MeshPeer, MeshSettings
from tests.harness import PASS, Fabric, local_agent
from tests.mesh.conftest import Peer

LOOPBACK = MeshSettings(host_addresses=("127.0.0.1",))


def identity(fabric: Fabric, name: str):  # type: ignore[no-untyped-def]
    local_agent(fabric, name)
    return Keystore(fabric.home).unlock(name, PASS)


async def first(peer: MeshPeer, wanted: Callable[[MeshMessage], bool]) -> MeshMessage:
    async for received in peer.messages():
        await peer.ack(received)
        if wanted(received):
            return received
    raise AssertionError("the stream ended")


def test_the_sdk_sends_over_the_mesh_when_it_can_and_through_the_server_when_not(
    fabric: Fabric,
) -> None:
    alice, bob = identity(fabric, "alice"), identity(fabric, "bob")

    async def until_linked(peer: MeshPeer, other: str) -> None:
        deadline = time.monotonic() + 30
        while other not in peer.node.links:
            assert time.monotonic() < deadline, "no link"
            await asyncio.sleep(0.05)

    async def bob_online(a: Client, mesh_a: MeshPeer, b: Client) -> None:
        async with MeshPeer.join(b, LOOPBACK) as mesh_b:
            await until_linked(mesh_a, bob.agent)
            taking = asyncio.create_task(first(mesh_b, lambda m: m.message.content == {"n": 1}))
            reply = await a.send(bob.agent, "inform", {"n": 1})
            assert reply["delivered"] == [{"receiver": bob.agent, "via": "mesh"}]
            assert (await taking).via == "mesh"
            # a topic is not a mesh peer: through the server as before
            published = await a.send("if://topic/news", "inform", {"n": 2})
            assert published["published"] == ["if://topic/news"]

    async def scenario() -> None:
        async with (
            Client.connect(fabric.url, alice) as a,
            Client.connect(fabric.url, bob) as b,
            MeshPeer.join(a, LOOPBACK) as mesh_a,
        ):
            a.use_mesh(mesh_a)
            await bob_online(a, mesh_a, b)
            # bob left (it said bye): the next message waits in its inbox
            reply = await a.send(bob.agent, "inform", {"n": 3})
            assert "via" not in reply["delivered"][0]
            [(_, message)] = await b.inbox()
            assert message.content == {"n": 3}

    asyncio.run(scenario())


def test_a_peer_that_stops_reading_cannot_grow_its_senders_memory(
    fabric: Fabric, peers: Callable[..., Peer]
) -> None:
    slow = peers("slow")
    sender = identity(fabric, "sender")

    async def scenario() -> tuple[int, int, int, int]:
        async with (
            Client.connect(fabric.url, sender) as client,
            MeshPeer.join(client, LOOPBACK) as mesh,
        ):
            deadline = time.monotonic() + 30
            while slow.agent not in mesh.node.links:
                assert time.monotonic() < deadline, "no link"
                await asyncio.sleep(0.05)
            link = mesh.links[slow.agent]
            slow.process.send_signal(signal.SIGSTOP)  # it reads nothing from now on
            try:
                most_buffered = most_queued = 0
                blob = "x" * 4000
                for n in range(3000):  # 12 MB of broadcasts
                    await mesh.broadcast({"n": n, "blob": blob})
                    assert link.channel is not None
                    most_buffered = max(most_buffered, link.channel.bufferedAmount)
                    most_queued = max(most_queued, link.outlet.queued_bytes)
                    if n % 50 == 0:
                        await asyncio.sleep(0)  # let SCTP send what the window allows
                # a direct message meanwhile: the congested link cannot take it
                sent = await mesh.send(slow.agent, "inform", {"urgent": True})
            finally:
                slow.process.send_signal(signal.SIGCONT)
            return most_buffered, most_queued, link.outlet.refused, sent["via"] == "server"

    buffered, queued, refused, fell_back = asyncio.run(scenario())
    outlet_bound = 1024 * 1024
    assert queued <= outlet_bound
    assert buffered <= 256 * 1024 + 64 * 1024  # high water plus one batch
    assert refused > 0  # beyond the bound, broadcasts were dropped for this link
    assert fell_back  # and the direct message went through the server
    slow.expect(lambda line: line.get("content", {}).get("urgent") is True, 30)


def test_a_server_copy_leaves_the_inbox_only_once_the_agent_took_the_message(
    fabric: Fabric,
) -> None:
    """Bob's agent is slow: alice's mesh message is not acknowledged in time, so it goes
    through the server too. The server's copy must stay in bob's inbox until bob has
    taken the mesh copy (bob could die holding it), then leave with it, taken once."""
    alice, bob = identity(fabric, "alice"), identity(fabric, "bob")

    async def scenario() -> None:
        async with (
            Client.connect(fabric.url, alice) as a,
            Client.connect(fabric.url, bob) as b,
            MeshPeer.join(a, LOOPBACK) as mesh_a,
            MeshPeer.join(b, LOOPBACK) as mesh_b,
        ):
            deadline = time.monotonic() + 30
            while bob.agent not in mesh_a.node.links:
                assert time.monotonic() < deadline, "no link"
                await asyncio.sleep(0.05)
            sent = await mesh_a.send(bob.agent, "inform", {"n": 1})  # bob takes nothing yet
            assert sent["via"] == "server"
            await asyncio.sleep(0.5)  # the server's copy reached bob's peer meanwhile
            assert [m.id for _, m in await b.inbox()] == [sent["id"]]  # still kept
            first = await asyncio.wait_for(mesh_b._inbox.get(), 5)
            assert (first.message.id, first.via) == (sent["id"], "mesh")
            await mesh_b.ack(first)
            assert await b.inbox() == []  # the server's copy left with it
            assert mesh_b._inbox.empty()  # and was not handed to the agent again

    asyncio.run(scenario())

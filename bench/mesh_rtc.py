"""The mesh on real WebRTC (issue 9): two aiortc peers on loopback beside a real server.

* **Round trip**: agent A sends agent B a signed direct message and B answers with one;
  over the mesh (each verified by its receiver, B's arrival acknowledged) and, in the
  same run, through the server (each message verified, committed and pushed to the
  other's WebSocket). The baseline under both: a bare data channel echo of the same
  bytes, unsigned.
* **Throughput**: signed direct messages A -> B, 32 in flight, each acknowledged.
* **Setup**: from a peer joining to its data channel being open (presence, offer,
  answer, ICE and DTLS on loopback), several times.

Both peers and the server share this process and its 2 cores.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from tests.harness import enroll

from claims import milliseconds_row, render
from infrafabric.client import Client
from infrafabric.mesh.peer import MeshMessage, MeshPeer, MeshSettings
from infrafabric.server.runner import open_server, run_server

LOOPBACK = MeshSettings(host_addresses=("127.0.0.1",))


async def linked(peer: MeshPeer, other: str) -> None:
    while other not in peer.node.links:
        await asyncio.sleep(0.001)


async def raw_echo(count: int) -> list[float]:
    """A bare data channel, two RTCPeerConnections in this process: the floor."""
    from aiortc import RTCPeerConnection

    a, b = RTCPeerConnection(), RTCPeerConnection()
    channel = a.createDataChannel("echo")

    @b.on("datachannel")
    def echo(remote: object) -> None:
        remote.on("message", lambda data: remote.send(data))  # type: ignore[attr-defined]

    opened = asyncio.Event()
    channel.on("open", opened.set)
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    await opened.wait()
    answers: asyncio.Queue[object] = asyncio.Queue()
    channel.on("message", answers.put_nowait)
    payload = b"x" * 700  # about a signed message's size
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        channel.send(payload)
        await answers.get()
        samples.append(time.perf_counter() - start)
    await a.close()
    await b.close()
    return samples


async def scenario(url: str, admin: str, count: int) -> list[tuple[str, str]]:
    alice, bob = enroll(url, admin, "alice"), enroll(url, admin, "bob")
    rows = [milliseconds_row("bare data channel echo (baseline)", await raw_echo(count))]
    async with Client.connect(url, alice) as a, Client.connect(url, bob) as b:
        setups = []
        async with MeshPeer.join(a, LOOPBACK) as mesh_a:
            for _ in range(5):
                start = time.perf_counter()
                async with MeshPeer.join(b, LOOPBACK) as mesh_b:
                    await linked(mesh_a, bob.agent)
                    await linked(mesh_b, alice.agent)
                    setups.append(time.perf_counter() - start)
                await asyncio.sleep(0.3)  # bob's bye is heard before the next join
            async with MeshPeer.join(b, LOOPBACK) as mesh_b:
                await linked(mesh_a, bob.agent)

                async def answer() -> None:  # bob answers each message, acknowledged
                    async for received in mesh_b.messages():
                        await mesh_b.ack(received)
                        if received.message.content.get("ask"):
                            await mesh_b.send(received.message.sender, "inform", {"answer": True})

                answering = asyncio.create_task(answer())
                replies: asyncio.Queue[MeshMessage] = asyncio.Queue()

                async def collect() -> None:
                    async for received in mesh_a.messages():
                        await mesh_a.ack(received)
                        replies.put_nowait(received)

                collecting = asyncio.create_task(collect())
                mesh_rtt = []
                for _ in range(count):
                    start = time.perf_counter()
                    await mesh_a.send(bob.agent, "request", {"ask": True})
                    await replies.get()
                    mesh_rtt.append(time.perf_counter() - start)
                rows.append(milliseconds_row("mesh: signed request and answer", mesh_rtt))
                acked = []
                for _ in range(count):
                    start = time.perf_counter()
                    sent = await mesh_a.send(bob.agent, "inform", {"n": 1})
                    acked.append(time.perf_counter() - start)
                    assert sent["via"] == "mesh"
                rows.append(milliseconds_row("mesh: one message, acknowledged", acked))
                total = count * 4
                window = asyncio.Semaphore(32)

                async def one(n: int) -> None:
                    async with window:
                        await mesh_a.send(bob.agent, "inform", {"n": n})

                start = time.perf_counter()
                await asyncio.gather(*(one(n) for n in range(total)))
                rate = total / (time.perf_counter() - start)
                answering.cancel()
                collecting.cancel()
        rows.append(milliseconds_row("mesh: join to open channel", setups))
        rows.append(
            ("mesh: throughput, 32 in flight", f"{rate:8,.0f} messages/s, each acknowledged")
        )
        server_rtt = await through_server(a, b, count)
        rows.append(milliseconds_row("server: signed request and answer", server_rtt))
        ratio = statistics.median(server_rtt) / statistics.median(mesh_rtt)
        rows.append(("mesh vs server round trip", f"the mesh is {ratio:.1f}x faster at the median"))
    return rows


async def through_server(a: Client, b: Client, count: int) -> list[float]:
    """The same request and answer through the server, both agents on WebSockets."""
    samples = []
    async with b.stream() as b_frames, a.stream() as a_frames:
        b_iter, a_iter = aiter(b_frames), aiter(a_frames)
        for _ in range(count):
            start = time.perf_counter()
            await a.send_via_server(b.agent, "request", {"ask": True})
            frame = await anext(b_iter)
            await b.send_via_server(a.agent, "inform", {"answer": True})
            reply = await anext(a_iter)
            samples.append(time.perf_counter() - start)
            await b.ack(frame.position)  # type: ignore[arg-type]
            await a.ack(reply.position)  # type: ignore[arg-type]
    return samples


def main(quick: bool = False) -> None:
    count = 100 if quick else 500
    print("\nMesh on real WebRTC: two aiortc peers on loopback and a server, in one process")
    with tempfile.TemporaryDirectory() as directory:
        state = open_server(Path(directory) / "data", synchronous="NORMAL")
        with run_server(state) as server:
            rows = asyncio.run(scenario(server.url, state.sessions.admin_token, count))
    print(render(rows))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)

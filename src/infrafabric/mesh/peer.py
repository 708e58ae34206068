"""A mesh peer over real WebRTC data channels (aiortc), driving a :class:`MeshNode`.

The fabric server is the signaling point and the last resort; peers talk directly:

* **Presence:** each peer says ``hello`` on ``if://topic/mesh-presence`` every
  ``presence_every`` seconds (``bye`` when it leaves); the members are the peers heard
  within ``presence_timeout``. A new ``session`` from a known peer means it restarted.
* **Signaling:** an offer or an answer is a signed message to the other peer's topic
  ``if://topic/mesh-signal/<name>``, through the server's WebSocket, and is checked by
  the receiving peer too. aiortc gathers every ICE candidate before it makes its
  offer or answer (it does not trickle: aiortc/aioice#4), so a link costs exactly two
  signaling messages, the candidates batched inside them.
* **Links:** the peer with the lower id offers (no crossing offers); a link not open
  within ``connect_timeout`` failed; a link silent for ``link_timeout`` (probes answer
  every 2 s) is lost, which a dead process's links are long before ICE notices.
* **Back-pressure:** each link's frames go through an :class:`Outlet`, batched while
  the channel's ``bufferedAmount`` is high.
* **Reports:** every ``report_every`` seconds the peer reports its links and link events
  to ``if://service/mesh`` (the events are witnessed).

Use :meth:`MeshPeer.join` with a connected :class:`~infrafabric.client.Client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec

from infrafabric.errors import CallerError
from infrafabric.mesh.heal import Backoff
from infrafabric.mesh.node import (
    BROADCAST_TOPIC,
    Action,
    Connect,
    Deliver,
    Disconnect,
    MeshEvent,
    MeshNode,
    Refusal,
    Refused,
    Sent,
    Transmit,
    ViaServer,
)
from infrafabric.mesh.outlet import Outlet
from infrafabric.mesh.signed import SignedMesh
from infrafabric.mesh.topology import Topology
from infrafabric.protocol.keyring import Keyring
from infrafabric.protocol.message import IFMessage, decode_json, encode_json

if TYPE_CHECKING:
    from aiortc import RTCDataChannel, RTCPeerConnection

    from infrafabric.client import Client

__all__ = ["MeshMessage", "MeshPeer", "MeshSettings", "TurnServer"]

_log = logging.getLogger(__name__)

PRESENCE_TOPIC: Final = "if://topic/mesh-presence"
CHANNEL_LABEL: Final = "ifmesh"
#: Events kept for the next report at most (the oldest are dropped beyond it).
MAX_PENDING_EVENTS: Final = 256
#: Messages waiting for the agent to take them: beyond it, broadcasts are dropped and
#: direct messages are left to reach it through the server's inbox (at most 64 MiB).
INBOX_LIMIT: Final = 1_000
#: Ids of messages the agent has taken, remembered to drop later copies.
TAKEN_KEPT: Final = 65_536
#: How often a peer reads the fabric's keys again (revocations reach it this soon).
KEYS_EVERY: Final = 30.0
#: Routes a report carries at most (the ones through a neighbour; direct links are in
#: the links already): a report must stay under the 64 KiB a message may have.
REPORTED_ROUTES: Final = 200


def stun_of(turn_url: str) -> str:
    """The STUN service of a TURN server (every TURN server answers STUN on its port)."""
    scheme, _, rest = turn_url.partition(":")
    if scheme not in ("turn", "turns"):
        raise CallerError(f"not a TURN URL: {turn_url!r} (turn:HOST:PORT)")
    return "stun:" + rest.split("?", 1)[0]


def signal_topic(agent: str) -> str:
    return f"if://topic/mesh-signal/{agent.removeprefix('if://agent/')}"


@dataclass(frozen=True, slots=True)
class TurnServer:
    """A TURN relay (coturn, or any RFC 8656 server): ``url`` as ``turn:host:port``."""

    url: str
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class MeshSettings:
    topology: Topology = field(default_factory=Topology)
    backoff: Backoff = field(default_factory=Backoff)
    turn: TurnServer | None = None
    relay_only: bool = False  # every link through the TURN relay (a restrictive network)
    host_addresses: tuple[str, ...] | None = None  # ICE host candidates only on these
    presence_every: float = 2.0
    presence_timeout: float = 7.0
    report_every: float = 5.0
    connect_timeout: float = 10.0
    link_timeout: float = 6.0
    ack_timeout: float = 2.0
    hop_limit: int = 8
    tick_every: float = 0.1

    def __post_init__(self) -> None:
        if self.relay_only and self.turn is None:
            raise CallerError("relay_only needs a TURN server")
        if self.turn is not None:
            stun_of(self.turn.url)  # a clear error now rather than at the first link
        if self.presence_timeout <= self.presence_every:
            raise CallerError("presence_timeout must be longer than presence_every")


@dataclass(frozen=True, slots=True)
class MeshMessage:
    """A message for this agent: ``via`` "mesh" (direct), "gossip" (a broadcast) or
    "server" (from the inbox). Acknowledge it with :meth:`MeshPeer.ack` once taken."""

    message: IFMessage
    via: str
    position: int | None = None  # the inbox position of a message that came via the server


@dataclass(eq=False)
class _Link:
    peer: str
    session: str
    pc: RTCPeerConnection
    relay: bool
    offered: bool
    channel: RTCDataChannel | None = None
    open: bool = False
    closed: bool = False
    last_heard: float = 0.0
    outlet: Outlet = field(default_factory=Outlet)


def _restrict_host_addresses(addresses: tuple[str, ...]) -> None:
    """Gather ICE host candidates only on ``addresses``: aioice has no option for it, so
    its address lookup is replaced in this process (tests keep peers on loopback)."""
    import aioice.ice

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


class MeshPeer:
    """One agent's place in the mesh. Build it with :meth:`join`."""

    def __init__(self, client: Client, settings: MeshSettings, keyring: Keyring) -> None:
        self.client = client
        self.settings = settings
        self.me = str(client.agent)
        self.signed = SignedMesh(client.outbox, keyring)
        self.session = secrets.token_hex(8)
        self.node = MeshNode(
            self.me,
            verify=self.signed.verify,
            sign_ack=self.signed.sign_ack,
            topology=settings.topology,
            backoff=settings.backoff,
            hop_limit=settings.hop_limit,
            ack_timeout=settings.ack_timeout,
            relay_available=settings.turn is not None,
        )
        self.links: dict[str, _Link] = {}
        self.presence: dict[str, tuple[float, str]] = {}  # peer -> (last hello, session)
        self.on_event: Callable[[MeshEvent], None] | None = None
        self.refused: dict[str, int] = {}
        self._inbox: asyncio.Queue[MeshMessage] = asyncio.Queue(maxsize=INBOX_LIMIT)
        self.dropped = 0  # messages the agent was too slow to take
        # A message is "taken" once the agent acknowledged it. Until then a copy from the
        # server's inbox is not acknowledged there (the agent may yet die with it): its
        # position waits here, and is acknowledged when the agent takes the message.
        self._untaken: dict[str, int | None] = {}
        self._taken: OrderedDict[str, None] = OrderedDict()
        self._queued_positions: set[int] = set()
        self._backlog = False  # the inbox was full: the server holds messages not queued
        self._stream_up = False
        self._next_keys = time.monotonic() + KEYS_EVERY
        self.events_at: deque[tuple[float, MeshEvent]] = deque(maxlen=MAX_PENDING_EVENTS)
        self._sending: dict[str, asyncio.Future[str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._keys_read = 0.0
        self._closing = False

    # -- joining and leaving ----------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def join(
        cls, client: Client, settings: MeshSettings | None = None
    ) -> AsyncIterator[MeshPeer]:
        """Join the mesh as ``client``'s agent until the block ends, then leave."""
        settings = settings or MeshSettings()
        if settings.host_addresses is not None:
            _restrict_host_addresses(settings.host_addresses)
        keyring = Keyring()
        for record in (await client.keys()).keys:
            keyring.add(record)
        peer = cls(client, settings, keyring)
        try:
            await peer._start()
            yield peer
        finally:
            await peer._stop()

    async def _start(self) -> None:
        ready = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._listen(ready), name="mesh-listen"),
            asyncio.create_task(self._heartbeat(), name="mesh-heartbeat"),
        ]
        await asyncio.wait_for(ready.wait(), 30)
        await self._hello("hello")

    async def _stop(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            await self._hello("bye")
        while self._tasks:  # (a task's end removes it from the list: work on a copy)
            running = list(self._tasks)
            self._tasks.clear()
            for task in running:
                task.cancel()
            for task in running:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for link in list(self.links.values()):
            await self._close(link)
        for future in self._sending.values():
            if not future.done():
                future.set_exception(ConnectionError("the mesh peer left"))

    # -- what the agent does ----------------------------------------------------------------

    async def send(
        self, to: str, performative: str, content: Mapping[str, Any], **fields: Any
    ) -> dict[str, Any]:
        """Send a signed direct message to agent ``to``: over the mesh, acknowledged by
        the receiver, or else through the server (its inbox keeps it). Returns once one
        of them has it: ``{"id": ..., "via": "mesh" | "server"}``."""
        message = self.signed.message(
            time.time(), performative=performative, receiver=to, content=content, **fields
        )
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._sending[message.id] = future
        try:
            self._carry_out(self.node.send(to, message.id, encode_json(message), time.time()))
            via = await future
        finally:
            self._sending.pop(message.id, None)
        return {"id": message.id, "via": via}

    def reaches(self, agent: str) -> bool:
        """Whether ``agent`` is in the mesh (a message to it tries the mesh first)."""
        return agent != self.me and agent in self.node.members

    async def broadcast(self, content: Mapping[str, Any], performative: str = "inform") -> str:
        """Flood a signed message to every peer of the mesh (best effort: peers that join
        later do not get it). Returns its id."""
        message = self.signed.message(
            time.time(), performative=performative, receiver=BROADCAST_TOPIC, content=content
        )
        self._carry_out(self.node.broadcast(message.id, encode_json(message), time.time()))
        return message.id

    async def messages(self) -> AsyncIterator[MeshMessage]:
        """Every message for this agent, once each, whichever way it came."""
        while True:
            yield await self._inbox.get()

    async def ack(self, received: MeshMessage) -> None:
        """The agent has taken ``received``: a direct message over the mesh is
        acknowledged to its sender, one from the inbox leaves the inbox (and so does a
        copy of a mesh message that came through the server meanwhile)."""
        message = received.message
        server_copy = self._untaken.pop(message.id, None)
        self._taken[message.id] = None
        while len(self._taken) > TAKEN_KEPT:
            self._taken.popitem(last=False)
        if received.via == "mesh":
            self._carry_out(self.node.acknowledge(message.id, message.sender, time.time()))
        for position in {p for p in (received.position, server_copy) if p is not None}:
            self._queued_positions.discard(position)
            await self.client.ack(position)
        if self._backlog and self._inbox.qsize() < INBOX_LIMIT // 2:
            self._backlog = False
            self._spawn(self._refill(), "mesh-refill")

    def status(self) -> dict[str, Any]:
        """Members, links (with relay and quality), reconnects under way, routes."""
        now = time.time()
        links = []
        for peer in sorted(self.node.links):
            quality = self.node.quality[peer].snapshot(now) if peer in self.node.quality else None
            link = self.links.get(peer)
            links.append(
                {
                    "peer": peer,
                    "relay": link is not None and self._relayed(link),
                    "band": None if quality is None else str(quality.band),
                    "rtt_ms": None if quality is None else quality.rtt_ms,
                    "jitter_ms": None if quality is None else quality.jitter_ms,
                    "loss_percent": None if quality is None else quality.loss_percent,
                }
            )
        others = sorted(self.node.members - {self.me} - self.node.links)  # (not direct)
        routes = {peer: self.node.next_hop(peer) for peer in others}
        return {
            "agent": self.me,
            "members": len(self.node.members),
            "wanted": sorted(self.node.wanted),
            "links": links,
            "retrying": self.node.retrying(),
            "routes": {peer: hop for peer, hop in routes.items() if hop is not None},
            "via_server": [peer for peer, hop in routes.items() if hop is None],
            "counts": {  # since it joined
                **dataclasses.asdict(self.node.stats),
                "refused_by_reason": dict(self.refused),
                "dropped_slow_agent": self.dropped,
            },
        }

    def _relayed(self, link: _Link) -> bool:
        """Whether the link's selected ICE pair goes through the TURN relay. aiortc does
        not expose the pair, so aioice's is read; failing that, the policy says."""
        try:
            ice = link.pc.sctp.transport.transport  # type: ignore[union-attr]
            pair = ice.iceGatherer._connection._nominated.get(1)
            if pair is None:
                raise AttributeError("no pair nominated")
            return "relay" in (pair.local_candidate.type, pair.remote_candidate.type)
        except AttributeError:
            return link.relay or self.settings.relay_only

    # -- the node's actions -----------------------------------------------------------------

    def _carry_out(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, Transmit):
                self._transmit(action)
            elif isinstance(action, Connect):
                pending = self.links.get(action.peer)
                if action.attempt == 0 and pending is not None:
                    continue  # an offer is under way (or the link is up): let it finish
                if pending is not None:
                    self._retire(pending)
                offered = self._new_link(action.peer, secrets.token_hex(8), action.relay, True)
                self._spawn(self._offer(offered), f"mesh-offer-{action.peer}")
            elif isinstance(action, Disconnect):
                dropped = self.links.get(action.peer)
                if dropped is not None:
                    self._retire(dropped)
                self._carry_out(self.node.link_down(action.peer, time.time()))
            elif isinstance(action, Deliver):
                self._deliver(action)
            elif isinstance(action, Sent):
                self._settle(action.id, "mesh")
            elif isinstance(action, ViaServer):
                self._spawn(self._via_server(action), "mesh-via-server")
            elif isinstance(action, MeshEvent):
                self.events_at.append((time.time(), action))
                if self.on_event is not None:
                    self.on_event(action)
            elif isinstance(action, Refused):
                self.refused[action.reason] = self.refused.get(action.reason, 0) + 1
                _log.info(
                    "mesh: refused a frame from %s: %s %s",
                    action.peer,
                    action.reason,
                    action.detail,
                )
                if action.reason == "UNKNOWN_KEY":
                    self._spawn(self._read_keys(), "mesh-keys")

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            _log.warning("mesh: %s failed: %r", task.get_name(), task.exception())

    def _transmit(self, action: Transmit) -> None:
        link = self.links.get(action.peer)
        channel = None if link is None or not link.open else link.channel
        if link is None or channel is None:
            if action.routed_id is not None:
                self._carry_out(self.node.undeliverable(action.routed_id))
            return
        out = link.outlet.push(action.frame, channel.bufferedAmount)
        if out is None:
            if action.routed_id is not None:
                self._carry_out(self.node.undeliverable(action.routed_id))
            return
        self._send_on(link, channel, out)

    def _send_on(self, link: _Link, channel: RTCDataChannel, out: Sequence[bytes]) -> None:
        try:
            for data in out:
                channel.send(data)
        except Exception as exc:  # closed between the check and the send: the link is lost
            _log.info("mesh: the channel to %s refused a frame: %r", link.peer, exc)
            self._spawn(self._lost(link), "mesh-lost")

    def _deliver(self, action: Deliver) -> None:
        message = decode_json(action.body)
        try:
            self._inbox.put_nowait(MeshMessage(message, action.via))
        except asyncio.QueueFull:
            self.dropped += 1
            if action.via == "mesh":  # unacknowledged: its sender goes through the server
                self.node.forget(action.id)
            return
        self._hold(action.id, None)

    def _hold(self, message_id: str, position: int | None) -> None:
        """Remember a message handed to the agent and not taken yet. An agent that never
        acknowledges cannot grow this past TAKEN_KEPT: the oldest is forgotten (a server
        copy of it then stays in the inbox and comes again: twice rather than lost)."""
        self._untaken[message_id] = position
        while len(self._untaken) > TAKEN_KEPT:
            del self._untaken[next(iter(self._untaken))]

    def _from_inbox(self, position: int, message: IFMessage) -> None:
        """A direct message waiting in the server's inbox (streamed, or read again)."""
        if message.id in self._taken:  # the agent took its mesh copy: done
            self._queued_positions.add(position)
            self._spawn(self._ack_position(position), "mesh-ack")
            return
        if message.id in self._untaken:  # its mesh copy awaits the agent: ack with it
            self._untaken[message.id] = position
            return
        if position in self._queued_positions:
            return  # queued already (the stream replays the inbox when it reconnects)
        try:
            self._inbox.put_nowait(MeshMessage(message, "server", position))
        except asyncio.QueueFull:
            self._backlog = True  # it stays in the server's inbox: read again later
            return
        self.node.mark_seen(message.id)
        self._hold(message.id, None)
        self._queued_positions.add(position)

    async def _ack_position(self, position: int) -> None:
        await self.client.ack(position)
        self._queued_positions.discard(position)

    async def _refill(self) -> None:
        """The agent caught up: queue what the server's inbox kept meanwhile."""
        for position, message in await self.client.inbox():
            self._from_inbox(position, message)

    def _settle(self, message_id: str, via: str) -> None:
        future = self._sending.get(message_id)
        if future is not None and not future.done():
            future.set_result(via)

    async def _via_server(self, action: ViaServer) -> None:
        """Send again through the server: the same message id (receivers drop a second
        copy by it), signed anew (the server's replay window has moved on meanwhile)."""
        original = decode_json(action.body)
        fields: dict[str, Any] = {
            "message_id": original.id,
            "conversation_id": original.conversation_id,
            "ttl": original.ttl,
            "scope": original.scope,
        }
        for name in ("hazard", "trace_id", "provenance", "citation_ids"):
            value = getattr(original, name)
            if value is not msgspec.UNSET:
                fields[name] = value
        try:
            await self.client.send_via_server(
                action.dest, original.performative, original.content, **fields
            )
        except Exception as exc:
            future = self._sending.get(action.id)
            if future is not None and not future.done():
                future.set_exception(exc)
            return
        self._settle(action.id, "server")

    # -- WebRTC -----------------------------------------------------------------------------

    def _configuration(self, relay: bool) -> Any:
        """ICE for one attempt: direct (host candidates, and server-reflexive ones from the
        relay's STUN service when there is a relay), or through the TURN relay only."""
        from aiortc import RTCConfiguration, RTCIceServer
        from aiortc.rtcconfiguration import RTCIceTransportPolicy

        turn = self.settings.turn
        if turn is None:
            return RTCConfiguration(iceServers=[])
        if relay or self.settings.relay_only:
            server = RTCIceServer(urls=turn.url, username=turn.username, credential=turn.password)
            return RTCConfiguration(
                iceServers=[server], iceTransportPolicy=RTCIceTransportPolicy.RELAY
            )
        return RTCConfiguration(iceServers=[RTCIceServer(urls=stun_of(turn.url))])

    def _new_link(self, peer: str, session: str, relay: bool, offered: bool) -> _Link:
        """A link to ``peer``, in place at once (before any await), so that a second
        Connect or an answer in the same pass finds it."""
        from aiortc import RTCPeerConnection

        link = _Link(peer, session, RTCPeerConnection(self._configuration(relay)), relay, offered)
        self.links[peer] = link
        self._watch(link)
        return link

    async def _offer(self, link: _Link) -> None:
        channel = link.pc.createDataChannel(CHANNEL_LABEL, ordered=True)
        self._attach(link, channel)
        try:
            await link.pc.setLocalDescription(await link.pc.createOffer())
            if link.closed:
                return  # replaced or dropped while ICE gathered
            await self._signal(link.peer, "offer", link, link.pc.localDescription.sdp)
        except Exception as exc:
            _log.info("mesh: offer to %s failed: %r", link.peer, exc)
            await self._failed(link)
            return
        self._spawn(self._deadline(link), "mesh-deadline")

    async def _answer(self, peer: str, session: str, sdp: str, relay: bool) -> None:
        from aiortc import RTCSessionDescription

        old = self.links.get(peer)
        if old is not None:  # the offerer restarted, or is trying again
            was_open = old.open
            self._retire(old)
            if was_open:
                self._carry_out(self.node.link_down(peer, time.time()))
        link = self._new_link(peer, session, relay, False)

        @link.pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            if channel.label == CHANNEL_LABEL and link.channel is None:
                self._attach(link, channel)

        try:
            await link.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await link.pc.setLocalDescription(await link.pc.createAnswer())
            if link.closed:
                return
            await self._signal(peer, "answer", link, link.pc.localDescription.sdp)
        except Exception as exc:
            _log.info("mesh: answer to %s failed: %r", peer, exc)
            await self._close(link)
            return
        self._spawn(self._deadline(link), "mesh-deadline")

    async def _answered(self, peer: str, session: str, sdp: str) -> None:
        from aiortc import RTCSessionDescription

        link = self.links.get(peer)
        if link is None or link.session != session or not link.offered or link.closed:
            return  # an answer to an offer given up on
        try:
            await link.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as exc:
            _log.info("mesh: the answer of %s did not apply: %r", peer, exc)
            await self._failed(link)

    def _watch(self, link: _Link) -> None:
        @link.pc.on("connectionstatechange")
        async def on_state() -> None:
            if link.pc.connectionState == "failed" and not link.closed:
                await (self._lost(link) if link.open else self._failed(link))

    def _attach(self, link: _Link, channel: RTCDataChannel) -> None:
        link.channel = channel
        channel.bufferedAmountLowThreshold = link.outlet.high_water // 2

        @channel.on("open")
        def on_open() -> None:
            if link.closed or self.links.get(link.peer) is not link:
                return
            link.open = True
            link.last_heard = time.monotonic()
            self._carry_out(self.node.link_up(link.peer, time.time()))

        @channel.on("message")
        def on_message(data: bytes | str) -> None:
            if self.links.get(link.peer) is not link:
                return
            link.last_heard = time.monotonic()
            raw = data.encode() if isinstance(data, str) else data
            self._carry_out(self.node.receive(link.peer, raw, time.time()))

        @channel.on("bufferedamountlow")
        def on_drained() -> None:
            self._send_on(link, channel, link.outlet.drain(channel.bufferedAmount))

        @channel.on("close")
        def on_close() -> None:
            if not link.closed and self.links.get(link.peer) is link:
                self._spawn(self._lost(link), "mesh-lost")

        if channel.readyState == "open":
            on_open()

    async def _deadline(self, link: _Link) -> None:
        await asyncio.sleep(self.settings.connect_timeout)
        if not link.open and not link.closed and self.links.get(link.peer) is link:
            await self._failed(link)

    async def _failed(self, link: _Link) -> None:
        """A link that never opened (a link already closed or replaced counts for nothing:
        it must not spend a try of the schedule, nor touch the link that replaced it)."""
        if not self._detach(link):
            return
        await self._shut(link)
        if link.offered:
            self._carry_out(self.node.connect_failed(link.peer, time.time()))

    async def _lost(self, link: _Link) -> None:
        """An open link that died."""
        if not self._detach(link):
            return
        await self._shut(link)
        self._carry_out(self.node.link_down(link.peer, time.time()))

    async def _close(self, link: _Link) -> None:
        self._detach(link)
        await self._shut(link)

    def _retire(self, link: _Link) -> None:
        """Take ``link`` out now and close its connection in the background."""
        self._detach(link)
        self._spawn(self._shut(link), "mesh-close")

    def _detach(self, link: _Link) -> bool:
        """Mark ``link`` closed and no longer ``peer``'s; ``False`` if it already was."""
        if link.closed:
            return False
        link.closed = True
        if self.links.get(link.peer) is link:
            del self.links[link.peer]
        return True

    @staticmethod
    async def _shut(link: _Link) -> None:
        with contextlib.suppress(Exception):
            await link.pc.close()

    # -- the server: presence, signaling, inbox ---------------------------------------------

    async def _signal(self, peer: str, kind: str, link: _Link, sdp: str) -> None:
        content = {"kind": kind, "session": link.session, "sdp": sdp, "relay": link.relay}
        await self.client.send_via_server(signal_topic(peer), "inform", content)

    async def _hello(self, kind: str) -> None:
        await self.client.send_via_server(
            PRESENCE_TOPIC, "inform", {"kind": kind, "session": self.session}
        )

    async def _listen(self, ready: asyncio.Event) -> None:
        topics = [PRESENCE_TOPIC, signal_topic(self.me)]
        while not self._closing:
            try:
                async with self.client.stream(topics) as frames:
                    self._stream_up = True
                    ready.set()
                    async for frame in frames:
                        try:
                            await self._on_frame(
                                frame.kind, frame.topic, frame.position, frame.data
                            )
                        except Exception as exc:  # one bad frame is not the stream's end
                            _log.warning("mesh: a frame from the server failed: %r", exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server restarted: follow it again
                self._stream_up = False
                _log.warning("mesh: the server stream ended (%r); again in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _on_frame(
        self, kind: str, topic: str | None, position: int | None, data: Mapping[str, Any]
    ) -> None:
        raw = data.get("message")
        if raw is None:
            return
        body = json.dumps(raw).encode()
        if kind == "message":  # a direct message from the inbox
            if position is not None:
                self._from_inbox(position, decode_json(body))
            return
        try:  # presence and signaling: checked here too, not only by the server
            checked = self.signed.verify(body, time.time())
        except Refusal as refusal:
            if refusal.reason == "UNKNOWN_KEY":
                await self._read_keys()
            return
        sender = checked.sender
        if sender == self.me:
            return
        content = checked.content
        if topic == PRESENCE_TOPIC:
            said = checked.sent_at if checked.sent_at is not None else time.time()
            if time.time() - said > self.settings.presence_timeout:
                return  # an old hello replayed to a new subscriber: its sender may be gone
            self._presence(sender, str(content.get("kind")), str(content.get("session", "")))
        elif topic == signal_topic(self.me):
            session, sdp = str(content.get("session", "")), str(content.get("sdp", ""))
            if content.get("kind") == "offer":
                if sender not in self.presence:  # its offer came before its hello
                    self._presence(sender, "hello", "")
                await self._answer(sender, session, sdp, bool(content.get("relay")))
            elif content.get("kind") == "answer":
                await self._answered(sender, session, sdp)

    def _presence(self, sender: str, kind: str, session: str) -> None:
        now = time.time()
        known = self.presence.get(sender)
        if kind == "bye":
            self.presence.pop(sender, None)
            self._members_changed(now)
            return
        if kind != "hello":
            return
        self.presence[sender] = (now, session)
        if known is None:
            self._members_changed(now)
            self._spawn(self._read_keys(), "mesh-keys")
        elif known[1] and known[1] != session:  # it restarted: its old links are dead
            link = self.links.get(sender)
            if link is not None:  # (an offer made to the old process will not be answered)
                self._spawn(self._lost(link) if link.open else self._failed(link), "mesh-restarted")
            self._carry_out(self.node.rejoined(sender, now))

    def _members_changed(self, now: float) -> None:
        self._carry_out(self.node.set_members([self.me, *self.presence], now))

    async def _read_keys(self) -> None:
        if time.monotonic() - self._keys_read < 1.0:
            return
        self._keys_read = time.monotonic()
        try:
            document = await self.client.keys()
        except Exception as exc:
            _log.warning("mesh: could not read the fabric's keys: %r", exc)
            return
        for record in document.keys:
            with contextlib.suppress(CallerError):
                self.signed.keyring.add(record)

    async def _heartbeat(self) -> None:
        settings = self.settings
        next_hello = time.monotonic() + settings.presence_every
        next_report = time.monotonic() + 1.0
        while True:
            await asyncio.sleep(settings.tick_every)
            try:
                next_hello, next_report = await self._beat(next_hello, next_report)
            except Exception as exc:  # the heartbeat outlives any one beat's trouble
                _log.warning("mesh: a heartbeat failed: %r", exc)

    async def _beat(self, next_hello: float, next_report: float) -> tuple[float, float]:
        """One heartbeat: the node's timers, expired presence, silent links, and (when
        due) a hello and a report. Returns when the next hello and report are due."""
        settings = self.settings
        now, clock = time.time(), time.monotonic()
        self._carry_out(self.node.tick(now))
        for peer, (_, session) in list(self.presence.items()):
            link = self.links.get(peer)  # a link that carries traffic is presence enough
            if link is not None and link.open and clock - link.last_heard < settings.link_timeout:
                self.presence[peer] = (now, session)
        expired = [
            p
            for p, (at, _) in self.presence.items()
            if self._stream_up and now - at > settings.presence_timeout
        ]  # (while the server is away, no hellos arrive: nobody expires for want of one)
        for peer in expired:
            del self.presence[peer]
        if expired:
            self._members_changed(now)
        for link in list(self.links.values()):
            if link.open and clock - link.last_heard > settings.link_timeout:
                await self._lost(link)
        if clock >= self._next_keys:  # revocations reach the peer within KEYS_EVERY
            self._next_keys = clock + KEYS_EVERY
            self._spawn(self._read_keys(), "mesh-keys")
        try:
            if clock >= next_hello:
                next_hello = clock + settings.presence_every
                await self._hello("hello")
            if clock >= next_report:
                next_report = clock + settings.report_every
                await self._report()
        except Exception as exc:  # the server is away: the mesh goes on without it
            _log.warning("mesh: the server did not take a hello or report: %r", exc)
        return next_hello, next_report

    async def _report(self) -> None:
        status = self.status()
        held = list(self.events_at)  # removed only once the server took them
        events = [
            {
                "kind": event.kind,
                "peer": event.peer,
                "at": at,
                **{k: v for k, v in event.detail.items() if k in _REPORTED_DETAIL},
            }
            for at, event in held
        ]
        routes = dict(list(status["routes"].items())[:REPORTED_ROUTES])
        report = {
            "members": status["members"],
            "links": status["links"],
            "retrying": status["retrying"],
            "routes": routes,
            "events": events,
        }
        await self.client.mesh_report(report)
        for _ in held:
            self.events_at.popleft()


_REPORTED_DETAIL: Final = ("attempt", "band", "rtt_ms", "jitter_ms", "loss_percent")

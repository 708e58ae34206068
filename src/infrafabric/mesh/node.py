"""One peer of the agent mesh, as a state machine with no I/O.

A :class:`MeshNode` is told what happens (the membership changed, a link came up or
went down, a frame arrived, time passed, the agent wants to send) and answers with
actions for its driver to carry out (connect, transmit, deliver, send through the
server). The same node runs in a real peer over aiortc (:mod:`infrafabric.mesh.peer`)
and by the thousand in the simulator (:mod:`infrafabric.mesh.sim`).

What it promises:

* **Verified by the receiver.** A broadcast or a direct message is acted on only after
  ``verify`` (the fabric's verification pipeline, with the receiver's own keyring and
  replay windows) accepts the signed message inside the frame, whoever relayed it. A
  frame whose ids disagree with its signed message is refused.
* **Broadcast by gossip:** flooded to every neighbour, each message forwarded once by
  each peer (de-duplicated by message id; a bad copy does not mark the id as seen, so it
  cannot shadow the real one).
* **Direct messages:** over the direct link when there is one, else hop by hop towards
  the peer closest to the receiver on the ring (at most ``hop_limit`` hops). The receiver
  answers with a signed acknowledgement; a message not acknowledged within
  ``ack_timeout`` (no route, a lost hop, a dead receiver) is handed back to the driver
  to send through the server, where it waits in the receiver's durable inbox. The same
  signed message may then arrive twice; receivers drop the second by its id.
* **Healing:** a wanted link that goes down is retried on the :class:`Backoff` schedule
  by the peer that offers it (:func:`~infrafabric.mesh.topology.offerer`), through the
  TURN relay after three failures; after the last try the peer is left out of this
  node's topology, so the ring closes round it and other neighbours take its place.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from infrafabric.mesh.frames import (
    Ack,
    Batch,
    Frame,
    FrameError,
    Gossip,
    Ping,
    Pong,
    Routed,
    decode_frame,
    encode_frame,
)
from infrafabric.mesh.heal import Attempt, Backoff, Reconnects
from infrafabric.mesh.quality import Band, LinkQuality, Quality
from infrafabric.mesh.topology import Ring, Topology, offerer

__all__ = [
    "BROADCAST_TOPIC",
    "Action",
    "Checked",
    "Connect",
    "Deliver",
    "Disconnect",
    "MeshEvent",
    "MeshNode",
    "Refused",
    "Sent",
    "Transmit",
    "ViaServer",
]

#: The most hops a broadcast travels (flooding stops earlier at peers that saw it).
GOSSIP_HOPS = 32
#: What a broadcast is addressed to: a gossip frame carries nothing else (a direct
#: message wrapped as gossip would otherwise be flooded to the whole mesh).
BROADCAST_TOPIC = "if://topic/mesh-broadcast"


class _Peek(msgspec.Struct):
    """A signed message's addressing, read before it is verified: a frame whose fields
    disagree with it is refused before its nonce is spent, so a neighbour that rewraps
    a real message cannot make the real copy look like a replay."""

    id: str
    sender: str
    receiver: str | list[str]

    @property
    def receivers(self) -> tuple[str, ...]:
        return (self.receiver,) if isinstance(self.receiver, str) else tuple(self.receiver)


_PEEK = msgspec.json.Decoder(_Peek)


@dataclass(frozen=True, slots=True)
class Checked:
    """What verification says of an accepted signed message."""

    id: str
    sender: str
    receivers: tuple[str, ...]
    content: Mapping[str, Any]
    sent_at: float | None = None  # the signed timestamp, when the checker read it


class Refusal(Exception):
    """``verify`` refuses a message: ``reason`` is a verification reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# -- actions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transmit:
    peer: str
    frame: bytes
    routed_id: str | None = None  # a direct message of this node's own, for back-pressure


@dataclass(frozen=True, slots=True)
class Connect:
    peer: str
    relay: bool = False  # through the TURN relay only
    attempt: int = 0  # 0: a new link; 1..: a reconnect


@dataclass(frozen=True, slots=True)
class Disconnect:
    peer: str


@dataclass(frozen=True, slots=True)
class Deliver:
    """A verified message for this agent (a broadcast, or a direct message to it)."""

    id: str
    sender: str
    body: bytes
    via: str  # "gossip" or "mesh"


@dataclass(frozen=True, slots=True)
class Sent:
    """A direct message the receiver acknowledged over the mesh."""

    id: str
    dest: str


@dataclass(frozen=True, slots=True)
class ViaServer:
    """A direct message the mesh could not deliver: send it through the server."""

    id: str
    dest: str
    body: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A frame from ``peer`` that was dropped, and why (a reason code)."""

    peer: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class MeshEvent:
    """Something the fabric should record: ``mesh.link_up``, ``mesh.link_lost``,
    ``mesh.reconnect``, ``mesh.relay_fallback``, ``mesh.link_given_up``,
    ``mesh.quality_degraded``, ``mesh.quality_restored``."""

    kind: str
    peer: str
    detail: Mapping[str, Any] = field(default_factory=dict)


Action = Transmit | Connect | Disconnect | Deliver | Sent | ViaServer | Refused | MeshEvent


@dataclass(slots=True)
class _Pending:
    dest: str
    body: bytes
    deadline: float


@dataclass(slots=True)
class NodeStats:
    delivered: int = 0
    duplicates: int = 0
    forwarded: int = 0
    refused: int = 0
    frames_out: int = 0
    via_server: int = 0


class MeshNode:
    """The mesh as one peer sees it. Not thread-safe: one driver calls it."""

    def __init__(
        self,
        me: str,
        *,
        verify: Callable[[bytes, float], Checked],
        sign_ack: Callable[[str, str, float], bytes],
        topology: Topology | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        hop_limit: int = 8,
        ack_timeout: float = 2.0,
        probe_every: float = 2.0,
        seen_capacity: int = 65_536,
        relay_available: bool = True,
    ) -> None:
        """``verify(body, now)`` returns the :class:`Checked` message or raises
        :class:`Refusal`; ``sign_ack(message_id, sender, now)`` returns a signed message
        to ``sender`` whose content is ``{"mesh_ack": message_id}``."""
        self.me = me
        self.verify = verify
        self.sign_ack = sign_ack
        self.topology = topology or Topology()
        self.backoff = backoff or Backoff()
        self.hop_limit = hop_limit
        self.ack_timeout = ack_timeout
        self.probe_every = probe_every
        self.relay_available = relay_available  # no TURN relay: every attempt goes direct
        self.members: set[str] = {me}
        self.ring = Ring([me])
        self.wanted: set[str] = set()
        self.links: set[str] = set()
        self.given_up: set[str] = set()
        self.stats = NodeStats()
        self.quality: dict[str, LinkQuality] = {}
        self._bands: dict[str, Band] = {}
        self._reconnects = Reconnects(self.backoff, rng or random.Random())  # noqa: S311 - jitter, not secrets
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_capacity = seen_capacity
        self._pending: dict[str, _Pending] = {}
        self._next_probe = 0.0

    # -- membership and links ---------------------------------------------------------------

    def set_members(self, members: Iterable[str], now: float) -> list[Action]:
        """The peers in the mesh now (from the server's presence), this one among them."""
        self.members = set(members) | {self.me}
        self.given_up &= self.members
        for gone in set(self._reconnects.retrying()) - self.members:
            self._reconnects.forget(gone)
        return self._reshape(now)

    def _reshape(self, now: float) -> list[Action]:
        self.ring = Ring(self.members - self.given_up)
        self.wanted = self.topology.neighbours(self.me, self.ring.peers, self.ring)
        actions: list[Action] = []
        retrying = self._reconnects.retrying()
        for peer in sorted(self.wanted - self.links):
            if offerer(self.me, peer) == self.me and peer not in retrying:
                actions.append(Connect(peer))
        for peer in sorted(self.links - self.wanted):
            # the peer that offers a link decides whether it stays: two peers whose views
            # differ for a moment (or one that gave up on a third) do not make it flap
            if offerer(self.me, peer) == self.me:
                actions.append(Disconnect(peer))
        return actions

    def link_up(self, peer: str, now: float) -> list[Action]:
        """A data channel to ``peer`` opened (this node offered it, or answered)."""
        self.links.add(peer)
        self.quality.setdefault(peer, LinkQuality(timeout=self.probe_every))
        retried = self._reconnects.retrying().get(peer)
        self._reconnects.connected(peer)
        detail = {} if retried is None else {"attempt": retried}
        return [MeshEvent("mesh.link_up", peer, detail)]

    def link_down(self, peer: str, now: float) -> list[Action]:
        """The data channel to ``peer`` closed or failed."""
        if peer not in self.links:
            return []
        self.links.discard(peer)
        self.quality.pop(peer, None)
        self._bands.pop(peer, None)
        actions: list[Action] = [MeshEvent("mesh.link_lost", peer)]
        if peer in self.wanted and offerer(self.me, peer) == self.me:
            self._reconnects.lost(peer, now)
        return actions

    def connect_failed(self, peer: str, now: float) -> list[Action]:
        """An attempt to connect to ``peer`` failed (ICE, DTLS or signaling timed out)."""
        if peer in self.links or peer not in self.wanted:
            return []
        if peer not in self._reconnects.retrying():
            self._reconnects.lost(peer, now)  # a first connect failed: the schedule starts
            return []
        if self._reconnects.failed(peer, now) is not None:
            return []
        self.given_up.add(peer)
        actions: list[Action] = [
            MeshEvent("mesh.link_given_up", peer, {"tries": self.backoff.tries})
        ]
        return actions + self._reshape(now)  # the ring closes without it

    def rejoined(self, peer: str, now: float) -> list[Action]:
        """``peer`` announced itself anew (it restarted): try it again if it was given up."""
        if peer not in self.given_up:
            return []
        self.given_up.discard(peer)
        return self._reshape(now)

    # -- sending ------------------------------------------------------------------------

    def broadcast(self, message_id: str, body: bytes, now: float) -> list[Action]:
        """Flood a signed message to the whole mesh."""
        self._mark_seen(message_id)
        frame = encode_frame(Gossip(message_id, self.me, 0, msgspec.Raw(body)))
        return self._to_all(frame, exclude=None)

    def send(self, dest: str, message_id: str, body: bytes, now: float) -> list[Action]:
        """Send a signed direct message to ``dest`` over the mesh; a :class:`Sent` or a
        :class:`ViaServer` follows for it."""
        self._mark_seen(message_id)
        hop = self.next_hop(dest)
        if hop is None:
            self.stats.via_server += 1
            return [ViaServer(message_id, dest, body, "no route over the mesh")]
        self._pending[message_id] = _Pending(dest, body, now + self.ack_timeout)
        frame = encode_frame(Routed(message_id, self.me, dest, 0, msgspec.Raw(body)))
        self.stats.frames_out += 1
        return [Transmit(hop, frame, routed_id=message_id)]

    def undeliverable(self, message_id: str) -> list[Action]:
        """The driver could not hand this node's direct message to its first hop (the
        link's queue was full): send it through the server now."""
        pending = self._pending.pop(message_id, None)
        if pending is None:
            return []
        self.stats.via_server += 1
        return [ViaServer(message_id, pending.dest, pending.body, "the link is congested")]

    def next_hop(self, dest: str) -> str | None:
        """The neighbour to pass a message for ``dest`` to: ``dest`` itself when linked,
        else the linked peer nearest to it on the ring, if nearer than this one."""
        if dest in self.links:
            return dest
        if dest not in self.ring.index or self.me not in self.ring.index:
            return None
        here = self.ring.distance(self.me, dest)
        best = min(
            (
                (self.ring.distance(peer, dest), peer)
                for peer in self.links
                if peer in self.ring.index
            ),
            default=None,
        )
        if best is None or best[0] >= here:
            return None
        return best[1]

    # -- receiving ------------------------------------------------------------------------

    def receive(self, peer: str, data: bytes, now: float) -> list[Action]:
        """A data channel message from ``peer``."""
        try:
            frame = decode_frame(data)
        except FrameError as exc:
            return self._refuse(peer, exc.reason, exc.detail)
        return self._frame(peer, frame, now)

    def _frame(self, peer: str, frame: Frame, now: float) -> list[Action]:
        if isinstance(frame, Batch):
            actions: list[Action] = []
            for inner in frame.frames:
                try:
                    decoded = decode_frame(bytes(inner))
                except FrameError as exc:
                    actions.extend(self._refuse(peer, exc.reason, exc.detail))
                    continue
                if isinstance(decoded, Batch):
                    actions.extend(self._refuse(peer, "MALFORMED", "a batch inside a batch"))
                    continue
                actions.extend(self._frame(peer, decoded, now))
            return actions
        if isinstance(frame, Gossip):
            return self._gossip(peer, frame, now)
        if isinstance(frame, Routed):
            return self._routed(peer, frame, now)
        if isinstance(frame, Ack):
            return self._ack(peer, frame, now)
        if isinstance(frame, Ping):
            return [Transmit(peer, encode_frame(Pong(frame.n)))]
        quality = self.quality.get(peer)
        if quality is not None:
            quality.answered(frame.n, now)
        return []

    def _gossip(self, peer: str, frame: Gossip, now: float) -> list[Action]:
        if frame.id in self._seen:
            self.stats.duplicates += 1
            return []
        taken = self._take(peer, frame.body, frame.id, frame.origin, now, via="gossip")
        if not isinstance(taken, Deliver):
            return [taken]
        actions: list[Action] = [taken]
        if frame.hops + 1 < GOSSIP_HOPS:
            forward = encode_frame(Gossip(frame.id, frame.origin, frame.hops + 1, frame.body))
            actions.extend(self._to_all(forward, exclude=peer))
        return actions

    def _routed(self, peer: str, frame: Routed, now: float) -> list[Action]:
        if frame.dest != self.me:
            return self._forward(peer, frame, now)
        if frame.id in self._seen:  # it came by two paths: taken once (no second ack, so
            self.stats.duplicates += 1  # an ack never runs ahead of the agent taking it)
            return []
        return [self._take(peer, frame.body, frame.id, frame.origin, now, via="mesh")]

    def _take(
        self, peer: str, raw: msgspec.Raw, message_id: str, origin: str, now: float, *, via: str
    ) -> Deliver | Refused:
        """The message a gossip (``via`` "gossip") or direct ("mesh") frame carries, if
        the frame's fields agree with it and it verifies; then it counts as seen."""
        body = bytes(raw)
        mismatch = self._mismatch(body, message_id, origin, via)
        if mismatch is not None:
            self.stats.refused += 1
            return Refused(peer, "FORGED_FRAME", mismatch)
        checked = self._check(peer, body, now)
        if isinstance(checked, Refused):
            return checked
        self._mark_seen(message_id)
        self.stats.delivered += 1
        return Deliver(message_id, checked.sender, body, via)

    def _mismatch(self, body: bytes, message_id: str, origin: str, via: str) -> str | None:
        """Why a frame's fields disagree with the message inside (``None``: they agree). A
        broadcast is addressed to the broadcast topic alone, a direct message to this peer
        (among others, perhaps). Read before verifying: a lie costs the real copy nothing."""
        try:
            peek = _PEEK.decode(body)
        except msgspec.DecodeError:
            return "the frame carries no message"
        if peek.id != message_id or peek.sender != origin:
            return "the frame's ids are not its message's"
        if via == "gossip" and peek.receivers != (BROADCAST_TOPIC,):
            return f"a broadcast is addressed to {BROADCAST_TOPIC} alone"
        if via == "mesh" and self.me not in peek.receivers:
            return f"the message is not for {self.me}"
        return None

    def acknowledge(self, message_id: str, sender: str, now: float) -> list[Action]:
        """The agent has taken a direct message (kept it, or acted on it): tell the
        sender, so it does not send it through the server as well."""
        body = self.sign_ack(message_id, sender, now)
        frame = Ack(message_id, self.me, sender, 0, msgspec.Raw(body))
        hop = self.next_hop(sender)
        if hop is None:
            return []  # the sender times out and sends it through the server
        return [Transmit(hop, encode_frame(frame))]

    def _ack(self, peer: str, frame: Ack, now: float) -> list[Action]:
        if frame.dest != self.me:
            return self._forward(peer, frame, now)
        pending = self._pending.get(frame.id)
        if pending is None:
            return []  # acknowledged already, or sent through the server meanwhile
        body = bytes(frame.body)
        try:
            peek = _PEEK.decode(body)
        except msgspec.DecodeError:
            return self._refuse(peer, "FORGED_FRAME", "the frame carries no message")
        if peek.sender != pending.dest or self.me not in peek.receivers:
            return self._refuse(peer, "FORGED_FRAME", "an acknowledgement not from the receiver")
        checked = self._check(peer, body, now)
        if isinstance(checked, Refused):
            return [checked]
        if checked.content.get("mesh_ack") != frame.id:
            return self._refuse(peer, "FORGED_FRAME", "an acknowledgement of another message")
        del self._pending[frame.id]
        return [Sent(frame.id, pending.dest)]

    def _forward(self, peer: str, frame: Routed | Ack, now: float) -> list[Action]:
        if frame.hops + 1 > self.hop_limit:
            return self._refuse(peer, "HOP_LIMIT", f"{frame.id} went {frame.hops} hops")
        hop = self.next_hop(frame.dest)
        if hop is None or hop == peer:
            return self._refuse(peer, "NO_ROUTE", f"no way on to {frame.dest}")
        self.stats.forwarded += 1
        self.stats.frames_out += 1
        if isinstance(frame, Routed):
            onward: Frame = Routed(frame.id, frame.origin, frame.dest, frame.hops + 1, frame.body)
        else:
            onward = Ack(frame.id, frame.origin, frame.dest, frame.hops + 1, frame.body)
        return [Transmit(hop, encode_frame(onward))]

    # -- time -----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Let time pass: unacknowledged messages go through the server, due reconnects
        start, links are probed and their quality judged."""
        actions: list[Action] = []
        for message_id, pending in list(self._pending.items()):
            if pending.deadline <= now:
                del self._pending[message_id]
                self.stats.via_server += 1
                actions.append(
                    ViaServer(message_id, pending.dest, pending.body, "no acknowledgement")
                )
        for attempt in self._reconnects.due(now):
            actions.extend(self._attempt(attempt))
        if now >= self._next_probe:
            self._next_probe = now + self.probe_every
            for peer in sorted(self.links):
                quality = self.quality[peer]
                actions.extend(self._judge(peer, quality.snapshot(now)))
                actions.append(Transmit(peer, encode_frame(Ping(quality.probe(now)))))
        return actions

    def _attempt(self, attempt: Attempt) -> list[Action]:
        if attempt.peer in self.links or attempt.peer not in self.wanted:
            self._reconnects.connected(attempt.peer)
            return []
        relay = attempt.relay and self.relay_available
        actions: list[Action] = [
            MeshEvent("mesh.reconnect", attempt.peer, {"attempt": attempt.number})
        ]
        if relay and not self.backoff.relay(attempt.number - 1):
            actions.append(
                MeshEvent("mesh.relay_fallback", attempt.peer, {"attempt": attempt.number})
            )
        actions.append(Connect(attempt.peer, relay=relay, attempt=attempt.number))
        return actions

    def _judge(self, peer: str, quality: Quality | None) -> list[Action]:
        if quality is None:
            return []
        before = self._bands.get(peer)
        self._bands[peer] = quality.band
        figures = {
            "band": str(quality.band),
            "rtt_ms": quality.rtt_ms,
            "jitter_ms": quality.jitter_ms,
            "loss_percent": quality.loss_percent,
        }
        if quality.band == Band.POOR and before not in (None, Band.POOR):
            return [MeshEvent("mesh.quality_degraded", peer, figures)]
        if before == Band.POOR and quality.band != Band.POOR:
            return [MeshEvent("mesh.quality_restored", peer, figures)]
        return []

    # -- internals ------------------------------------------------------------------------

    def _to_all(self, frame: bytes, exclude: str | None) -> list[Action]:
        sent: list[Action] = [
            Transmit(peer, frame) for peer in sorted(self.links) if peer != exclude
        ]
        self.stats.frames_out += len(sent)
        return sent

    def _check(self, peer: str, body: bytes, now: float) -> Checked | Refused:
        try:
            return self.verify(body, now)
        except Refusal as exc:
            self.stats.refused += 1
            return Refused(peer, exc.reason, exc.detail)

    def _refuse(self, peer: str, reason: str, detail: str) -> list[Action]:
        self.stats.refused += 1
        return [Refused(peer, reason, detail)]

    def retrying(self) -> list[str]:
        """The peers whose lost links this node is trying again."""
        return sorted(self._reconnects.retrying())

    def forget(self, message_id: str) -> None:
        """Take a message as not seen after all (the agent could not take it): a copy
        that comes later, through the server, is then taken."""
        self._seen.pop(message_id, None)

    def has_seen(self, message_id: str) -> bool:
        """Whether this node took (or sent) the message: a copy that comes through the
        server after one came over the mesh is dropped by its id."""
        return message_id in self._seen

    def mark_seen(self, message_id: str) -> None:
        """A message taken by another path (the server): drop a later mesh copy."""
        self._mark_seen(message_id)

    def _mark_seen(self, message_id: str) -> None:
        self._seen[message_id] = None
        self._seen.move_to_end(message_id)
        while len(self._seen) > self._seen_capacity:
            self._seen.popitem(last=False)

"""The mesh at a scale real WebRTC cannot reach on one machine: the same
:class:`~infrafabric.mesh.node.MeshNode` code (topology, gossip, routing, acks,
healing) for thousands of peers over an in-memory transport, in simulated time.

The model, which every figure from it depends on (all of it seeded, so a run repeats):

* **Links:** a frame takes ``latency`` seconds plus a uniform jitter of up to
  ``jitter`` either way, and is lost with probability ``loss``. Bandwidth is unlimited
  (back-pressure is tested on real channels, not here).
* **Peers:** one CPU each, handling one frame at a time: ``frame_cost`` seconds per
  frame, plus ``verify_cost`` per signed message checked (the default is what PyNaCl's
  Ed25519 verify takes here, about 100 us). Signatures themselves are not computed: the
  simulated messages are plain JSON, checked by :func:`simulated_verify` (a stand-in,
  named as one), so the figures are the protocol's and the modelled CPU's, not this
  machine's Python speed.
* **Links form** ``setup`` seconds after a peer asks for one; a dead peer's links are
  noticed ``detect`` seconds after it dies (ICE consent freshness), and a connect to a
  dead peer fails after ``setup`` seconds.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from infrafabric.mesh.heal import Backoff
from infrafabric.mesh.node import (
    BROADCAST_TOPIC,
    Action,
    Checked,
    Connect,
    Deliver,
    Disconnect,
    MeshEvent,
    MeshNode,
    Refusal,
    Sent,
    Transmit,
    ViaServer,
)
from infrafabric.mesh.topology import Topology

__all__ = ["LinkModel", "Round", "Simulation", "percentile", "simulated_verify"]


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    """A simulated message: an IFMessage's addressing and content, unsigned."""

    id: str
    sender: str
    receiver: str
    content: dict[str, Any] = {}


_ENCODE = msgspec.json.Encoder().encode
_DECODE = msgspec.json.Decoder(_Body).decode


def simulated_verify(body: bytes, now: float) -> Checked:
    """The simulator's stand-in for signature verification (its cost is modelled by
    ``verify_cost``): reads the message's id, sender, receivers and content."""
    try:
        message = _DECODE(body)
    except msgspec.DecodeError as exc:
        raise Refusal("MALFORMED", str(exc)) from None
    return Checked(message.id, message.sender, (message.receiver,), message.content)


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in 0..1) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Round:
    """What a round of broadcasts did: the latency of each delivery (seconds), the
    deliveries there should have been, and the frames a live peer handled a broadcast."""

    latencies: list[float]
    expected: int
    frames_per_peer: float

    @property
    def missed(self) -> int:
        return self.expected - len(self.latencies)


@dataclass(frozen=True, slots=True)
class LinkModel:
    latency: float = 0.005
    jitter: float = 0.001
    loss: float = 0.0
    frame_cost: float = 0.000_02
    verify_cost: float = 0.000_1
    setup: float = 0.05
    detect: float = 1.0


@dataclass
class _Peer:
    node: MeshNode
    alive: bool = True
    busy_until: float = 0.0
    received: dict[str, float] = field(default_factory=dict)  # message id -> when
    frames_in: int = 0
    verified: int = 0  # signed messages checked (each costs verify_cost)


class Simulation:
    """``size`` peers named ``if://agent/p0000``..., all knowing every member."""

    def __init__(
        self,
        size: int,
        *,
        topology: Topology | None = None,
        model: LinkModel | None = None,
        seed: int = 1,
        backoff: Backoff | None = None,
    ) -> None:
        self.model = model or LinkModel()
        self.topology = topology or Topology()
        self.rng = random.Random(seed)  # noqa: S311 - a seeded model, not secrets
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.names = [f"if://agent/p{n:04d}" for n in range(size)]
        self.peers: dict[str, _Peer] = {}
        self.events: list[tuple[float, MeshEvent]] = []
        self.outcomes: dict[str, tuple[str, float]] = {}  # direct message -> (how, when)
        for n, name in enumerate(self.names):
            node = MeshNode(
                name,
                verify=self._verifier(name),
                sign_ack=self._signer(name),
                topology=self.topology,
                backoff=backoff,
                rng=random.Random(seed * 1_000_003 + n),  # noqa: S311
                probe_every=1e9,  # (quality probing is for real links)
            )
            self.peers[name] = _Peer(node)

    def _verifier(self, name: str) -> Callable[[bytes, float], Checked]:
        def verify(body: bytes, now: float) -> Checked:
            self.peers[name].verified += 1
            return simulated_verify(body, now)

        return verify

    # -- driving ----------------------------------------------------------------------------

    def start(self) -> None:
        """Every peer learns the membership; the mesh forms."""
        for name in self.names:
            for action in self.peers[name].node.set_members(self.names, self.now):
                self._act(name, action)
        self.run_for(self.model.setup * 2)

    def run_for(self, seconds: float, tick: float = 0.25) -> None:
        """Advance simulated time by ``seconds``, ticking every peer each ``tick``."""
        end = self.now + seconds
        next_tick = self.now + tick
        while True:
            due = self._queue[0][0] if self._queue else end
            if next_tick <= min(due, end):
                self.now = next_tick
                for name, peer in self.peers.items():
                    if peer.alive:
                        for action in peer.node.tick(self.now):
                            self._act(name, action)
                next_tick += tick
                continue
            if not self._queue or due > end:
                break
            at, _, callback = heapq.heappop(self._queue)
            self.now = at
            callback()
        self.now = end

    def _later(self, delay: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (self.now + delay, next(self._order), callback))

    # -- what the agents do ---------------------------------------------------------------

    def broadcast(self, origin: str, message_id: str) -> None:
        body = _ENCODE(_Body(message_id, origin, BROADCAST_TOPIC))
        self.peers[origin].received[message_id] = self.now
        for action in self.peers[origin].node.broadcast(message_id, body, self.now):
            self._act(origin, action)

    def send(self, origin: str, dest: str, message_id: str) -> None:
        body = _ENCODE(_Body(message_id, origin, dest))
        self.outcomes[message_id] = ("pending", self.now)
        for action in self.peers[origin].node.send(dest, message_id, body, self.now):
            self._act(origin, action)

    def kill(self, names: Sequence[str]) -> None:
        """These peers die at once; their neighbours notice after ``detect``."""
        for name in names:
            peer = self.peers[name]
            peer.alive = False
            for other in list(peer.node.links):

                def notice(other: str = other, name: str = name) -> None:
                    if self.peers[other].alive:
                        for action in self.peers[other].node.link_down(name, self.now):
                            self._act(other, action)

                self._later(self.model.detect, notice)

    def forget(self, names: Sequence[str]) -> None:
        """The presence of these peers expired: every live peer drops them from its
        membership, and the mesh reshapes round the gap."""
        gone = set(names)
        members = [name for name in self.names if name not in gone]
        for name in members:
            peer = self.peers[name]
            if peer.alive:
                for action in peer.node.set_members(members, self.now):
                    self._act(name, action)

    # -- the transport ----------------------------------------------------------------------

    def _act(self, name: str, action: Action) -> None:
        if isinstance(action, Transmit):
            self._transmit(name, action.peer, action.frame)
        elif isinstance(action, Connect):
            self._connect(name, action.peer)
        elif isinstance(action, Disconnect):
            self._disconnect(name, action.peer)
        elif isinstance(action, Deliver):
            peer = self.peers[name]
            peer.received.setdefault(action.id, self.now)
            if action.via == "mesh":
                for reply in peer.node.acknowledge(action.id, action.sender, self.now):
                    self._act(name, reply)
        elif isinstance(action, Sent):
            self.outcomes[action.id] = ("mesh", self.now)
        elif isinstance(action, ViaServer):
            self.outcomes[action.id] = ("server", self.now)
        elif isinstance(action, MeshEvent):
            self.events.append((self.now, action))

    def _transmit(self, sender: str, receiver: str, frame: bytes) -> None:
        model = self.model
        if self.rng.random() < model.loss:
            return
        delay = model.latency + self.rng.uniform(-model.jitter, model.jitter)

        def arrive() -> None:
            peer = self.peers[receiver]
            if not peer.alive or sender not in peer.node.links:
                return
            if peer.busy_until > self.now:  # the peer's CPU is busy: the frame waits
                self._later(peer.busy_until - self.now, arrive)
                return
            peer.frames_in += 1
            verified = peer.verified
            actions = peer.node.receive(sender, frame, self.now)
            cost = model.frame_cost + (peer.verified - verified) * model.verify_cost
            peer.busy_until = self.now + cost

            def done() -> None:  # what the peer decided leaves once it has decided it
                if peer.alive:
                    for action in actions:
                        self._act(receiver, action)

            self._later(cost, done)

        self._later(delay, arrive)

    def _connect(self, offerer: str, answerer: str) -> None:
        def established() -> None:
            if not self.peers[offerer].alive:
                return
            if not self.peers[answerer].alive:
                for action in self.peers[offerer].node.connect_failed(answerer, self.now):
                    self._act(offerer, action)
                return
            for side, other in ((offerer, answerer), (answerer, offerer)):
                for action in self.peers[side].node.link_up(other, self.now):
                    self._act(side, action)

        self._later(self.model.setup, established)

    def _disconnect(self, name: str, other: str) -> None:
        for side, peer in ((name, other), (other, name)):
            if self.peers[side].alive:
                for action in self.peers[side].node.link_down(peer, self.now):
                    self._act(side, action)

    def _signer(self, name: str) -> Callable[[str, str, float], bytes]:
        def sign_ack(message_id: str, sender: str, now: float) -> bytes:
            ack = _Body(f"ack-{message_id}", name, sender, {"mesh_ack": message_id})
            return _ENCODE(ack)

        return sign_ack

    def broadcasts(self, count: int, tag: str, wait: float = 0.3) -> Round:
        """``count`` broadcasts, one after another, each from a random live peer and
        given ``wait`` simulated seconds to spread: who got each, and when."""
        alive = self.alive()
        frames_before = sum(self.peers[name].frames_in for name in alive)
        latencies: list[float] = []
        expected = 0
        for n in range(count):
            origin = alive[self.rng.randrange(len(alive))]
            message_id = f"{tag}-{n}"
            start = self.now
            self.broadcast(origin, message_id)
            self.run_for(wait)
            for name in alive:
                if name != origin:
                    expected += 1
                    at = self.peers[name].received.get(message_id)
                    if at is not None:
                        latencies.append(at - start)
        frames = sum(self.peers[name].frames_in for name in alive) - frames_before
        return Round(latencies, expected, frames / count / len(alive))

    # -- figures --------------------------------------------------------------------------

    def alive(self) -> list[str]:
        return [name for name, peer in self.peers.items() if peer.alive]

    def degrees(self) -> list[int]:
        return [len(self.peers[name].node.links) for name in self.alive()]

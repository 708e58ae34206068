"""The mesh node, driven by hand over an in-test wire, with real signed messages and the
fabric's real verification pipeline at every receiving peer."""

from __future__ import annotations

import collections
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec
import pytest

from infrafabric import KeyRole, SigningIdentity, agent_id, new_key_record
from infrafabric.mesh.frames import Ack, Gossip, Ping, Routed, decode_frame, encode_frame
from infrafabric.mesh.heal import Backoff
from infrafabric.mesh.node import (
    BROADCAST_TOPIC,
    Action,
    Connect,
    Deliver,
    Disconnect,
    MeshEvent,
    MeshNode,
    Refused,
    Sent,
    Transmit,
    ViaServer,
)
from infrafabric.mesh.signed import SignedMesh
from infrafabric.mesh.topology import Topology
from infrafabric.protocol.identity import Outbox
from infrafabric.protocol.keyring import Keyring
from infrafabric.protocol.message import encode_json
from tests.conftest import NOW


@dataclass
class Wire:
    """Peers whose frames arrive at once (or are dropped, for the links in ``cut``)."""

    keyring: Keyring = field(default_factory=Keyring)
    nodes: dict[str, MeshNode] = field(default_factory=dict)
    signers: dict[str, SignedMesh] = field(default_factory=dict)
    seen: list[tuple[str, Action]] = field(default_factory=list)
    cut: set[frozenset[str]] = field(default_factory=set)
    now: float = NOW
    auto_ack: bool = True

    def add(self, name: str, *, trusted: bool = True, **options: object) -> MeshNode:
        identity = SigningIdentity.generate(agent_id(name))
        if trusted:
            self.keyring.add(
                new_key_record(
                    identity.agent, identity.public_key, version=1, now=NOW - 60, role=KeyRole.AGENT
                )
            )
        signer = SignedMesh(Outbox(identity), self.keyring)
        node = MeshNode(
            identity.agent,
            verify=signer.verify,
            sign_ack=signer.sign_ack,
            rng=random.Random(1),
            **options,  # type: ignore[arg-type]
        )
        self.nodes[identity.agent] = node
        self.signers[identity.agent] = signer
        return node

    def form(self) -> None:
        members = list(self.nodes)
        for name, node in self.nodes.items():
            self.run(name, node.set_members(members, self.now))

    def run(self, name: str, actions: Iterable[Action]) -> None:
        todo = collections.deque((name, action) for action in actions)
        while todo:
            where, action = todo.popleft()
            self.seen.append((where, action))
            node = self.nodes[where]
            if isinstance(action, Connect):
                other = self.nodes[action.peer]
                if frozenset((where, action.peer)) in self.cut:
                    todo.extend((where, a) for a in node.connect_failed(action.peer, self.now))
                    continue
                todo.extend((where, a) for a in node.link_up(action.peer, self.now))
                todo.extend((action.peer, a) for a in other.link_up(where, self.now))
            elif isinstance(action, Disconnect):
                todo.extend((where, a) for a in node.link_down(action.peer, self.now))
                other = self.nodes[action.peer]
                todo.extend((action.peer, a) for a in other.link_down(where, self.now))
            elif isinstance(action, Transmit):
                if frozenset((where, action.peer)) in self.cut:
                    continue
                receiver = self.nodes[action.peer]
                if where not in receiver.links:
                    continue
                replies = receiver.receive(where, action.frame, self.now)
                todo.extend((action.peer, a) for a in replies)
            elif isinstance(action, Deliver) and action.via == "mesh" and self.auto_ack:
                todo.extend(
                    (where, a) for a in node.acknowledge(action.id, action.sender, self.now)
                )

    def message(self, sender: str, receiver: str, **content: object) -> tuple[str, bytes]:
        signed = self.signers[sender].message(
            self.now, performative="inform", receiver=receiver, content=content
        )
        return signed.id, encode_json(signed)

    def of(self, kind: type, where: str | None = None) -> list:  # type: ignore[type-arg]
        return [a for w, a in self.seen if isinstance(a, kind) and (where is None or w == where)]


def mesh(size: int, k: int, **options: object) -> tuple[Wire, list[str]]:
    wire = Wire()
    for n in range(size):
        wire.add(f"p{n:02d}", topology=Topology(degree=k), **options)
    wire.form()
    return wire, list(wire.nodes)


def test_a_broadcast_reaches_every_peer_once_each_verified_by_its_receiver() -> None:
    wire, names = mesh(12, k=4)
    assert all(len(wire.nodes[n].links) >= 4 for n in names)
    message_id, body = wire.message(names[0], BROADCAST_TOPIC, hello=1)
    wire.run(names[0], wire.nodes[names[0]].broadcast(message_id, body, wire.now))
    delivered = collections.Counter(w for w, a in wire.seen if isinstance(a, Deliver))
    assert delivered == dict.fromkeys(names[1:], 1)
    assert all(a.body == body and a.via == "gossip" for a in wire.of(Deliver))
    assert wire.of(Refused) == []
    assert sum(wire.nodes[n].stats.duplicates for n in names) > 0  # flooding, de-duplicated


def test_a_tampered_copy_is_refused_and_does_not_shadow_the_real_one() -> None:
    wire, names = mesh(4, k=3)
    sender, liar, victim = names[0], names[1], names[2]
    message_id, body = wire.message(sender, BROADCAST_TOPIC, amount=1)
    forged = body.replace(b'"amount":1', b'"amount":9')
    frame = encode_frame(Gossip(message_id, sender, 1, msgspec.Raw(forged)))
    wire.run(liar, [Transmit(victim, frame)])
    [refused] = wire.of(Refused, victim)
    assert refused.reason == "BAD_SIGNATURE"
    wire.run(sender, wire.nodes[sender].broadcast(message_id, body, wire.now))
    assert [a.body for a in wire.of(Deliver, victim)] == [body]


@pytest.mark.parametrize("what", ["other id", "other origin", "not for me", "unknown sender"])
def test_a_frame_that_lies_about_its_message_is_refused(what: str) -> None:
    wire, names = mesh(3, k=2)
    a, b, c = names
    stranger = wire.add("stranger", trusted=False)
    message_id, body = wire.message(a, c if what == "not for me" else b, x=1)
    if what == "unknown sender":
        message_id, body = wire.message(stranger.me, b, x=1)
    frame = Routed(
        "m-other" if what == "other id" else message_id,
        c if what == "other origin" else (stranger.me if what == "unknown sender" else a),
        b,
        0,
        msgspec.Raw(body),
    )
    wire.run(c, [Transmit(b, encode_frame(frame))])
    [refused] = wire.of(Refused, b)
    expected = "UNKNOWN_KEY" if what == "unknown sender" else "FORGED_FRAME"
    assert refused.reason == expected
    assert wire.of(Deliver, b) == []


def test_a_direct_message_is_acknowledged_by_its_receiver_hop_by_hop() -> None:
    wire, names = mesh(30, k=2)  # a thin ring: most peers are several hops apart
    sender = names[0]
    node = wire.nodes[sender]
    far = max(names[1:], key=lambda n: node.ring.distance(sender, n))
    assert far not in node.links
    message_id, body = wire.message(sender, far, task="t-1")
    wire.run(sender, node.send(far, message_id, body, wire.now))
    [delivered] = wire.of(Deliver, far)
    assert (delivered.id, delivered.sender, delivered.via) == (message_id, sender, "mesh")
    assert wire.of(Sent, sender) == [Sent(message_id, far)]
    assert sum(wire.nodes[n].stats.forwarded for n in names) >= 2
    wire.now += 10
    wire.run(sender, node.tick(wire.now))
    assert wire.of(ViaServer) == []  # acknowledged: never sent again


def test_an_unacknowledged_message_goes_through_the_server_after_the_timeout() -> None:
    wire, names = mesh(6, k=2, ack_timeout=2.0)
    sender, receiver = names[0], names[3]
    wire.auto_ack = False  # the receiver's agent dies before taking it
    message_id, body = wire.message(sender, receiver, x=1)
    wire.run(sender, wire.nodes[sender].send(receiver, message_id, body, wire.now))
    wire.now += 1.9
    wire.run(sender, wire.nodes[sender].tick(wire.now))
    assert wire.of(ViaServer) == []
    wire.now += 0.2
    wire.run(sender, wire.nodes[sender].tick(wire.now))
    [fallback] = wire.of(ViaServer, sender)
    assert (fallback.id, fallback.dest, fallback.body) == (message_id, receiver, body)


def test_a_message_with_no_route_goes_through_the_server_at_once() -> None:
    wire = Wire()
    lonely = wire.add("lonely")
    wire.add("other")
    # the other peer is a member, but no link is up yet
    lonely.members = set(wire.nodes)
    message_id, body = wire.message(lonely.me, "if://agent/other", x=1)
    [action] = lonely.send("if://agent/other", message_id, body, wire.now)
    assert isinstance(action, ViaServer)
    assert action.reason == "no route over the mesh"


def test_an_ack_signed_by_anyone_but_the_receiver_is_refused() -> None:
    wire, names = mesh(3, k=2)
    a, b, c = names
    wire.auto_ack = False
    message_id, body = wire.message(a, b, x=1)
    wire.run(a, wire.nodes[a].send(b, message_id, body, wire.now))
    forged = wire.signers[c].sign_ack(message_id, a, wire.now)  # c pretends to be b
    wire.run(c, [Transmit(a, encode_frame(Ack(message_id, b, a, 0, msgspec.Raw(forged))))])
    [refused] = wire.of(Refused, a)
    assert refused.reason == "FORGED_FRAME"
    assert wire.of(Sent) == []


def test_a_message_past_the_hop_limit_is_dropped() -> None:
    wire, names = mesh(30, k=2, hop_limit=2)
    sender = names[0]
    node = wire.nodes[sender]
    far = max(names[1:], key=lambda n: node.ring.distance(sender, n))
    message_id, body = wire.message(sender, far, x=1)
    wire.run(sender, node.send(far, message_id, body, wire.now))
    assert [r.reason for r in wire.of(Refused)] == ["HOP_LIMIT"]
    assert wire.of(Deliver, far) == []


def test_a_duplicate_direct_message_is_taken_once_and_not_acknowledged_again() -> None:
    wire, names = mesh(2, k=2)
    a, b = names
    message_id, body = wire.message(a, b, x=1)
    wire.run(a, wire.nodes[a].send(b, message_id, body, wire.now))
    frame = encode_frame(Routed(message_id, a, b, 0, msgspec.Raw(body)))
    wire.run(a, [Transmit(b, frame)])  # the same message again
    assert len(wire.of(Deliver, b)) == 1
    assert len([t for w, t in wire.seen if w == b and isinstance(t, Transmit)]) == 1  # one ack
    assert wire.nodes[b].has_seen(message_id)


def test_a_lost_link_is_retried_on_schedule_through_the_relay_then_given_up() -> None:
    wire, names = mesh(12, k=2)
    me = names[0]
    node = wire.nodes[me]
    peer = min(p for p in node.links if p > me)  # a link this node offers
    wire.cut.add(frozenset((me, peer)))
    wire.run(me, node.link_down(peer, wire.now))
    wire.run(peer, wire.nodes[peer].link_down(me, wire.now))
    attempts: list[MeshEvent] = []
    for _ in range(400):  # 1 + 2 + 4 + ... + 60 = 303 s, each +/-20 %
        wire.now += 1.0
        before = len(wire.seen)
        wire.run(me, node.tick(wire.now))
        attempts.extend(
            a for w, a in wire.seen[before:] if isinstance(a, MeshEvent) and a.peer == peer
        )
    kinds = [event.kind for event in attempts]
    assert kinds.count("mesh.reconnect") == 10
    assert kinds.count("mesh.relay_fallback") == 1
    assert kinds[-1] == "mesh.link_given_up"
    connects = [a for w, a in wire.seen if w == me and isinstance(a, Connect) and a.peer == peer]
    assert [(c.attempt, c.relay) for c in connects[-10:]] == [(n, n > 3) for n in range(1, 11)]
    # the ring closed round the lost link: the node links to someone else instead
    assert peer in node.given_up
    assert peer not in node.wanted
    assert len(node.links) >= 2
    # the peer announces itself again (it restarted): it is wanted once more
    actions = node.rejoined(peer, wire.now)
    assert peer in node.wanted
    assert Connect(peer) in actions or peer in node.links


def test_a_reconnect_that_succeeds_ends_the_schedule() -> None:
    wire, names = mesh(5, k=4, backoff=Backoff(first=1.0, jitter=0.0))
    me = names[0]
    node = wire.nodes[me]
    peer = names[1]
    wire.run(me, node.link_down(peer, wire.now))
    wire.run(peer, wire.nodes[peer].link_down(me, wire.now))
    wire.now += 1.0
    wire.run(me, node.tick(wire.now))
    assert peer in node.links
    ups = [
        a for w, a in wire.seen if w == me and isinstance(a, MeshEvent) and a.kind == "mesh.link_up"
    ]
    assert ups[-1].detail == {"attempt": 1}


def test_unanswered_probes_raise_quality_degraded_then_restored() -> None:
    wire, names = mesh(2, k=1, probe_every=2.0)
    a, b = names
    node = wire.nodes[a]
    for _ in range(4):  # healthy probes
        wire.now += 2.0
        wire.run(a, node.tick(wire.now))
    wire.cut.add(frozenset((a, b)))  # the link still stands, but nothing gets through
    for _ in range(10):
        wire.now += 2.0
        wire.run(a, node.tick(wire.now))
    wire.cut.clear()
    for _ in range(20):
        wire.now += 2.0
        wire.run(a, node.tick(wire.now))
    kinds = [e.kind for e in wire.of(MeshEvent, a) if e.kind.startswith("mesh.quality")]
    assert kinds == ["mesh.quality_degraded", "mesh.quality_restored"]
    degraded = next(e for e in wire.of(MeshEvent, a) if e.kind == "mesh.quality_degraded")
    assert degraded.detail["band"] == "poor"
    assert degraded.detail["loss_percent"] > 5


def test_a_batch_is_read_frame_by_frame_and_a_bad_frame_in_it_is_refused() -> None:
    wire, names = mesh(2, k=1)
    a, b = names
    from infrafabric.mesh.frames import Batch

    batch = Batch([msgspec.Raw(encode_frame(Ping(1))), msgspec.Raw(b'{"type": "zz"}')])
    wire.run(a, [Transmit(b, encode_frame(batch))])
    assert [r.reason for r in wire.of(Refused, b)] == ["MALFORMED"]
    pongs = [t for w, t in wire.seen if w == b and isinstance(t, Transmit)]
    assert [decode_frame(t.frame) for t in pongs] == [decode_frame(b'{"type":"q","n":1}')]


def test_a_message_the_agent_could_not_take_is_left_to_the_servers_copy() -> None:
    """The peer takes a server copy unless ``has_seen``; the same signed bytes again over
    the mesh are a replay to the receiver's verifier."""
    wire, names = mesh(2, k=2)
    a, b = names
    wire.auto_ack = False
    message_id, body = wire.message(a, b, x=1)
    wire.run(a, wire.nodes[a].send(b, message_id, body, wire.now))
    wire.nodes[b].forget(message_id)  # the agent's queue was full: not taken, not acked
    assert not wire.nodes[b].has_seen(message_id)
    frame = encode_frame(Routed(message_id, a, b, 0, msgspec.Raw(body)))
    wire.run(a, [Transmit(b, frame)])
    assert len(wire.of(Deliver, b)) == 1
    assert [r.reason for r in wire.of(Refused, b)] == ["REPLAY"]


@pytest.mark.parametrize("wrapping", ["gossip with another id", "routed to the victim"])
def test_a_rewrapped_copy_cannot_make_the_real_one_a_replay(wrapping: str) -> None:
    """A neighbour that wraps a real signed broadcast in a frame that lies about it is
    refused before the message's nonce is spent: the real copy is still taken."""
    wire, names = mesh(4, k=3)
    sender, liar, victim = names[0], names[1], names[2]
    message_id, body = wire.message(sender, BROADCAST_TOPIC, amount=1)
    if wrapping == "gossip with another id":
        frame = encode_frame(Gossip("m-other", sender, 1, msgspec.Raw(body)))
    else:
        frame = encode_frame(Routed(message_id, sender, victim, 0, msgspec.Raw(body)))
    wire.run(liar, [Transmit(victim, frame)])
    assert [r.reason for r in wire.of(Refused, victim)] == ["FORGED_FRAME"]
    wire.run(sender, wire.nodes[sender].broadcast(message_id, body, wire.now))
    assert [a.body for a in wire.of(Deliver, victim)] == [body]
    assert [r.reason for r in wire.of(Refused, victim)] == ["FORGED_FRAME"]  # no REPLAY


def test_a_direct_message_rewrapped_as_a_broadcast_is_not_flooded() -> None:
    wire, names = mesh(5, k=4)
    sender, relay, receiver = names[0], names[1], names[2]
    message_id, body = wire.message(sender, receiver, secret="for the receiver only")
    frame = encode_frame(Gossip(message_id, sender, 1, msgspec.Raw(body)))
    for other in names[2:]:
        wire.run(relay, [Transmit(other, frame)])
    assert wire.of(Deliver) == []
    assert {r.reason for r in wire.of(Refused)} == {"FORGED_FRAME"}
    # and the real message still reaches its receiver
    wire.run(sender, wire.nodes[sender].send(receiver, message_id, body, wire.now))
    assert [d.id for d in wire.of(Deliver, receiver)] == [message_id]


def test_only_the_offerer_drops_a_link_it_no_longer_wants() -> None:
    wire, names = mesh(6, k=2)
    low = names[0]
    high = min(p for p in wire.nodes[low].links if p > low)  # a link `low` offers
    # each side's view loses the other (its presence lapsed there, say)
    high_actions = wire.nodes[high].set_members([n for n in names if n != low], wire.now)
    low_actions = wire.nodes[low].set_members([n for n in names if n != high], wire.now)
    assert Disconnect(low) not in high_actions  # the answerer keeps it
    assert Disconnect(high) in low_actions  # the offerer drops it


def test_a_peer_takes_a_message_that_arrives_a_minute_behind_a_newer_one() -> None:
    """The SDK numbers its messages by its clock in ms: the window of 4,096 numbers took
    a message no more than 4 s behind a newer one of its sender (one held up on a link
    while it reconnected, say); now 65 s, past the longest reconnect backoff."""
    keyring = Keyring()
    alice = SigningIdentity.generate(agent_id("alice"))
    keyring.add(new_key_record(alice.agent, alice.public_key, version=1, now=NOW - 60))
    receiver = SignedMesh(Outbox(SigningIdentity.generate(agent_id("bob"))), keyring)
    sender = Outbox(alice, follow_clock=True)
    late = sender.message(now=NOW, performative="inform", receiver="if://agent/bob", content={})
    newer = sender.message(
        now=NOW + 60, performative="inform", receiver="if://agent/bob", content={}
    )
    assert receiver.verify(encode_json(newer), NOW + 60).sender == alice.agent
    assert receiver.verify(encode_json(late), NOW + 60).sender == alice.agent

"""A small swarm you can watch: signed messages between agents, attacks refused, keys rotated.

Everything runs in memory with the real protocol code (no stubs): each agent signs with
its own Ed25519 key, each receiver runs its own :class:`Verifier` against a shared
keyring. ``ifab demo`` (and ``make run``) prints it live.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from infrafabric.protocol.identity import Outbox, SigningIdentity
from infrafabric.protocol.keyring import Keyring, new_key_record
from infrafabric.protocol.message import Hazard, IFMessage, agent_id, encode_json
from infrafabric.protocol.reasons import Reason
from infrafabric.protocol.rotation import RotationKind, announce_rotation, apply_rotation
from infrafabric.protocol.routing import route_message
from infrafabric.protocol.verify import Verdict, Verifier
from infrafabric.types import Timestamp

__all__ = ["DemoEvent", "run_demo"]

AGENT_NAMES = ("planner", "coder", "reviewer", "tester", "researcher", "writer", "ops", "analyst")
_TALK: tuple[tuple[str, dict[str, Any]], ...] = (
    ("request", {"task": "implement the retry policy", "confidence": 0.9}),
    ("propose", {"plan": "split the parser into two modules", "confidence": 0.75}),
    ("inform", {"result": "all 48 tests pass", "confidence": 0.95}),
    ("query-ref", {"question": "which Redis version do we target?", "confidence": 0.5}),
    ("accept", {"task": "review PR 17", "confidence": 0.8}),
    ("share", {"finding": "p99 latency doubled after the upgrade", "confidence": 0.72}),
    ("contradict", {"claim": "the cache is thread-safe", "confidence": 0.15}),
)


@dataclass(frozen=True, slots=True)
class DemoEvent:
    """One line of the demo: what happened, who sent it, and the verifier's verdict."""

    step: int
    story: str
    sender: str
    receiver: str
    performative: str
    accepted: bool
    reason: str | None
    note: str


class _Swarm:
    def __init__(self, agents: int, now: Timestamp, rng: random.Random) -> None:
        names = AGENT_NAMES[: max(2, min(agents, len(AGENT_NAMES)))]
        self.rng = rng
        self.keyring = Keyring()
        self.outboxes: dict[str, Outbox] = {}
        for name in names:
            identity = SigningIdentity.generate(agent_id(name))
            self.keyring.add(
                new_key_record(identity.agent, identity.public_key, version=1, now=now)
            )
            self.outboxes[name] = Outbox(identity)
        self.verifiers = {name: Verifier(self.keyring) for name in names}
        self.captured: list[tuple[str, bytes]] = []

    def names(self) -> list[str]:
        return list(self.outboxes)

    def deliver(self, receiver: str, wire: bytes, now: Timestamp) -> Verdict:
        return self.verifiers[receiver].check(wire, now=now)


def run_demo(
    *,
    agents: int = 4,
    rounds: int = 16,
    start: Timestamp,
    seed: int | None = None,
    emit: Callable[[DemoEvent], None],
    pause: Callable[[], None] = lambda: None,
) -> Counter[str]:
    """Run ``rounds`` steps of a swarm of ``agents`` (2 to 8); returns counts by outcome.

    Time is simulated from ``start`` (one second a step), so the demo is the same on
    every machine for a given ``seed``; signatures and nonces are fresh each run.
    """
    rng = random.Random(seed)  # noqa: S311 - picks who talks; keys and nonces use the CSPRNG
    swarm = _Swarm(agents, start, rng)
    outcomes: Counter[str] = Counter()
    for step in range(1, rounds + 1):
        now = start + step
        event = _step(swarm, step, now)
        outcomes[event.reason or "OK"] += 1
        emit(event)
        pause()
    return outcomes


def _step(swarm: _Swarm, step: int, now: Timestamp) -> DemoEvent:
    attacks: dict[int, Callable[[_Swarm, int, Timestamp], DemoEvent]] = {
        4: _tamper,
        6: _replay,
        8: _impostor,
        10: _rotate,
        12: _stale,
        14: _revoked,
    }
    attack = attacks.get(step % 16 if step % 16 else 16)
    return attack(swarm, step, now) if attack else _honest(swarm, step, now)


def _honest(swarm: _Swarm, step: int, now: Timestamp) -> DemoEvent:
    sender, receiver = swarm.rng.sample(swarm.names(), 2)
    performative, content = swarm.rng.choice(_TALK)
    hazard = None
    if swarm.rng.random() < 0.15:
        hazard = Hazard(
            type="data-loss", severity="high", auto_escalate=True, rationale="touches prod"
        )
    message = swarm.outboxes[sender].message(
        now=now,
        performative=performative,
        receiver=agent_id(receiver),
        content=content,
        hazard=hazard,
    )
    wire = encode_json(message)
    swarm.captured.append((receiver, wire))
    verdict = swarm.deliver(receiver, wire, now)
    note = f"route={route_message(message)}" + (" (hazard)" if hazard else "")
    return _event(step, "honest message", message, receiver, verdict, note)


def _tamper(swarm: _Swarm, step: int, now: Timestamp) -> DemoEvent:
    receiver, wire = swarm.captured[-1]
    forged = wire.replace(b'"content":{', b'"content":{"injected":"rm -rf /",', 1)
    verdict = swarm.deliver(receiver, forged, now)
    return _event(step, "content tampered in transit", verdict.message, receiver, verdict, "")


def _replay(swarm: _Swarm, step: int, now: Timestamp) -> DemoEvent:
    receiver, wire = swarm.captured[-1]
    verdict = swarm.deliver(receiver, wire, now)
    return _event(step, "captured message replayed", verdict.message, receiver, verdict, "")


def _impostor(swarm: _Swarm, step: int, now: Timestamp) -> DemoEvent:
    victim, receiver = swarm.names()[:2]
    impostor = Outbox(SigningIdentity.generate(agent_id(victim)))
    message = impostor.message(
        now=now,
        performative="request",
        receiver=agent_id(receiver),
        content={"task": "send me the keys"},
    )
    verdict = swarm.deliver(receiver, encode_json(message), now)
    return _event(step, f"impostor signs as {victim}", message, receiver, verdict, "")


def _rotate_key(swarm: _Swarm, name: str, kind: RotationKind, now: Timestamp) -> SigningIdentity:
    """Rotate ``name``'s key as its agent would, announce it, apply it; returns the old key."""
    outbox = swarm.outboxes[name]
    old = outbox.identity
    new = SigningIdentity.generate(old.agent, version=old.version + 1)
    outbox.last_sequence += 1
    announcement = announce_rotation(
        old.kid,
        old.version,
        new,
        countersigner=old,
        kind=kind,
        now=now,
        sequence_num=outbox.last_sequence,
    )
    apply_rotation(swarm.keyring, announcement, now)
    outbox.identity = new
    return old


def _rotate(swarm: _Swarm, step: int, now: Timestamp) -> DemoEvent:
    name, receiver = swarm.names()[1], swarm.names()[0]
    outbox = swarm.outboxes[name]
    old = _rotate_key(swarm, name, RotationKind.SCHEDULED, now)
    late = Outbox(old, last_sequence=outbox.last_sequence)  # a message still in flight, old key
    in_flight = late.message(
        now=now, performative="inform", receiver=agent_id(receiver), content={"ok": 1}
    )
    outbox.last_sequence = late.last_sequence
    verdict = swarm.deliver(receiver, encode_json(in_flight), now)
    note = f"{old.kid} -> {outbox.identity.kid}; old key still valid for 7 days"
    return _event(step, "scheduled key rotation", in_flight, receiver, verdict, note)


def _stale(swarm: _Swarm, step: int, now: Timestamp) -> DemoEvent:
    sender, receiver = swarm.names()[2 % len(swarm.names())], swarm.names()[0]
    outbox = swarm.outboxes[sender]
    message = outbox.message(
        now=now - 900,
        performative="inform",
        receiver=agent_id(receiver),
        content={"old": True},
        ttl=300,
    )
    verdict = swarm.deliver(receiver, encode_json(message), now)
    return _event(step, "message delivered 15 minutes late", message, receiver, verdict, "")


def _revoked(swarm: _Swarm, step: int, now: Timestamp) -> DemoEvent:
    name, receiver = swarm.names()[-1], swarm.names()[0]
    outbox = swarm.outboxes[name]
    old = _rotate_key(swarm, name, RotationKind.EMERGENCY, now)
    thief = Outbox(old, last_sequence=outbox.last_sequence + 100)  # whoever stole the old key
    stolen = thief.message(
        now=now, performative="request", receiver=agent_id(receiver), content={"pay": 1}
    )
    verdict = swarm.deliver(receiver, encode_json(stolen), now)
    return _event(
        step, "emergency rotation, then the old key is used", stolen, receiver, verdict, ""
    )


def _event(
    step: int, story: str, message: IFMessage | None, receiver: str, verdict: Verdict, note: str
) -> DemoEvent:
    sender = message.sender.removeprefix("if://agent/") if message else "?"
    performative = message.performative if message else "?"
    reason = None if verdict.reason is None else str(verdict.reason)
    if verdict.reason is Reason.BAD_SIGNATURE and message is not None:
        note = note or f"content now {msgspec.json.encode(message.content)[:40].decode()}..."
    return DemoEvent(
        step,
        story,
        sender,
        receiver,
        performative,
        verdict.accepted,
        reason,
        note or verdict.detail,
    )

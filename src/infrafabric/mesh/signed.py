"""Signing and checking what goes over the mesh, with the fabric's own pipeline.

A peer verifies every message it acts on with :class:`~infrafabric.protocol.verify.Verifier`
(signature, key validity and revocation, clock and ttl, replay) against the fabric's
keyring, as the server would: a message is never trusted because a neighbour passed it
on. The keyring comes from the server (``GET /v1/keys``); the mesh trusts the server for
who is enrolled, never a peer.
"""

from __future__ import annotations

from typing import Any

from infrafabric.mesh.node import Checked, Refusal
from infrafabric.protocol.identity import Outbox
from infrafabric.protocol.keyring import Keyring
from infrafabric.protocol.message import IFMessage, encode_json
from infrafabric.protocol.replay import SequenceWindows
from infrafabric.protocol.verify import Verifier

__all__ = ["REPLAY_WINDOW", "SignedMesh", "receivers_of"]

#: Sequence numbers a peer accepts behind the highest seen from a sender. The SDK's
#: numbers follow its clock in milliseconds (``Outbox(follow_clock=True)``), so this is
#: how late, in ms, a message may arrive behind a newer one of its sender: 65 s, longer
#: than the longest reconnect backoff (60 s). (4,096 was 4 s of a clock; a window costs
#: a bit per number: 8 KiB and 4.5 us an accepted message per sender, measured.)
REPLAY_WINDOW = 65_536


def receivers_of(message: IFMessage) -> tuple[str, ...]:
    receiver: Any = message.receiver
    return (receiver,) if isinstance(receiver, str) else tuple(receiver)


class SignedMesh:
    """This peer's signing outbox (shared with its SDK client, so sequence numbers never
    repeat) and its verifier (its own replay windows, as every receiver keeps)."""

    def __init__(self, outbox: Outbox, keyring: Keyring) -> None:
        self.outbox = outbox
        self.keyring = keyring
        # A peer sees each sender's messages by several paths (the server, gossip over
        # different routes), so they arrive further out of order than at a server: a
        # wider replay window (the nonces still catch every replay).
        self.verifier = Verifier(keyring, sequences=SequenceWindows(window=REPLAY_WINDOW))

    @property
    def me(self) -> str:
        return str(self.outbox.identity.agent)

    def verify(self, body: bytes, now: float) -> Checked:
        verdict = self.verifier.check(body, now=now)
        if not verdict.ok or verdict.message is None:
            raise Refusal(str(verdict.reason or "MALFORMED"), verdict.detail)
        message = verdict.message
        return Checked(
            message.id, message.sender, receivers_of(message), message.content, message.sent_at
        )

    def sign_ack(self, message_id: str, sender: str, now: float) -> bytes:
        ack = self.outbox.message(
            now=now, performative="inform", receiver=sender, content={"mesh_ack": message_id}
        )
        return encode_json(ack)

    def message(self, now: float, **fields: Any) -> IFMessage:
        """A signed message from this peer (fields as for ``build_message``)."""
        return self.outbox.message(now=now, **fields)

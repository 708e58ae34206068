"""What peers send each other over a data channel: small JSON frames around signed
IFMessages. A frame's own fields (ids, hops) only steer it; what a peer acts on is the
signed message inside, which the receiving peer verifies itself.

==========  ===========================================================================
``g``       gossip: a broadcast, flooded to every neighbour once (by message id)
``r``       routed: a direct message for ``dest``, passed hop by hop
``a``       an acknowledgement, routed back to the sender: itself a signed message
            from the receiver (a forged ack would stop the fallback to the server)
``p``/``q`` a quality probe and its answer
``b``       several frames in one data channel message (batched under back-pressure)
==========  ===========================================================================
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = [
    "MAX_FRAME",
    "Ack",
    "Batch",
    "Frame",
    "FrameError",
    "Gossip",
    "Ping",
    "Pong",
    "Routed",
    "decode_frame",
    "encode_frame",
]

#: The largest data channel message a peer accepts (a signed message is at most 64 KiB).
MAX_FRAME: Final = 256 * 1024


class Gossip(msgspec.Struct, tag="g", forbid_unknown_fields=True):
    id: str
    origin: str
    hops: int
    body: msgspec.Raw


class Routed(msgspec.Struct, tag="r", forbid_unknown_fields=True):
    id: str
    origin: str
    dest: str
    hops: int
    body: msgspec.Raw


class Ack(msgspec.Struct, tag="a", forbid_unknown_fields=True):
    id: str  # the message acknowledged
    origin: str  # who acknowledges (the receiver)
    dest: str  # who is told (the sender)
    hops: int
    body: msgspec.Raw  # the receiver's signed acknowledgement


class Ping(msgspec.Struct, tag="p", forbid_unknown_fields=True):
    n: int


class Pong(msgspec.Struct, tag="q", forbid_unknown_fields=True):
    n: int


class Batch(msgspec.Struct, tag="b", forbid_unknown_fields=True):
    frames: list[msgspec.Raw]


Frame = Gossip | Routed | Ack | Ping | Pong | Batch

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Frame)


class FrameError(ValueError):
    """A frame that cannot be read; ``reason`` is ``TOO_LARGE`` or ``MALFORMED``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode_frame(frame: Frame) -> bytes:
    return _ENCODER.encode(frame)


def decode_frame(data: bytes | str) -> Frame:
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_FRAME:
        raise FrameError("TOO_LARGE", f"{len(raw)} bytes > {MAX_FRAME}")
    try:
        frame = _DECODER.decode(raw)
    except msgspec.DecodeError as exc:  # (ValidationError is a DecodeError)
        raise FrameError("MALFORMED", str(exc)) from None
    if isinstance(frame, Gossip | Routed | Ack) and not 0 <= frame.hops <= 255:
        raise FrameError("MALFORMED", f"hops {frame.hops} out of range")
    return frame

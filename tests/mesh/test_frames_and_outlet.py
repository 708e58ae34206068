"""Data channel frames refuse what they cannot read; the outlet bounds what waits."""

from __future__ import annotations

import msgspec
import pytest

from infrafabric.mesh.frames import (
    MAX_FRAME,
    Batch,
    FrameError,
    Gossip,
    Ping,
    decode_frame,
    encode_frame,
)
from infrafabric.mesh.outlet import Outlet


def test_a_frame_round_trips_with_its_signed_body_untouched() -> None:
    body = b'{"z": 1, "a":  2}'  # not canonical: kept byte for byte
    frame = Gossip("m-1", "if://agent/a", 3, msgspec.Raw(body))
    decoded = decode_frame(encode_frame(frame))
    assert isinstance(decoded, Gossip)
    assert bytes(decoded.body) == body
    assert decode_frame(encode_frame(Ping(7)).decode()) == Ping(7)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "MALFORMED"),
        (b'{"type": "x"}', "MALFORMED"),
        (b'{"type": "p"}', "MALFORMED"),
        (b'{"type": "p", "n": 1, "extra": 2}', "MALFORMED"),
        (b'{"type": "g", "id": "m", "origin": "o", "hops": -1, "body": {}}', "MALFORMED"),
        (b'{"type": "g", "id": "m", "origin": "o", "hops": 999, "body": {}}', "MALFORMED"),
        (b"[" * (MAX_FRAME + 1), "TOO_LARGE"),
    ],
)
def test_a_bad_frame_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as refused:
        decode_frame(data)
    assert refused.value.reason == reason


def test_the_outlet_sends_at_once_while_the_channel_keeps_up() -> None:
    outlet = Outlet(high_water=100, batch_bytes=50, max_queued=200)
    assert outlet.push(b"a" * 10, buffered=0) == [b"a" * 10]
    assert outlet.waiting == 0


def test_a_slow_channel_gets_fewer_larger_messages_and_a_bounded_queue() -> None:
    outlet = Outlet(high_water=100, batch_bytes=50, max_queued=200)
    frames = [encode_frame(Ping(n)) for n in range(30)]  # 20 bytes or so each
    sent: list[bytes] = []
    for frame in frames:
        out = outlet.push(frame, buffered=150)  # the channel is behind: everything waits
        if out is None:
            break
        sent.extend(out)
    assert sent == []
    assert outlet.queued_bytes <= 200
    assert outlet.refused == 1  # the queue is full: the caller is told
    queued = outlet.waiting
    first = outlet.drain(buffered=0)  # the channel caught up: up to high_water leaves
    assert 0 < sum(map(len, first)) <= 100 + 50
    assert outlet.waiting > 0
    drained = first
    while outlet.waiting:  # each time the channel has sent what it held
        drained += outlet.drain(buffered=0)
    assert outlet.waiting == 0
    assert len(drained) < queued  # batched
    assert outlet.batches >= 1
    received = []
    for message in drained:
        frame = decode_frame(message)
        inner = frame.frames if isinstance(frame, Batch) else [msgspec.Raw(message)]
        received.extend(decode_frame(bytes(f)) for f in inner)
    assert received == [Ping(n) for n in range(queued)]  # all of them, in order

"""What the witness records: one canonical JSON entry per decision of the fabric.

An entry is RFC 8785 canonical JSON (so its bytes, and its leaf hash, are the same in
any language) of::

    {"index": 17, "component": "board", "event": "task.claimed", "actor": "if://agent/a",
     "trace_id": "...", "task_id": "t1", "at": "2026-11-23T20:00:00.000Z",
     "payload": {...}, "cost": {"tokens_in": 0, "tokens_out": 0, "usd": 0, "model": ""},
     "source": {"board_event": 42}}

``index`` is the entry's own position in the log, so an entry moved to another position
is caught by its content alone. ``actor``, ``trace_id``, ``task_id`` and ``cost`` are
left out when unknown; ``source`` says where the decision was recorded first (the board's
event log position), so the witness can be checked against it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from infrafabric.protocol.canonical import canonical_json_of_data
from infrafabric.protocol.timefmt import format_timestamp
from infrafabric.storage.base import StoredEvent

__all__ = ["Cost", "WitnessEntry", "decode_entry", "encode_entry", "entry_of_board_event"]


class Cost(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tokens_in: int = 0
    tokens_out: int = 0
    usd: float = 0.0
    model: str = ""


class WitnessEntry(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    index: int
    component: str
    event: str
    at: str
    actor: str | None = None
    trace_id: str | None = None
    task_id: str | None = None
    payload: dict[str, Any] = {}
    cost: Cost | None = None
    source: dict[str, Any] = {}


_DECODER = msgspec.json.Decoder(WitnessEntry)


def encode_entry(entry: WitnessEntry) -> bytes:
    """The canonical bytes of ``entry`` (what the leaf hash is taken of)."""
    return canonical_json_of_data(msgspec.to_builtins(entry))


def decode_entry(data: bytes) -> WitnessEntry:
    return _DECODER.decode(data)


def entry_of_board_event(stored: StoredEvent, index: int) -> WitnessEntry:
    """The entry for one logged event: the usage an agent reported with it (tokens,
    model, USD) becomes the entry's ``cost``; the task's new state goes in the payload."""
    event = stored.event
    payload = dict(event.payload)
    usage = payload.pop("usage", None)
    if event.state is not None:
        payload["state"] = str(event.state)
    return WitnessEntry(
        index=index,
        component=event.component,
        event=event.kind,
        at=format_timestamp(event.at),
        actor=event.actor,
        trace_id=event.trace_id,
        task_id=event.task_id or None,
        payload=payload,
        cost=_cost(usage),
        source={"board_event": stored.seq},
    )


def _cost(usage: Any) -> Cost | None:
    if not isinstance(usage, dict):
        return None
    return Cost(
        tokens_in=int(usage.get("tokens_in", 0)),
        tokens_out=int(usage.get("tokens_out", 0)),
        usd=float(usage.get("usd", 0.0)),
        model=str(usage.get("model", "")),
    )

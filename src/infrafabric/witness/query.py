"""Finding entries in the witness log: by component, event, trace, task, actor and time.

The log is ordered by index, not indexed by field, so a query scans forward from a
start index and stops after ``limit`` matches or ``budget`` entries read, whichever
comes first, saying where the next scan should start. A server answers each request in
bounded time that way, and a reader (``ifab witness log``, ``trace``, ``cost``,
``export``) pages through as much of the log as it needs. Scanning decodes about a
million entries in a few seconds; an index by trace would be the next step if traces
over very long logs become common.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from infrafabric.protocol.timefmt import format_timestamp, parse_timestamp
from infrafabric.types import Timestamp
from infrafabric.witness.entry import WitnessEntry, decode_entry

__all__ = ["EntryFilter", "Found", "Page", "scan"]

#: Entries read from the log per round of a scan.
CHUNK = 1000
#: The filters that match a text field exactly (``event``: a shell pattern).
TEXT_FIELDS = ("component", "event", "trace_id", "task_id", "actor")
#: Longest filter value a query accepts.
MAX_PARAM = 256


class Entries(Protocol):
    """What a scan reads: :class:`~infrafabric.witness.log.WitnessLog` has it."""

    @property
    def size(self) -> int: ...

    def entries(self, start: int, end: int) -> list[tuple[int, bytes, bytes]]: ...


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """Which entries a query wants; every field given must match (``None``: any).

    ``event`` is a shell pattern (``task.*``); ``since`` is inclusive and ``until``
    exclusive, in POSIX seconds; ``with_cost`` keeps only entries that carry a cost.
    """

    component: str | None = None
    event: str | None = None
    trace_id: str | None = None
    task_id: str | None = None
    actor: str | None = None
    since: Timestamp | None = None
    until: Timestamp | None = None
    with_cost: bool = False

    def matches(self, entry: WitnessEntry) -> bool:
        # Entries carry canonical millisecond timestamps, which sort as text.
        since, until = self._bounds()
        return (
            (self.component is None or entry.component == self.component)
            and (self.event is None or fnmatch.fnmatchcase(entry.event, self.event))
            and (self.trace_id is None or entry.trace_id == self.trace_id)
            and (self.task_id is None or entry.task_id == self.task_id)
            and (self.actor is None or entry.actor == self.actor)
            and (since is None or entry.at >= since)
            and (until is None or entry.at < until)
            and (not self.with_cost or entry.cost is not None)
        )

    def _bounds(self) -> tuple[str | None, str | None]:
        return _as_text(self.since), _as_text(self.until)

    @property
    def everything(self) -> bool:
        return self == EntryFilter()

    def as_params(self) -> dict[str, str]:
        """The filter as the query parameters of ``/v1/witness/entries``."""
        params = {name: value for name in TEXT_FIELDS if (value := getattr(self, name))}
        for name in ("since", "until"):
            text = _as_text(getattr(self, name))
            if text is not None:
                params[name] = text
        if self.with_cost:
            params["cost"] = "true"
        return params

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> EntryFilter:
        """The filter the query parameters name; :class:`ValueError` names a bad one."""
        texts: dict[str, str | None] = {}
        for name in TEXT_FIELDS:
            value = params.get(name) or None
            if value is not None and len(value) > MAX_PARAM:
                raise ValueError(f"{name} is longer than {MAX_PARAM} characters")
            texts[name] = value
        instants: dict[str, float | None] = {}
        for name in ("since", "until"):
            value = params.get(name) or None
            try:
                instants[name] = None if value is None else parse_timestamp(value[:MAX_PARAM])
                _as_text(instants[name])  # entries compare as text: it must format back
            except (ValueError, OverflowError, OSError) as exc:
                raise ValueError(f"{name}: {exc}") from None
        cost = params.get("cost", "false")
        if cost not in ("true", "false"):
            raise ValueError("cost is true or false")
        return cls(
            component=texts["component"],
            event=texts["event"],
            trace_id=texts["trace_id"],
            task_id=texts["task_id"],
            actor=texts["actor"],
            since=instants["since"],
            until=instants["until"],
            with_cost=cost == "true",
        )


@dataclass(frozen=True, slots=True)
class Found:
    index: int
    leaf: bytes
    data: bytes  # the entry's canonical JSON, as logged


@dataclass(frozen=True, slots=True)
class Page:
    found: list[Found]
    next: int  # where to continue; ``size`` once the whole log was read
    size: int

    def to_json(self) -> dict[str, Any]:
        """The page as the server sends it (``/v1/witness/entries``) and the CLI reads it."""
        return {
            "entries": [_item(f) for f in self.found],
            "next": self.next,
            "size": self.size,
        }


def _item(found: Found) -> dict[str, Any]:
    """One entry as JSON: ``{"index", "leaf", "entry"}``. An entry that is not a JSON
    object (a damaged log: ``ifab witness verify`` says more) is still listed, so one bad
    entry does not hide the rest: ``"entry": null, "damaged": true`` and its bytes in
    base64 as ``raw``."""
    try:
        entry = json.loads(found.data)
    except (ValueError, RecursionError):  # not UTF-8 or not JSON; nested too deep
        entry = None
    if not isinstance(entry, dict):
        return {
            "index": found.index,
            "leaf": found.leaf.hex(),
            "entry": None,
            "damaged": True,
            "raw": base64.b64encode(found.data).decode(),
        }
    return {"index": found.index, "leaf": found.leaf.hex(), "entry": entry}


def scan(
    log: Entries, where: EntryFilter, start: int = 0, *, limit: int = 100, budget: int = 10_000
) -> Page:
    """Entries from ``start`` on that match ``where``: at most ``limit`` of them, reading at
    most ``budget`` entries. An entry that does not decode (a damaged log: see ``ifab
    witness verify``) matches only the empty filter."""
    size = log.size
    found: list[Found] = []
    position = start
    while position < size and len(found) < limit and position - start < budget:
        end = min(size, position + CHUNK, start + budget)
        for index, leaf, data in log.entries(position, end):
            position = index + 1
            if where.everything or _matches(where, data):
                found.append(Found(index, leaf, data))
                if len(found) == limit:
                    break
        else:
            position = end
    return Page(found, min(position, size), size)


@functools.lru_cache(maxsize=64)
def _as_text(instant: Timestamp | None) -> str | None:
    """``instant`` as entries spell times (formatted once per filter, not per entry)."""
    return None if instant is None else format_timestamp(instant)


def _matches(where: EntryFilter, data: bytes) -> bool:
    try:
        entry = decode_entry(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return where.matches(entry)

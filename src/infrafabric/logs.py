"""Logs: plain lines for a terminal, or one JSON object a line for Loki and its kin.

``ifab serve --log-format json`` logs every line as JSON (``time``, ``level``,
``logger``, ``message`` and the event's own fields). The fabric's decisions are logged
too, at INFO on ``infrafabric.events`` (``kind``, ``task_id``, ``actor``, ``state``,
``trace_id``), and refused messages on ``infrafabric.refusals`` (``op``, ``code``), so a
log shipper can follow a trace without the witness. Text logs show warnings and worse.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, Final, Literal

from infrafabric.board.model import BoardEvent
from infrafabric.protocol.timefmt import format_timestamp

__all__ = ["FIELDS", "JsonFormatter", "configure", "log_events", "log_refusal"]

#: Where a record's structured fields ride (``extra={FIELDS: {...}}``).
FIELDS: Final = "ifab"
LogFormat = Literal["text", "json"]

_events = logging.getLogger("infrafabric.events")
_refusals = logging.getLogger("infrafabric.refusals")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (RFC 3339, UTC), level, logger, message, the
    record's fields, and the exception if there was one."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": format_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            document.update({key: value for key, value in fields.items() if value is not None})
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, separators=(",", ":"))


def configure(log_format: LogFormat) -> None:
    """Send every log line to stderr in ``log_format``: JSON from INFO, text from WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO if log_format == "json" else logging.WARNING)


def log_events(events: Sequence[BoardEvent]) -> None:
    """Log the fabric's decisions, one line each (a listener of the service's events)."""
    if not _events.isEnabledFor(logging.INFO):
        return
    for event in events:
        fields = {
            "component": event.component,
            "kind": event.kind,
            "task_id": event.task_id,
            "actor": event.actor,
            "state": None if event.state is None else str(event.state),
            "trace_id": event.trace_id,
        }
        _events.info("%s %s", event.kind, event.task_id or "", extra={FIELDS: fields})


def log_refusal(op: str, code: str | None, seconds: float) -> None:
    """Log a refused message (an observer of the service's messages); accepted ones are
    the decisions above."""
    if code is not None and _refusals.isEnabledFor(logging.INFO):
        _refusals.info("refused %s: %s", op, code, extra={FIELDS: {"op": op, "code": code}})

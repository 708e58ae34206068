"""The OpenAPI 3.1 description of ``/v1``, served at ``/v1/openapi.json``.

Written by hand so that it says what the routes do (a test checks it lists every route,
and that it is a valid OpenAPI document: every ``{param}`` of a path and every query
parameter a route reads is declared). Bodies of ``/v1/messages`` follow
``schemas/ifmessage-2.1.json``; board operations are described in ``docs/server.md``.
"""

from __future__ import annotations

from typing import Any, Final

from infrafabric._version import __version__
from infrafabric.board.model import TaskState
from infrafabric.witness.query import MAX_PARAM

__all__ = ["OPENAPI"]

_ERROR: Final[dict[str, Any]] = {
    "description": "Refused; nothing changed",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {"code": {"type": "string"}, "detail": {"type": "string"}},
                    }
                },
            }
        }
    },
}
_OK: Final[dict[str, Any]] = {
    "description": "OK",
    "content": {"application/json": {"schema": {"type": "object"}}},
}
_BEARER: Final[list[dict[str, list[str]]]] = [{"bearer": []}]


#: What the server takes for a count, a position or a size: ASCII digits, below 10^18.
_COUNT: Final[dict[str, Any]] = {"type": "integer", "minimum": 0, "maximum": 10**18 - 1}
_POSITIVE: Final[dict[str, Any]] = {**_COUNT, "minimum": 1}
_FILTER: Final[dict[str, Any]] = {"type": "string", "maxLength": MAX_PARAM}
_INSTANT: Final[dict[str, Any]] = {"type": "string", "format": "date-time"}  # RFC 3339


def _path(name: str, description: str) -> dict[str, Any]:
    """A ``{name}`` segment of the path (OpenAPI requires each one declared)."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _query(
    name: str, description: str, schema: dict[str, Any] = _COUNT, *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _op(
    summary: str,
    *,
    secured: bool = True,
    body: bool = False,
    parameters: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": _OK, "4XX": _ERROR, "5XX": _ERROR},
    }
    if parameters:
        operation["parameters"] = list(parameters)
    if secured:
        operation["security"] = _BEARER
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    return operation


OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {"title": "InfraFabric", "version": __version__},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "paths": {
        "/v1/health": {"get": _op("Liveness and version", secured=False)},
        "/v1/openapi.json": {"get": _op("This document", secured=False)},
        "/v1/auth/challenge": {
            "post": _op("Get a challenge for an agent", secured=False, body=True)
        },
        "/v1/auth/token": {
            "post": _op(
                "Trade a signed challenge for a token (15 minutes: expires_in says)",
                secured=False,
                body=True,
            )
        },
        "/v1/messages": {
            "post": _op(
                "Send a signed IFMessage: a board operation (to if://service/board), a direct message, or a topic message",
                secured=False,
                body=True,
            )
        },
        "/v1/tasks": {
            "get": _op(
                "A page of the board's tasks by id (repeat ?state= to filter); next: the"
                " after of the next page, null on the last",
                parameters=(
                    {
                        **_query(
                            "state",
                            "Only tasks in these states (repeat the parameter; none: every task)",
                            {
                                "type": "array",
                                "items": {"type": "string", "enum": [s.value for s in TaskState]},
                            },
                        ),
                        "style": "form",
                        "explode": True,
                    },
                    _query(
                        "after",
                        "Tasks whose id sorts after this one (the previous page's next)",
                        {"type": "string", "maxLength": 128},
                    ),
                    _query(
                        "limit", "At most this many tasks (default 500, at most 5,000)", _POSITIVE
                    ),
                ),
            )
        },
        "/v1/tasks/{task_id}": {
            "get": _op("One task", parameters=(_path("task_id", "The task's id"),))
        },
        "/v1/agents": {"get": _op("Enrolled agents with their health")},
        "/v1/keys": {
            "get": _op("Every enrolled key's public record (infrafabric-keyring/1), for peers")
        },
        "/v1/mesh": {"get": _op("The mesh peers' latest link reports and their quality")},
        "/v1/events": {
            "get": _op(
                "Board events after ?after=seq (replay)",
                parameters=(
                    _query("after", "Events after this sequence number (default 0)"),
                    _query(
                        "limit", "At most this many events (default 500, at most 5,000)", _POSITIVE
                    ),
                ),
            )
        },
        "/v1/inbox": {
            "get": _op(
                "The calling agent's unacknowledged direct messages (at most 100)",
                parameters=(_query("after", "Messages after this inbox position (default 0)"),),
            )
        },
        "/v1/inbox/ack": {
            "post": _op(
                "Gone (410 SIGNED_ACK): acknowledge with a signed request to if://service/inbox,"
                ' content {"op": "ack", "position": N}',
                body=True,
            )
        },
        "/": {
            "get": _op("The live dashboard (HTML; signs in with the admin token)", secured=False)
        },
        "/ui/{name}": {
            "get": _op(
                "The dashboard's script and style sheet",
                secured=False,
                parameters=(_path("name", "The file's name"),),
            )
        },
        "/v1/dashboard/login": {
            "post": _op(
                "{token}: the admin token for a 12-hour operator session cookie (HttpOnly,"
                " SameSite=Strict) that opens reads and the WebSocket",
                secured=False,
                body=True,
            )
        },
        "/v1/dashboard/logout": {"post": _op("End the operator session", secured=False)},
        "/healthz": {"get": _op("The process is alive: status and version", secured=False)},
        "/readyz": {
            "get": _op(
                "Ready for requests: the store answers and the witness keeps up (503 if not),"
                " with what each check found",
                secured=False,
            )
        },
        "/metrics": {"get": _op("Prometheus text format (admin token): see docs/operations.md")},
        "/mcp": {
            "post": _op(
                "MCP over Streamable HTTP (JSON-RPC; stateless, JSON replies) for one agent:"
                " Authorization: Bearer <token from `ifab mcp token`>, a key the agent lent",
                body=True,
            )
        },
        "/v1/admin/agents": {
            "post": _op(
                "Enroll an agent: its public keys and capability manifest"
                " (capabilities, model, price, swarm; admin token)",
                body=True,
            )
        },
        "/v1/governor/report": {
            "get": _op(
                "The governor's books: budgets, spend, breakers, reputation per agent and swarm"
            )
        },
        "/v1/admin/governor/reload": {
            "post": _op(
                "Read the governor's policy file again (admin token); a bad one changes nothing"
            )
        },
        "/v1/witness/checkpoint": {
            "get": _op("The latest signed checkpoint (C2SP signed note) and its verifier key")
        },
        "/v1/witness/entries": {
            "get": _op(
                "Witness log entries ?start=&end=, or searched: ?limit=&component=&event="
                "&trace_id=&task_id=&actor=&since=&until=&cost=true (next, size to page on)",
                parameters=(
                    _query("start", "The first entry's index (default 0)"),
                    _query("end", "A range [start, end) of at most 1,000 entries, unfiltered"),
                    _query("limit", "At most this many entries (a search: default 100)", _POSITIVE),
                    _query("component", "Entries of this component", _FILTER),
                    _query("event", "Entries whose event matches this pattern", _FILTER),
                    _query("trace_id", "Entries of this trace", _FILTER),
                    _query("task_id", "Entries about this task", _FILTER),
                    _query("actor", "Entries of this actor", _FILTER),
                    _query("since", "Entries at or after this time (RFC 3339)", _INSTANT),
                    _query("until", "Entries at or before this time (RFC 3339)", _INSTANT),
                    _query("cost", "Only entries that carry a cost", {"type": "boolean"}),
                ),
            )
        },
        "/v1/witness/spend": {
            "get": _op(
                "Spend over time from the costed entries: points [time, USD so far] "
                "(at most 500), total_usd (next < size: ask again for the rest)"
            )
        },
        "/v1/witness/proof": {
            "get": _op(
                "A proof bundle for entry ?index= or ?hash= (hex leaf), at ?size=",
                parameters=(
                    _query("index", "The entry's index (this or hash)"),
                    _query("hash", "The entry's leaf hash, in hex (this or index)", _FILTER),
                    _query(
                        "size",
                        "Prove against the checkpoint of this tree size (default: the latest)",
                    ),
                ),
            )
        },
        "/v1/witness/consistency": {
            "get": _op(
                "A consistency proof between tree sizes ?old= and ?new=",
                parameters=(
                    _query("old", "The older tree size", required=True),
                    _query("new", "The newer tree size (default: the latest checkpoint's)"),
                ),
            )
        },
        "/v1/ws": {
            "get": _op(
                "WebSocket for the bus and live events (?token=)",
                parameters=(
                    _query(
                        "token",
                        "An agent's token or the admin token (the dashboard's socket uses its"
                        " session cookie instead)",
                        {"type": "string"},
                    ),
                    _query(
                        "inbox",
                        "false: a connection for requests only, no direct messages pushed",
                        {"type": "boolean", "default": True},
                    ),
                ),
            )
        },
    },
}

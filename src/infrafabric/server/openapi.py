"""The OpenAPI 3.1 description of ``/v1``, served at ``/v1/openapi.json``.

Written by hand so that it says what the routes do (a test checks it lists every route).
Bodies of ``/v1/messages`` follow ``schemas/ifmessage-2.1.json``; board operations are
described in ``docs/server.md``.
"""

from __future__ import annotations

from typing import Any, Final

from infrafabric._version import __version__

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


def _op(summary: str, *, secured: bool = True, body: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": _OK, "4XX": _ERROR, "5XX": _ERROR},
    }
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
            "post": _op("Trade a signed challenge for a 15-minute token", secured=False, body=True)
        },
        "/v1/messages": {
            "post": _op(
                "Send a signed IFMessage: a board operation (to if://service/board), a direct message, or a topic message",
                secured=False,
                body=True,
            )
        },
        "/v1/tasks": {"get": _op("The board's tasks (repeat ?state= to filter)")},
        "/v1/tasks/{task_id}": {"get": _op("One task")},
        "/v1/agents": {"get": _op("Enrolled agents with their health")},
        "/v1/keys": {
            "get": _op("Every enrolled key's public record (infrafabric-keyring/1), for peers")
        },
        "/v1/mesh": {"get": _op("The mesh peers' latest link reports and their quality")},
        "/v1/events": {"get": _op("Board events after ?after=seq (replay)")},
        "/v1/inbox": {"get": _op("The calling agent's unacknowledged direct messages")},
        "/v1/inbox/ack": {"post": _op("Acknowledge a direct message by position", body=True)},
        "/": {
            "get": _op("The live dashboard (HTML; signs in with the admin token)", secured=False)
        },
        "/ui/{name}": {"get": _op("The dashboard's script and style sheet", secured=False)},
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
                "&trace_id=&task_id=&actor=&since=&until=&cost=true (next, size to page on)"
            )
        },
        "/v1/witness/spend": {
            "get": _op(
                "Spend over time from the costed entries: points [time, USD so far] "
                "(at most 500), total_usd (next < size: ask again for the rest)"
            )
        },
        "/v1/witness/proof": {
            "get": _op("A proof bundle for entry ?index= or ?hash= (hex leaf), at ?size=")
        },
        "/v1/witness/consistency": {
            "get": _op("A consistency proof between tree sizes ?old= and ?new=")
        },
        "/v1/ws": {"get": _op("WebSocket for the bus and live events (?token=)")},
    },
}

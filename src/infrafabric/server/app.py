"""The ASGI application: REST under ``/v1`` and the WebSocket ``/v1/ws``.

Every mutation is a signed IFMessage posted to ``/v1/messages`` (or sent over the
WebSocket) and goes through the service's verification pipeline; refusals come back as
``{"error": {"code", "detail"}}`` with a fitting status and change nothing. Reads take a
bearer token from the challenge-response of :mod:`.auth`, or the operator's admin token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from infrafabric import logs, ops
from infrafabric._version import __version__
from infrafabric.board.model import BoardEvent, TaskState
from infrafabric.bridges.mcp.route import McpRoute
from infrafabric.errors import KeyringError, StoreError
from infrafabric.governor.core import Manifest
from infrafabric.governor.driver import GovernorDriver
from infrafabric.governor.policy import PolicyError, Price
from infrafabric.keystore import keyring_lock, write_keyring_dir
from infrafabric.protocol.addresses import subscription_problem
from infrafabric.protocol.keyring import KeyRecord, Keyring, KeyringFile
from infrafabric.protocol.timefmt import parse_timestamp
from infrafabric.server.auth import AuthError, Sessions
from infrafabric.server.bodies import MAX_BODY, decode, json_body, loads, read_body
from infrafabric.server.committer import Committer
from infrafabric.server.dashboard import dashboard_routes
from infrafabric.server.hub import QUEUE_LIMIT, Connection, Hub
from infrafabric.server.mesh import MeshView
from infrafabric.server.metrics import Metrics, readiness
from infrafabric.server.openapi import OPENAPI
from infrafabric.service import FabricService, ServiceError
from infrafabric.storage.base import AgentRecord
from infrafabric.types import AgentId, Timestamp
from infrafabric.witness.bundle import make_bundle
from infrafabric.witness.entry import decode_entry
from infrafabric.witness.feeder import Witness
from infrafabric.witness.log import LogDamaged
from infrafabric.witness.query import EntryFilter, Page, scan
from infrafabric.witness.spend import SpendSeries

if TYPE_CHECKING:
    from infrafabric.server.relay import Relay

__all__ = ["ServerState", "create_app"]

_log = logging.getLogger(__name__)

#: Threads carrying out messages side by side over a shared store (Redis round trips).
#: Four, not eight: each Redis call lets go of the GIL and takes it back, and eight
#: threads took it from each other so often that claims cost more CPU and served fewer
#: (measured in docs/architecture.md, "Group commit"); two were no better than four.
SHARED_STORE_WORKERS: Final = 4
#: The dashboard's operator session cookie (see :mod:`.dashboard`).
SESSION_COOKIE: Final = "ifab_operator"
#: The content type of the Prometheus text format.
PROMETHEUS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: ``GET /v1/tasks``: tasks per page by default, and at most (see ``Store.task_page`` for
#: the store's time).
TASK_PAGE: Final = 500
MAX_TASK_PAGE: Final = ops.MAX_TASK_PAGE


@dataclass
class ServerState:
    """What the routes share; built by :func:`infrafabric.server.runner.open_server`."""

    service: FabricService
    sessions: Sessions
    keyring: Keyring
    keyring_dir: Path
    clock: Callable[[], Timestamp] = time.time
    queue_limit: int = QUEUE_LIMIT  # frames waiting per WebSocket before it is dropped
    witness: Witness | None = None  # the witness log of this fabric's decisions
    relay: Relay | None = None  # several servers over one Redis: their changes, live
    release: Callable[[], None] | None = None  # the data directory's lock, let go at close
    hub: Hub | None = field(default=None, init=False)
    mesh: MeshView = field(init=False)  # the mesh peers' latest link reports
    spend: SpendSeries = field(default_factory=SpendSeries, init=False)  # from the witness
    spend_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    committer: Committer = field(init=False)
    # Keys whose further state (deprecated, revoked) an enrollment applied before its
    # commit, which then failed: the retry owes their event (see enroll_keys).
    unwitnessed_keys: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        # Redis: many messages in flight at once, on threads; SQLite: one writer, on the
        # event loop itself (see Committer)
        shared = self.service.store.shared
        self.committer = Committer(
            self.service, workers=SHARED_STORE_WORKERS if shared else 1, on_loop=not shared
        )
        self.mesh = MeshView(self.clock)
        self.service.keys_changed = self._write_keys

    def _write_keys(self, agent: AgentId) -> None:
        """Keep the keyring directory in step with a key lent or recalled by message."""
        with keyring_lock(self.keyring_dir):
            write_keyring_dir(self.keyring, self.keyring_dir, agents=[agent])

    def close(self) -> None:
        """Finish the messages already submitted, witness what they decided, then close
        the witness log and the store."""
        self.committer.close()
        if self.relay is not None:
            self.relay.close()
        if self.witness is not None:
            self.witness.close()
            self.witness.log.close()
        self.service.store.close()
        if self.release is not None:
            self.release()


class _Enrollment(msgspec.Struct, forbid_unknown_fields=True):
    keys: KeyringFile
    capabilities: list[str] = []
    description: str = ""
    model: str = ""  # the capability manifest the governor ranks the agent by
    price: Price | None = None
    swarm: str | None = None


def create_app(state: ServerState) -> Starlette:
    mcp = McpRoute(state)  # agents' MCP clients, over Streamable HTTP (a lent key each)
    metrics = Metrics(state)
    state.service.on_events(logs.log_events)  # (at INFO: only with --log-format json)
    state.service.observers.append(logs.log_refusal)

    async def scrape(request: Request) -> Response:
        try:
            _admin(state, request)
        except ServiceError as exc:
            return _json(exc.to_json(), exc.status)
        body = await run_in_threadpool(metrics.exposition)
        return Response(body, 200, media_type=PROMETHEUS_TYPE)

    async def ready(request: Request) -> Response:
        verdict, checks = await run_in_threadpool(readiness, state)
        return _json({"ready": verdict, "checks": checks}, 200 if verdict else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub = Hub(asyncio.get_running_loop(), queue_limit=state.queue_limit)
        state.hub = hub

        def topic_message(topic: str, body: bytes) -> None:
            hub.topic_message(topic, body)
            state.mesh.on_topic(topic, body)

        if state.relay is None:
            state.service.on_events(hub.board_events)
            state.service.on_delivery(hub.delivery)
            state.service.on_topic(topic_message)
        else:  # every server's changes come back through the store, in one order
            from infrafabric.server.relay import RelayListeners  # (redis-py: only if used)

            state.relay.start(RelayListeners(hub.board_events, hub.delivery, topic_message))
            state.service.on_topic(state.relay.store.publish)
        yield
        await mcp.close()
        await asyncio.to_thread(state.committer.close)  # not a blocking join on the loop

    routes = [
        Route("/v1/health", _health, methods=["GET"]),
        Route("/healthz", _health, methods=["GET"]),
        Route("/readyz", ready, methods=["GET"]),
        Route("/metrics", scrape, methods=["GET"]),
        Route("/v1/openapi.json", _openapi, methods=["GET"]),
        Route("/v1/auth/challenge", _route(state, _challenge), methods=["POST"]),
        Route("/v1/auth/token", _route(state, _token), methods=["POST"]),
        Route("/v1/messages", _route(state, _messages), methods=["POST"]),
        Route("/v1/tasks", _route(state, _tasks), methods=["GET"]),
        Route("/v1/tasks/{task_id}", _route(state, _task), methods=["GET"]),
        Route("/v1/agents", _route(state, _agents), methods=["GET"]),
        Route("/v1/keys", _route(state, _keys), methods=["GET"]),
        Route("/v1/mesh", _route(state, _mesh), methods=["GET"]),
        Route("/v1/events", _route(state, _events), methods=["GET"]),
        Route("/v1/inbox", _route(state, _inbox), methods=["GET"]),
        Route("/v1/inbox/ack", _route(state, _ack), methods=["POST"]),
        Route("/v1/admin/agents", _route(state, _enroll), methods=["POST"]),
        Route("/v1/governor/report", _route(state, _governor_report), methods=["GET"]),
        Route("/v1/admin/governor/reload", _route(state, _governor_reload), methods=["POST"]),
        Route("/v1/witness/checkpoint", _route(state, _witness_checkpoint), methods=["GET"]),
        Route("/v1/witness/entries", _route(state, _witness_entries), methods=["GET"]),
        Route("/v1/witness/spend", _route(state, _witness_spend), methods=["GET"]),
        Route("/v1/witness/proof", _route(state, _witness_proof), methods=["GET"]),
        Route("/v1/witness/consistency", _route(state, _witness_consistency), methods=["GET"]),
        WebSocketRoute("/v1/ws", lambda websocket: _websocket(state, websocket)),
        Route("/mcp", mcp),
        *dashboard_routes(state, SESSION_COOKIE),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_refusal, 500: _internal_error},
    )
    mcp.fabric_app = app
    return app


#: The reason codes of the router's own refusals (no route, wrong method).
_HTTP_CODES: Final = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


async def _http_refusal(request: Request, exc: Exception) -> Response:
    """The router's refusals (an unknown path, a method the route does not take) as JSON
    with a reason code, like every other refusal; they were plain text."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "HTTP_ERROR")
    detail = f"{request.method} {request.url.path}: {exc.detail}"
    response = _json({"error": {"code": code, "detail": detail}}, exc.status_code)
    response.headers.update(exc.headers or {})
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug: JSON ``INTERNAL`` with the error's type only (the traceback goes to the log)."""
    return _json({"error": {"code": "INTERNAL", "detail": type(exc).__name__}}, 500)


# -- plumbing -----------------------------------------------------------------------------

Handler = Callable[[ServerState, Request], Awaitable[Any]]


def _route(state: ServerState, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            result = await handler(state, request)
        except ServiceError as exc:
            return _refusal(exc)
        except StoreError as exc:  # Redis down, a disk gone: retryable, said so
            return _refusal(ServiceError("STORE_UNAVAILABLE", str(exc), 503))
        return _json(result, 200)

    return endpoint


def _refusal(refusal: ServiceError) -> Response:
    """A refusal as JSON; a 503 (``STORE_UNAVAILABLE``, ``BUSY``: retry later) says when,
    whether the store failed in the route or in the committer's batch."""
    response = _json(refusal.to_json(), refusal.status)
    if refusal.status == 503:
        response.headers["retry-after"] = "1"
    return response


def _json(document: Any, status: int) -> Response:
    return Response(
        msgspec.json.encode(document), status_code=status, media_type="application/json"
    )


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:] if header.lower().startswith("bearer ") else None


def _reader(state: ServerState, request: Request) -> AgentId | None:
    """The agent behind the request's token (``None`` for the operator); 401 otherwise.
    A read (GET) may also come from the dashboard, with the operator's session cookie."""
    token = _bearer(request)
    if state.sessions.is_admin(token):
        return None
    if (
        token is None
        and request.method == "GET"
        and state.sessions.is_operator_session(request.cookies.get(SESSION_COOKIE), state.clock())
    ):
        return None
    agent = state.sessions.agent_of(token, state.clock())
    if agent is None:
        raise ServiceError("UNAUTHENTICATED", "a valid bearer token is required", 401)
    return agent


def _admin(state: ServerState, request: Request) -> None:
    if not state.sessions.is_admin(_bearer(request)):
        raise ServiceError("UNAUTHENTICATED", "this needs the operator's admin token", 401)


def _dashboard_socket(state: ServerState, websocket: WebSocket) -> Timestamp | None:
    """The dashboard's WebSocket: the operator's session cookie, from a page of this very
    server (a browser sends the cookie to any page's WebSocket: the origin must match).
    When the session expires, or ``None`` if this is no such socket."""
    host = websocket.headers.get("host", "")
    origin = websocket.headers.get("origin", "")
    if origin not in (f"http://{host}", f"https://{host}"):
        return None
    session = websocket.cookies.get(SESSION_COOKIE)
    return state.sessions.operator_session_expiry(session, state.clock())


# -- routes -------------------------------------------------------------------------------


async def _health(request: Request) -> Response:
    return _json({"status": "ok", "version": __version__}, 200)


async def _openapi(request: Request) -> Response:
    return _json(OPENAPI, 200)


class _ChallengeRequest(msgspec.Struct, forbid_unknown_fields=True):
    agent: str


class _TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    agent: str
    kid: str
    challenge: str
    signature: str


async def _challenge(state: ServerState, request: Request) -> dict[str, Any]:
    asked = await json_body(request, _ChallengeRequest)
    try:
        return {"challenge": state.sessions.challenge(asked.agent, state.clock())}
    except AuthError as exc:
        raise ServiceError(exc.code, exc.detail, 503) from None


async def _token(state: ServerState, request: Request) -> dict[str, Any]:
    answer = await json_body(request, _TokenRequest)
    try:
        token = await run_in_threadpool(  # (over Redis a challenge is spent there)
            state.sessions.token,
            answer.agent,
            answer.kid,
            answer.challenge,
            answer.signature,
            state.clock(),
        )
    except AuthError as exc:
        # an answer that is not even base64url is a malformed request, as everywhere else
        raise ServiceError(exc.code, exc.detail, 400 if exc.code == "MALFORMED" else 401) from None
    # (how long it opens reads and the WebSocket: the SDK renews it before then)
    return {"token": token, "agent": answer.agent, "expires_in": state.sessions.token_seconds}


async def _messages(state: ServerState, request: Request) -> dict[str, Any]:
    data = await read_body(request)
    return await state.committer.submit(data, state.clock())


async def _tasks(state: ServerState, request: Request) -> dict[str, Any]:
    _reader(state, request)
    wanted = request.query_params.getlist("state")
    try:
        states = [TaskState(name) for name in wanted] or None
    except ValueError:
        raise ServiceError("MALFORMED", f"unknown state among {wanted}", 400) from None
    after = request.query_params.get("after")
    if after is not None and len(after) > ops.MAX_TASK_ID:  # no task's id
        raise ServiceError("MALFORMED", f"after is a task id (at most {ops.MAX_TASK_ID})", 400)
    limit = min(_int_param(request, "limit", TASK_PAGE, least=1), MAX_TASK_PAGE)
    # A page, not the board: the whole of a large board, read under the store's lock,
    # held every claim up for as long as the read took, and any agent may ask.
    page = await run_in_threadpool(state.service.store.task_page, states, after, limit)
    return {"tasks": msgspec.to_builtins(page.tasks), "next": page.next}


async def _task(state: ServerState, request: Request) -> dict[str, Any]:
    _reader(state, request)
    task = await run_in_threadpool(state.service.store.get, request.path_params["task_id"])
    if task is None:
        raise ServiceError("NOT_FOUND", f"no task {request.path_params['task_id']}", 404)
    return {"task": msgspec.to_builtins(task)}


async def _keys(state: ServerState, request: Request) -> dict[str, Any]:
    """Every enrolled key's public record (keys, roles, terms, revocations), in the
    keyring file format: what mesh peers verify each other's messages with."""
    _reader(state, request)
    return await run_in_threadpool(state.service.keyring_document)


async def _mesh(state: ServerState, request: Request) -> dict[str, Any]:
    """The mesh peers' latest reports: links, their quality, reconnects under way."""
    _reader(state, request)
    return state.mesh.snapshot()


async def _agents(state: ServerState, request: Request) -> dict[str, Any]:
    _reader(state, request)
    coordinator = state.service.coordinator

    def read() -> tuple[list[AgentRecord], dict[AgentId, Timestamp]]:
        agents = state.service.store.agents()
        return agents, coordinator.seen_times([agent.id for agent in agents])

    agents, seen = await run_in_threadpool(read)
    return {
        "agents": [
            {
                **msgspec.to_builtins(agent),
                "health": str(coordinator.health_at(seen.get(agent.id))),
                "seen_at": seen.get(agent.id),
            }
            for agent in agents
        ],
        # what the health colours mean, and the server's time: a dashboard recolours
        # agents as they fall silent without asking again
        "healthy_within": coordinator.config.healthy_within,
        "alive_within": coordinator.config.alive_within,
        "now": state.clock(),
    }


async def _events(state: ServerState, request: Request) -> dict[str, Any]:
    _reader(state, request)
    after = _int_param(request, "after", 0)
    limit = min(_int_param(request, "limit", 500, least=1), 5000)
    stored = await run_in_threadpool(state.service.store.events_since, after, limit)
    return {"events": [{"seq": s.seq, **msgspec.to_builtins(s.event)} for s in stored]}


async def _inbox(state: ServerState, request: Request) -> dict[str, Any]:
    agent = _reader(state, request)
    if agent is None:
        raise ServiceError("UNAUTHENTICATED", "an inbox belongs to an agent: use its token", 401)
    after = _int_param(request, "after", 0)
    entries = await run_in_threadpool(state.service.store.pending, agent, after, 100)
    return {"messages": [{"position": e.position, "message": json.loads(e.body)} for e in entries]}


#: An acknowledgment is a change an agent makes: a signed message, not a bearer request.
_SIGNED_ACK: Final = (
    "an acknowledgment is a signed request to if://service/inbox,"
    ' content {"op": "ack", "position": N} (POST /v1/messages or a send frame)'
)


async def _ack(state: ServerState, request: Request) -> dict[str, Any]:
    """The old unsigned acknowledgment, answered with where it went."""
    raise ServiceError("SIGNED_ACK", _SIGNED_ACK, 410)


async def _enroll(state: ServerState, request: Request) -> dict[str, Any]:
    _admin(state, request)
    enrollment = await json_body(request, _Enrollment)
    agents = sorted({record.agent for record in enrollment.keys.keys})
    if len(agents) != 1:
        raise ServiceError("MALFORMED", "enroll one agent at a time", 400)
    manifest = Manifest(
        capabilities=tuple(enrollment.capabilities),
        model=enrollment.model,
        price=enrollment.price,
        swarm=enrollment.swarm,
    )
    state.service.check_manifest(agents[0], manifest)  # before any key is trusted
    now = state.clock()
    record = AgentRecord(
        id=agents[0],
        capabilities=tuple(enrollment.capabilities),
        description=enrollment.description,
        enrolled_at=now,
    )
    await run_in_threadpool(enroll_keys, state, record, enrollment.keys.keys, manifest, now)
    return {"agent": msgspec.to_builtins(record)}


def enroll_keys(
    state: ServerState,
    record: AgentRecord,
    keys: Sequence[KeyRecord],
    manifest: Manifest,
    now: Timestamp,
) -> None:
    """Enroll ``record``'s agent with ``keys`` (its records: new, or new states of known
    ones): new keys witnessed first, then trusted.

    Every record is checked first, on a copy of the keys it touches: a refusal halfway
    through the list (a record contradicting a trusted one, or another of the list) left
    the records before it trusted. The agent's record and the key events then commit
    (for the witness) before a new key is written to the keyring file and trusted: the
    other way round, a crash between the two left keys trusted after the restart that
    no event recorded, and the operator's retry recorded none either (its events were
    reckoned against the keys already trusted). A crash after the commit leaves them
    witnessed but not yet trusted, and the retry records them again.

    A known key's further state (deprecated, revoked) takes effect before its event, as
    a recall does: failing closed (a revocation no event records harms nothing; one
    witnessed but lost with its keyring file would trust the key again after a restart).
    Should the commit then fail, the retry records its event all the same (the key's
    state no longer changes then); a restart in between forgets that debt.
    Over a shared store every key goes first: the other servers read the keys when the
    enrollment's event reaches them. The store's commit runs outside the keyring's lock:
    a batch holds the store's lock and may take the keyring's (a key recalled by message).
    """
    agent = record.id
    shared = state.service.store.shared
    with keyring_lock(state.keyring_dir):
        staged = Keyring(
            [*state.keyring.for_agent(agent)]
            + [
                known
                for key in keys
                if (known := state.keyring.get(key.kid)) is not None and known.agent != agent
            ]
        )
        events, further = [], []
        try:
            for key in keys:
                before = staged.get(key.kid)
                after = staged.add(key)
                if before is None or before.state != after.state:
                    events.append(key_event(before, after, now))
                    if before is not None:
                        further.append(after)
                elif after.kid in state.unwitnessed_keys:  # applied, its commit failed
                    events.append(key_event(before, after, now))
        except KeyringError as exc:  # a record that contradicts a trusted one, or another
            raise ServiceError("KEY_CONFLICT", str(exc), 409) from None
        first = list(keys) if shared else further
        state.unwitnessed_keys.update(key.kid for key in further)
        if first:
            _trust_keys(state, agent, first)
        if shared:
            state.service.share_keys([agent])
    state.service.enroll(record, [*events, enrolled_event(record, now)], manifest)
    state.unwitnessed_keys.difference_update(event.payload["kid"] for event in events)
    if not shared:
        with keyring_lock(state.keyring_dir):
            _trust_keys(state, agent, keys)


def _trust_keys(state: ServerState, agent: AgentId, keys: Sequence[KeyRecord]) -> None:
    """Trust ``keys`` (the keyring keeps each key's furthest state) and write ``agent``'s
    keyring file (the caller holds the keyring's lock)."""
    try:
        for key in keys:
            state.keyring.add(key)
    except KeyringError as exc:  # (checked on a copy: only a change meanwhile gets here)
        raise ServiceError("KEY_CONFLICT", str(exc), 409) from None
    write_keyring_dir(state.keyring, state.keyring_dir, agents=[agent])


def enrolled_event(record: AgentRecord, now: Timestamp) -> BoardEvent:
    """The witness's record of an enrollment (by an operator: the event names no actor)."""
    return BoardEvent(
        component="keys",
        kind="agent.enrolled",
        actor=None,  # the operator (the admin token names no one)
        at=now,
        payload={"agent": record.id, "capabilities": list(record.capabilities)},
    )


def key_event(before: KeyRecord | None, after: KeyRecord, now: Timestamp) -> BoardEvent:
    """What an enrollment changed about one key, for the witness: a new key (``key.added``,
    or ``key.rotated`` when it replaces an earlier version) or a new state
    (``key.deprecated``, ``key.revoked``)."""
    if before is None:
        kind = "key.added" if after.version == 1 else "key.rotated"
    else:
        kind = f"key.{after.state}"
    return BoardEvent(
        component="keys",
        kind=kind,
        actor=None,
        at=now,
        payload={
            "agent": after.agent,
            "kid": after.kid,
            "version": after.version,
            "role": str(after.role),
            "state": str(after.state),
        },
    )


# -- the governor ---------------------------------------------------------------------------


def _governor(state: ServerState) -> GovernorDriver:
    if state.service.governor is None:
        raise ServiceError("NOT_FOUND", "this fabric runs no governor", 404)
    return state.service.governor


async def _governor_report(state: ServerState, request: Request) -> dict[str, Any]:
    """Budgets, spend, breakers and reputation of every agent and swarm."""
    _reader(state, request)
    return await run_in_threadpool(_governor(state).report)


async def _governor_reload(state: ServerState, request: Request) -> dict[str, Any]:
    """Read the policy file again (as SIGHUP does); a bad one changes nothing."""
    _admin(state, request)
    driver = _governor(state)
    try:
        policy = await run_in_threadpool(driver.reload)
    except PolicyError as exc:
        raise ServiceError("INVALID_POLICY", str(exc), 422) from None
    return {"policy": policy.source, "profile": policy.profile_name}


# -- the witness ----------------------------------------------------------------------------

MAX_WITNESS_ENTRIES: Final = 1000
#: Entries one filtered request reads at most (some tens of milliseconds of decoding).
MAX_WITNESS_SCAN: Final = 20_000
#: Entries one /v1/witness/spend request reads at most (well under a second).
MAX_WITNESS_SPEND_SCAN: Final = 200_000


def _witness(state: ServerState, request: Request) -> Witness:
    _reader(state, request)
    if state.witness is None:
        raise ServiceError("NOT_FOUND", "this fabric keeps no witness log", 404)
    return state.witness


def _signed(witness: Witness, size: int | None) -> tuple[int, str]:
    """The checkpoint for ``size`` (default: the latest), or 404; the log caught up with
    its writer (a feeder process may append while the server reads)."""
    witness.log.refresh()
    if size is None:
        latest = witness.log.checkpoints(1)
        if not latest:
            raise ServiceError("NOT_FOUND", "no checkpoint has been signed yet", 404)
        return latest[0]
    note = witness.log.checkpoint_at(size)
    if note is None:
        raise ServiceError("NOT_FOUND", f"no checkpoint was signed at size {size}", 404)
    return size, note


async def _witness_checkpoint(state: ServerState, request: Request) -> dict[str, Any]:
    witness = _witness(state, request)
    size, note = await run_in_threadpool(_signed, witness, None)
    return {"size": size, "checkpoint": note, "key": witness.key}


async def _witness_entries(state: ServerState, request: Request) -> dict[str, Any]:
    """Entries from ``start`` (before ``end``, if given) that match the filters
    (``component``, ``event`` pattern, ``trace_id``, ``task_id``, ``actor``, ``since`` and
    ``until`` as RFC 3339 UTC, ``cost=true``): at most ``limit`` (1,000), scanning at most
    ``MAX_WITNESS_SCAN`` entries; ``next`` says where to continue, ``size`` the log's size."""
    witness = _witness(state, request)
    start = _int_param(request, "start", 0)
    where = _entry_filter(request)
    # the limit as asked, before it is clamped to the range (an empty range is no error)
    _int_param(request, "limit", 1, least=1)
    if "end" in request.query_params:  # a range: [start, end), at most 1,000 entries
        span = min(max(0, _int_param(request, "end", 0) - start), MAX_WITNESS_ENTRIES)
        limit = min(_int_param(request, "limit", span), span)
        budget = span if where.everything else min(span, MAX_WITNESS_SCAN)
    else:
        limit = min(_int_param(request, "limit", 100), MAX_WITNESS_ENTRIES)
        budget = limit if where.everything else MAX_WITNESS_SCAN

    def find() -> Page:
        witness.log.refresh()  # a feeder process may have appended since
        return scan(witness.log, where, start, limit=limit, budget=budget)

    page = await run_in_threadpool(find)
    return page.to_json()


async def _witness_spend(state: ServerState, request: Request) -> dict[str, Any]:
    """Spend over time from the witness's costed entries (``points``: time and USD spent
    so far, at most 500 of them), for the dashboard's chart. The server reads each entry
    once: a request reads what was appended since the last one, at most
    ``MAX_WITNESS_SPEND_SCAN`` entries (``next`` < ``size``: ask again for the rest)."""
    witness = _witness(state, request)
    costed = EntryFilter(with_cost=True)

    def read() -> dict[str, Any]:
        with state.spend_lock:  # one reader feeds the series at a time
            series = state.spend
            witness.log.refresh()
            page = scan(
                witness.log, costed, series.next_index,
                limit=MAX_WITNESS_SPEND_SCAN, budget=MAX_WITNESS_SPEND_SCAN,
            )  # fmt: skip
            # read the whole page before the series takes any of it: an error half-way
            # left next_index behind, so every request failed there again and added the
            # entries before it once more
            spent: list[tuple[float, float]] = []
            for found in page.found:
                try:
                    entry = decode_entry(found.data)
                    if entry.cost is not None:
                        spent.append((parse_timestamp(entry.at), entry.cost.usd))
                except (msgspec.DecodeError, ValueError):  # damaged: ifab witness verify
                    _log.warning("witness entry %d left out of spend: damaged", found.index)
            for at, usd in spent:
                series.add(at, usd)
            series.next_index = page.next
            return {
                "points": [list(point) for point in series.points()],
                "total_usd": series.total,
                "next": page.next,
                "size": page.size,
            }

    return await run_in_threadpool(read)


def _entry_filter(request: Request) -> EntryFilter:
    try:
        return EntryFilter.from_params(request.query_params)
    except ValueError as exc:
        raise ServiceError("MALFORMED", str(exc), 400) from None


async def _witness_proof(state: ServerState, request: Request) -> dict[str, Any]:
    """A proof bundle (:mod:`infrafabric.witness.bundle`) for an entry, by ``index`` or
    by its leaf ``hash`` (hex), against the latest checkpoint or the one at ``size``."""
    witness = _witness(state, request)
    wanted = request.query_params.get("size")
    size_asked = None if wanted is None else _int_param(request, "size", 0)

    if "hash" not in request.query_params and "index" not in request.query_params:
        raise ServiceError("MALFORMED", "give the entry's index or its leaf hash", 400)

    def bundle() -> dict[str, Any]:
        size, note = _signed(witness, size_asked)
        _holds(witness, size)
        if "hash" in request.query_params:
            try:
                leaf = bytes.fromhex(request.query_params["hash"])
            except ValueError:
                raise ServiceError("MALFORMED", "hash is a hex leaf hash", 400) from None
            index = witness.log.index_of(leaf)
            if index is None or index >= size:
                raise ServiceError("NOT_FOUND", "no such entry in the signed tree", 404)
        else:
            index = _int_param(request, "index", 0)
            if not 0 <= index < size:
                raise ServiceError("NOT_FOUND", f"no entry {index} in the tree of {size}", 404)
        found = witness.log.entries(index, index + 1)
        if len(found) != 1:
            raise LogDamaged(f"entry {index} is missing from the witness log")
        return make_bundle(index, found[0][2], size, witness.log.inclusion_proof(index, size), note)

    return await _undamaged(run_in_threadpool(bundle))


async def _witness_consistency(state: ServerState, request: Request) -> dict[str, Any]:
    witness = _witness(state, request)
    if "old" not in request.query_params:  # (the SDK always sends it)
        raise ServiceError("MALFORMED", "give old, the tree size to prove consistency from", 400)
    old = _int_param(request, "old", 0)

    def proof() -> dict[str, Any]:
        new, new_note = _signed(
            witness, None if "new" not in request.query_params else _int_param(request, "new", 0)
        )
        _holds(witness, new)
        if old > new:
            raise ServiceError("MALFORMED", f"old size {old} is above new size {new}", 400)
        return {
            "old": old,
            "new": new,
            "proof": [
                base64.b64encode(node).decode() for node in witness.log.consistency_proof(old, new)
            ],
            "old_checkpoint": witness.log.checkpoint_at(old),
            "new_checkpoint": new_note,
        }

    return await _undamaged(run_in_threadpool(proof))


def _holds(witness: Witness, size: int) -> None:
    """A log that holds fewer entries than a checkpoint it kept signs was truncated. (Read
    again first: the feeder may have appended and signed since the caller's refresh.)"""
    if size > witness.log.size and size > witness.log.refresh():
        raise LogDamaged(f"a checkpoint signs {size} entries, the log holds {witness.log.size}")


async def _undamaged(answer: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """``answer``, or 500 ``WITNESS_DAMAGED`` (no Retry-After) if the log's own data is
    inconsistent: asking again cannot help, unlike a store that is unavailable (503)."""
    try:
        return await answer
    except LogDamaged as exc:
        raise ServiceError(
            "WITNESS_DAMAGED", f"{exc} (`ifab witness verify` names the damage)", 500
        ) from None


def _int_param(request: Request, name: str, default: int, *, least: int = 0) -> int:
    """Query parameter ``name``, a decimal integer of at least ``least`` (a ``limit`` of 0
    would be a pager that never advances); ``default`` when it is not given."""
    text = request.query_params.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ServiceError(
            "MALFORMED", f"{name} must be a non-negative integer (ASCII, < 10^18)", 400
        )
    if int(text) < least:
        raise ServiceError("MALFORMED", f"{name} is at least {least}", 400)
    return int(text)


# -- the WebSocket -------------------------------------------------------------------------

#: The close code of a connection whose token expired (4000-4999: the application's own;
#: 4401 as HTTP's 401). The SDK renews its sockets' tokens before they expire.
TOKEN_EXPIRED_CLOSE: Final = 4401
#: How long the replies a connection had queued when its token expired may take to go.
EXPIRED_DRAIN_SECONDS: Final = 5.0
#: Largest frame read, in characters: a message and the frame around it.
MAX_FRAME: Final = MAX_BODY + 1024
#: Largest frame the WebSocket layer takes in, in bytes (its ``ws_max_size``): any frame
#: beyond it has more than MAX_FRAME characters (UTF-8 spends at most four bytes on one),
#: so it is cut off while arriving, closing with 1009, instead of being read whole (up
#: to uvicorn's default of 16 MiB per connection) only to be refused. Frames between
#: MAX_FRAME and this still get their 413 frame, naming the request they carried.
MAX_FRAME_BYTES: Final = 4 * MAX_FRAME


async def _websocket(state: ServerState, websocket: WebSocket) -> None:
    token = websocket.query_params.get("token")
    # Who is connecting, and until when: a socket lives no longer than the token or the
    # dashboard session that opened it (or renewed it: a "renew" frame), or it would
    # outlive a key revoked since, whatever docs/server.md promises of the token.
    agent, until = None, None
    if not state.sessions.is_admin(token):  # (the admin token does not expire)
        opened: tuple[AgentId | None, Timestamp] | None = None
        if token is not None:
            opened = state.sessions.token_expiry(token, state.clock())
        elif (session_until := _dashboard_socket(state, websocket)) is not None:
            opened = (None, session_until)
        if opened is None:
            await _refuse_handshake(websocket)
            return
        agent, until = opened
    hub = state.hub
    assert hub is not None  # set by the lifespan before any request
    await websocket.accept()
    # `inbox=false`: a connection that only carries requests (the SDK's), so direct
    # messages are not pushed to it as well as to the agent's stream.
    inbox = agent is not None and websocket.query_params.get("inbox", "true") != "false"
    connection = Connection(agent, hub.queue_limit, inbox=inbox, held=[] if inbox else None)
    connection.until = until
    hub.connections.add(connection)
    receiver = asyncio.current_task()
    assert receiver is not None
    connection.on_overflow = receiver.cancel  # stop reading from a client that will not read
    sender: asyncio.Task[None] | None = None
    expiry = None if until is None else asyncio.create_task(_expire(state, connection, receiver))
    try:
        # The inbox waiting on connect goes out first, each frame as the client takes it,
        # outside the queue: it may be as long as the queue itself (an agent with a full
        # inbox was closed as too slow by the answer to its own subscribe frame).
        backlog: list[str] = []
        if inbox and agent is not None:
            sent = connection.replayed
            for entry in await run_in_threadpool(state.service.store.pending, agent, 0, 1000):
                backlog.append(
                    json.dumps(
                        {
                            "type": "message",
                            "position": entry.position,
                            "message": json.loads(entry.body),
                        }
                    )
                )
                sent.add(entry.position)
            # no await since the read: nothing can slip between these and the live ones
            backlog += [frame for position, frame in connection.held or () if position not in sent]
            connection.held = None
        sender = asyncio.create_task(_send_frames(websocket, connection, backlog))
        while not connection.expired:
            text = await _receive_text(websocket)
            connection.busy = True  # (its token's expiry lets this frame finish)
            if text is None:
                reply: dict[str, Any] = {
                    "type": "error",
                    "status": 400,
                    "error": {"code": "MALFORMED", "detail": "frames are JSON text, not binary"},
                }
            else:
                reply = await _frame_reply(state, hub, connection, text)
            connection.offer(_FRAME_ENCODER.encode(reply).decode())
            connection.busy = False
    except WebSocketDisconnect:
        pass
    except asyncio.CancelledError:
        if not (connection.overflowed or connection.expired):
            raise  # the server is stopping: not ours to swallow
    finally:
        hub.connections.discard(connection)
        if connection.expired and sender is not None and not sender.done():
            # the replies already queued (to frames carried out) go out before the close
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connection.queue.join(), EXPIRED_DRAIN_SECONDS)
        tasks = [task for task in (sender, expiry) if task is not None]
        for task in tasks:
            task.cancel()
        # (each awaited whatever it raised: a sender that failed must not leave the
        # expiry task waiting out the token's life, holding the connection)
        await asyncio.gather(*tasks, return_exceptions=True)
        closing = None
        if connection.overflowed:
            closing = (1013, "too slow: frames piled up")
        elif connection.expired:
            closing = (TOKEN_EXPIRED_CLOSE, "the token expired: renew it before it does")
        if closing is not None:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # it may be gone already
                await websocket.close(code=closing[0], reason=closing[1])


async def _expire(state: ServerState, connection: Connection, receiver: asyncio.Task[Any]) -> None:
    """Stop ``connection`` once its token (or session) has expired, unless renewed.
    (Woken at least every minute: the fabric's clock may be a test's, set by hand.)"""
    while connection.until is not None and (left := connection.until - state.clock()) >= 0:
        await asyncio.sleep(min(left + 0.01, 60.0))
    connection.expired = True
    if not connection.busy:  # waiting for a frame; one being carried out finishes first
        receiver.cancel()


async def _refuse_handshake(websocket: WebSocket) -> None:
    """401 with the reason code, as the REST routes answer. (A close before ``accept``
    reached the client as a bare 403 with no reason. The SDK signs in again on a 401,
    for its request socket and its streams alike.)"""
    refusal = ServiceError("UNAUTHENTICATED", "a valid token is required", 401)
    # (the ASGI denial-response extension: uvicorn has it since 0.28; pyproject asks 0.30)
    await websocket.send_denial_response(JSONResponse(refusal.to_json(), status_code=401))


async def _receive_text(websocket: WebSocket) -> str | None:
    """The next text frame, ``None`` for a binary one (answered as malformed, where
    ``receive_text`` failed with a KeyError and dropped the connection unexplained)."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    text = message.get("text")
    return text if isinstance(text, str) else None


async def _send_frames(websocket: WebSocket, connection: Connection, backlog: list[str]) -> None:
    for frame in backlog:
        await websocket.send_text(frame)
    backlog.clear()
    while True:
        frame = await connection.queue.get()
        await websocket.send_text(frame)
        connection.queue.task_done()


class _Frame(msgspec.Struct):
    """A client frame; ``message`` stays the exact bytes the client sent (no re-encoding)."""

    type: str
    id: Any = None
    message: msgspec.Raw = msgspec.Raw(b"")  # empty: none given
    topics: list[str] = []
    replay: bool = False
    token: str | None = None  # a renew frame's


_FRAME_ENCODER: Final = msgspec.json.Encoder()


async def _frame_reply(
    state: ServerState, hub: Hub, connection: Connection, text: str
) -> dict[str, Any]:
    if len(text) > MAX_FRAME:
        return {
            "type": "error",
            "id": _leading_send_id(text),
            "status": 413,
            "error": {
                "code": "TOO_LARGE",
                "detail": f"frame too large: over {MAX_FRAME} characters",
            },
        }
    try:
        frame = decode(text, _Frame, "frame")
    except ServiceError as exc:
        return {"type": "error", "id": _frame_id(text), "status": exc.status, **exc.to_json()}
    kind, request_id = frame.type, frame.id
    try:
        if kind == "subscribe":
            # (refused whole: before, a frame's patterns past the 64th were dropped
            # without a word, and any number of frames added 64 more each)
            problem = subscription_problem(connection.topics, frame.topics)
            if problem is not None:
                raise ServiceError("MALFORMED", problem, 400)
            connection.topics.update(frame.topics)
            if frame.replay:
                hub.replay(connection)
            return {"type": "subscribed", "id": request_id, "topics": sorted(connection.topics)}
        if kind == "unsubscribe":
            connection.topics.difference_update(frame.topics)
            return {"type": "subscribed", "id": request_id, "topics": sorted(connection.topics)}
        if kind == "ack":
            raise ServiceError("SIGNED_ACK", _SIGNED_ACK, 410)
        if kind == "renew":
            return _renew(state, connection, frame)
        if kind == "send":
            if not frame.message:
                raise ServiceError("MALFORMED", "a send frame carries a message", 400)
            result = await state.committer.submit(
                bytes(frame.message), state.clock(), key=connection
            )
            return {"type": "reply", "id": request_id, "result": result}
    except ServiceError as exc:
        return {"type": "error", "id": request_id, "status": exc.status, **exc.to_json()}
    return {
        "type": "error",
        "id": request_id,
        "status": 400,
        "error": {"code": "MALFORMED", "detail": f"unknown frame {kind!r}"},
    }


def _renew(state: ServerState, connection: Connection, frame: _Frame) -> dict[str, Any]:
    """A fresh token of the connection's own agent extends its life to that token's."""
    if connection.agent is None:
        raise ServiceError("MALFORMED", "only an agent's connection is renewed (by a token)", 400)
    opened = state.sessions.token_expiry(frame.token, state.clock())
    if opened is None:
        raise ServiceError("UNAUTHENTICATED", "renew with a valid token", 401)
    if opened[0] != connection.agent:
        raise ServiceError(
            "NOT_OWNER", f"a token of {opened[0]} renews no connection of {connection.agent}", 403
        )
    connection.until = max(connection.until or 0.0, opened[1])
    return {"type": "renewed", "id": frame.id, "expires_in": connection.until - state.clock()}


#: How a send frame begins (the SDK writes it so): its id is found without reading on.
_LEADING_SEND_ID: Final = re.compile(r'\s*\{\s*"type"\s*:\s*"send"\s*,\s*"id"\s*:\s*(\d{1,15})\s*,')


def _leading_send_id(text: str) -> int | None:
    """The ``id`` of a frame too large to decode, when it begins ``{"type": "send", "id":
    N,``: the SDK's call then gets its 413 at once, where it waited out its timeout."""
    found = _LEADING_SEND_ID.match(text, 0, 128)
    return int(found.group(1)) if found else None


def _frame_id(text: str) -> Any:
    """The ``id`` of a frame that did not decode, if it has one, so the error reaches the
    request that caused it."""
    document = loads(text)
    return document.get("id") if isinstance(document, dict) else None

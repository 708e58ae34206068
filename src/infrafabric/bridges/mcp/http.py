"""``/mcp`` on ``ifab serve``: the agent tools over MCP's Streamable HTTP transport.

Each request carries ``Authorization: Bearer ifmcp1...`` (see :mod:`.token`): the key an
agent lent for a while. The server checks it against its keyring like any key (unknown,
recalled or past its term: 401), then acts for that agent through an SDK client talking
to this same application in-process, so every change is still a message signed (with
the lent key) and checked by the verification pipeline, and the witness records it.

Stateless transport with JSON replies: any server behind a load balancer can answer any
request, as for the REST routes. ``mcp`` is imported on the first request only (it costs
most of a second), so servers and embedded fabrics that never see one do not pay for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import json
from typing import TYPE_CHECKING, Final

import httpx
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infrafabric.bridges.mcp.token import TokenError, parse_token
from infrafabric.bridges.mcp.tools import build_server
from infrafabric.client import Client
from infrafabric.protocol.identity import SigningIdentity
from infrafabric.protocol.keyring import KeyRole
from infrafabric.server.bodies import read_body
from infrafabric.service import ServiceError

if TYPE_CHECKING:
    from infrafabric.server.app import ServerState

__all__ = ["McpEndpoint"]

#: Clients kept open for recent callers (each holds a session token; the oldest goes).
MAX_CLIENTS: Final = 256
#: Largest request body read: a tool call carrying the largest message (64 KiB), its
#: content escaped once more inside the JSON-RPC request.
MAX_BODY: Final = 256 * 1024
#: The client of the agent the current request acts for.
_CALLER: Final = contextvars.ContextVar[Client | None]("infrafabric_mcp_caller", default=None)
_IN_PROCESS_URL: Final = "http://in-process.fabric"


class _Unauthenticated(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class McpEndpoint:
    """The ASGI app of ``/mcp``; :meth:`start` before the first request, :meth:`close` after."""

    def __init__(self, state: ServerState, fabric_app: ASGIApp) -> None:
        self._state = state
        self._fabric_app = fabric_app
        self._server = build_server(self._caller)
        # Bearer tokens, not cookies: a page a browser visits cannot send one, so the
        # SDK's Host/Origin checks against DNS rebinding add nothing here; servers behind
        # a proxy answer to other host names.
        self._server.streamable_http_app(
            stateless_http=True,
            json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self._manager = self._server.session_manager
        self._clients: collections.OrderedDict[str, tuple[Client, contextlib.AsyncExitStack]] = (
            collections.OrderedDict()
        )
        self._connecting = asyncio.Lock()
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run the SDK's session manager in a task of its own (its task group must be
        entered and left by one task) until :meth:`close`."""
        self._runner = asyncio.create_task(self._run(), name="ifab-mcp")
        await self._started.wait()

    async def close(self) -> None:
        self._stop.set()
        if self._runner is not None:
            await self._runner
        while self._clients:
            _, (_, stack) = self._clients.popitem()
            await stack.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            identity = self._identity(scope)
            client = await self._client(identity)
        except _Unauthenticated as exc:
            await _refuse(send, exc.code, exc.detail)
            return
        try:
            # read here, with a bound: the SDK reads a body whole, however large
            body = await read_body(Request(scope, receive), MAX_BODY)
        except ServiceError as exc:
            await _refuse(send, exc.code, exc.detail, status=exc.status)
            return
        except ClientDisconnect:  # gone before its body came: nobody to answer
            return
        token = _CALLER.set(client)
        try:
            await self._manager.handle_request(scope, _replaying(body, receive), send)
        finally:
            _CALLER.reset(token)

    async def _run(self) -> None:
        async with self._manager.run():
            self._started.set()
            await self._stop.wait()

    async def _caller(self) -> Client:
        client = _CALLER.get()
        if client is None:  # (only if the SDK ran a tool outside the request's context)
            raise ToolError("UNAUTHENTICATED: no agent for this call")
        return client

    def _identity(self, scope: Scope) -> SigningIdentity:
        """The lent key the request's bearer token holds, if the keyring still lends it."""
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, text = header.partition(" ")
        if scheme.lower() != "bearer" or not text:
            raise _Unauthenticated(
                "UNAUTHENTICATED", "send Authorization: Bearer <token from `ifab mcp token`>"
            )
        try:
            agent, seed = parse_token(text)
        except TokenError as exc:
            raise _Unauthenticated(exc.code, str(exc)) from None
        identity = SigningIdentity.from_seed(agent, seed)
        service = self._state.service
        now = self._state.clock()
        resolution = self._state.keyring.resolve(agent, identity.kid, now)
        if resolution.reason is not None and service.reload_keys_if_due(now):
            resolution = self._state.keyring.resolve(agent, identity.kid, now)  # lent elsewhere?
        if resolution.reason is not None or resolution.record is None:
            raise _Unauthenticated(str(resolution.reason), resolution.detail)
        if resolution.record.role is not KeyRole.DELEGATE:
            raise _Unauthenticated(
                "NOT_DELEGATED",
                "this is an agent's own key: never send it; lend one with `ifab mcp token`",
            )
        return SigningIdentity.from_seed(agent, seed, version=resolution.record.version)

    async def _client(self, identity: SigningIdentity) -> Client:
        """An SDK client for ``identity`` through this application, kept for its next call."""
        async with self._connecting:
            kept = self._clients.get(identity.kid)
            if kept is not None:
                self._clients.move_to_end(identity.kid)
                return kept[0]
            stack = contextlib.AsyncExitStack()
            try:
                client = await stack.enter_async_context(
                    Client.connect(
                        _IN_PROCESS_URL,
                        identity,
                        transport=httpx.ASGITransport(app=self._fabric_app),
                        local=self._state.service,
                    )
                )
            except Exception as exc:
                await stack.aclose()
                raise _Unauthenticated(
                    "UNAUTHENTICATED", f"the fabric refused the key: {exc}"
                ) from exc
            self._clients[identity.kid] = (client, stack)
            if len(self._clients) > MAX_CLIENTS:
                _, (_, oldest) = self._clients.popitem(last=False)
                await oldest.aclose()
            return client


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (already read) once, then waits as ``receive``
    does (for the client's disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _refuse(send: Send, code: str, detail: str, *, status: int = 401) -> None:
    body = json.dumps({"error": {"code": code, "detail": detail}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="infrafabric"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

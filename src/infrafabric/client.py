"""The async SDK: an agent connected to a fabric server.

::

    async with Client.connect("http://127.0.0.1:8765", identity) as agent:
        task = await agent.claim_next()
        await agent.progress(task["id"], 50, "half way")
        await agent.complete(task["id"], {"ok": True})

Every call that changes something is a signed IFMessage (the identity never leaves the
process; a client of an embedded fabric hands its board operations over unsigned, see
:meth:`infrafabric.fabric.Fabric.connect`); reads use a 15-minute token from an Ed25519
challenge-response, renewed automatically. Refusals raise :class:`RemoteError` with the server's reason code.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import httpx
import msgspec
import websockets.asyncio.client
import websockets.exceptions

from infrafabric import ops
from infrafabric.errors import PeerError
from infrafabric.protocol.addresses import address_matches, subscription_problem
from infrafabric.protocol.identity import Outbox, SigningIdentity, b64url_decode, b64url_encode
from infrafabric.protocol.keyring import KeyringFile
from infrafabric.protocol.message import (
    IFMessage,
    Performative,
    decode_json,
    encode_json,
    new_conversation_id,
)
from infrafabric.protocol.verify import DEFAULT_MAX_BYTES
from infrafabric.server.auth import TOKEN_SECONDS, auth_input
from infrafabric.service import FabricService, ServiceError
from infrafabric.types import Address

if TYPE_CHECKING:
    from infrafabric.mesh.peer import MeshPeer

__all__ = ["Client", "Frame", "RemoteError", "SyncClient"]

#: Renew the token this long before it expires (at most a quarter of its life).
_TOKEN_MARGIN: Final = 60.0
#: A stream whose token could not be renewed (the server unreachable) tries again after.
_RENEW_RETRY_SECONDS: Final = 5.0


#: How far ahead of this client's clock (in ms) another client of its identity may be
#: for a refused message to be numbered past it: ten minutes.
_MOST_AHEAD_MS: Final = 600_000
#: Attempts of a message refused for its number alone (see :meth:`Client._post`), and how
#: far past the highest accepted a fresh number may land (at random, under this).
_SEQUENCE_ATTEMPTS: Final = 4
_SEQUENCE_SKIP: Final = 32


class RemoteError(PeerError):
    """The server refused a request: ``code`` is its reason code, ``status`` the HTTP status."""

    def __init__(self, code: str, detail: str, status: int, *, highest: int | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status
        #: refused for its sequence number: the sender's highest the server accepted
        self.highest = highest

    @property
    def retryable(self) -> bool:
        return self.status == 503 or self.code == "BUSY"

    @classmethod
    def of(cls, error: Any, status: int) -> RemoteError:
        """The refusal an ``{"code", "detail", "highest"?}`` object (the ``error`` of an
        answer) describes; ``status`` its HTTP status."""
        if not isinstance(error, dict):
            error = {}
        highest = error.get("highest")
        return cls(
            str(error.get("code", "ERROR")),
            str(error.get("detail", "")),
            status,
            highest=highest if isinstance(highest, int) and not isinstance(highest, bool) else None,
        )


@dataclass(frozen=True, slots=True)
class Frame:
    """Something that arrived on the stream: a topic ``event`` or a direct ``message``."""

    kind: str  # "event" or "message"
    topic: str | None
    position: int | None  # inbox position of a direct message: acknowledge it with this
    data: dict[str, Any]

    @property
    def message(self) -> IFMessage | None:
        """The direct or topic message as an envelope (``None`` for a board event)."""
        raw = self.data.get("message")
        return None if raw is None else decode_json(json.dumps(raw))


#: The trace the messages sent in this context belong to (see :meth:`Client.trace`).
_TRACE: Final = contextvars.ContextVar[str | None]("infrafabric_client_trace", default=None)


def _with_usage(operation: dict[str, Any], usage: Mapping[str, Any] | None) -> dict[str, Any]:
    return operation if usage is None else {**operation, "usage": dict(usage)}


#: An embedded fabric's board for one connected agent: an operation (and the trace of the
#: call) in, the reply out, a refusal raised as :class:`~infrafabric.service.ServiceError`.
InProcessBoard = Callable[[dict[str, Any], "str | None"], Awaitable[dict[str, Any]]]


def tasks_query(states: Sequence[str], after: str | None) -> dict[str, Any]:
    """The query of ``GET /v1/tasks`` for the page after ``after`` (the first: ``None``),
    as large as a server gives."""
    query: dict[str, Any] = {"state": list(states), "limit": ops.MAX_TASK_PAGE}
    if after is not None:
        query["after"] = after
    return query


def next_page(after: str | None, page: Mapping[str, Any]) -> str | None:
    """The ``after`` of the page that follows ``page`` of ``GET /v1/tasks`` (read after
    ``after``), or ``None`` at the end (and from a server that answers the board whole,
    with no ``next``). A ``next`` that does not move on would have a reader ask for
    the same page for ever: refused."""
    following = page.get("next")
    if following is None:
        return None
    if not isinstance(following, str) or (after is not None and following <= after):
        raise RemoteError("MALFORMED", f"a next page after {after!r} at {following!r}", 502)
    return following


def _as_decoded(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` as the same plain JSON values an HTTP reply would have decoded to."""
    answer: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(result))
    return answer


class Client:
    """One agent's connection to a fabric. Use :meth:`connect`."""

    def __init__(
        self,
        url: str,
        identity: SigningIdentity,
        http: httpx.AsyncClient,
        last_sequence: int,
        local: FabricService | None = None,
        timeout: float = 30.0,
        submit: Callable[[bytes], Awaitable[dict[str, Any]]] | None = None,
        operate: InProcessBoard | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._local = local  # the in-process service of an embedded fabric, for streams
        # an embedded fabric's committer: signed messages handed over with no HTTP at all
        self._submit = submit
        # and its board: operations handed over as data, not signed (see Fabric.connect)
        self._operate = operate
        self.identity = identity
        self.agent = identity.agent
        self._http = http
        self._outbox = Outbox(identity, last_sequence=last_sequence, follow_clock=True)
        self._token: str | None = None
        self._token_until = 0.0  # when to sign in again (monotonic)
        self._token_expires = 0.0  # when the token expires, at the latest (monotonic)
        self._sockets_expire = True  # with their tokens (what the server's token said)
        self._send_lock = asyncio.Lock()  # sequence numbers leave in the order they are made
        # Over a network, signed messages travel on one WebSocket (a frame each way costs
        # far less than an HTTP exchange); an embedded fabric has no sockets, so HTTP.
        self._use_socket = local is None
        self._socket: _RequestSocket | None = None
        self._timeout = timeout
        self._mesh: MeshPeer | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        url: str,
        identity: SigningIdentity,
        *,
        last_sequence: int | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        local: FabricService | None = None,
        submit: Callable[[bytes], Awaitable[dict[str, Any]]] | None = None,
        operate: InProcessBoard | None = None,
    ) -> AsyncIterator[Client]:
        """Connect ``identity`` to the fabric at ``url`` and authenticate.

        ``last_sequence`` is the highest sequence number this identity has used; by
        default the current time in milliseconds. Each message's number is also at least
        its time in milliseconds, so numbers keep rising across restarts, and several
        clients of one identity at once keep to one order (see
        :class:`~infrafabric.protocol.identity.Outbox`).
        ``transport``, ``local``, ``submit`` and ``operate`` are for an embedded fabric
        (see :meth:`infrafabric.fabric.Fabric.connect`): requests go to the application in
        this process instead of over a socket, signed messages straight to its committer
        (``submit``: the wire bytes in, the reply out, a refusal raised as
        :class:`~infrafabric.service.ServiceError`), and with ``operate`` board
        operations other than help requests as data, unsigned (the operation and the
        trace in, the reply out).
        """
        start = int(time.time() * 1000) if last_sequence is None else last_sequence
        async with httpx.AsyncClient(
            base_url=url, timeout=timeout, transport=transport, verify=_tls_context()
        ) as http:
            client = cls(url, identity, http, start, local, timeout, submit, operate)
            await client._authenticate()
            try:
                yield client
            finally:
                await client._close_socket()

    # -- the board ------------------------------------------------------------------------

    async def create_task(self, title: str, **spec: Any) -> dict[str, Any]:
        """Create one task (``id``, ``priority``, ``dependencies``, ``required_capabilities``,
        ``filler``, ``description``, ``max_attempts``); returns it."""
        return (await self.create_tasks([{"title": title, **spec}]))[0]

    async def create_tasks(self, specs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Create tasks together (they may depend on each other)."""
        tasks: list[dict[str, Any]] = (await self._board({"op": "create", "tasks": list(specs)}))[
            "tasks"
        ]
        return tasks

    async def claim(self, task_id: str) -> dict[str, Any]:
        return await self._task({"op": "claim", "task_id": task_id})

    async def claim_next(self) -> dict[str, Any] | None:
        """The best available task this agent's enrolled capabilities qualify for, or ``None``."""
        task: dict[str, Any] | None = (await self._board({"op": "claim_next"}))["task"]
        return task

    async def heartbeat(self, task_id: str) -> dict[str, Any]:
        return await self._task({"op": "heartbeat", "task_id": task_id})

    async def progress(
        self,
        task_id: str,
        percent: int,
        note: str = "",
        *,
        usage: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Report a milestone (0/25/50/75/100); ``usage`` as for :meth:`complete`."""
        operation = {"op": "progress", "task_id": task_id, "percent": percent, "note": note}
        return await self._task(_with_usage(operation, usage))

    async def complete(
        self,
        task_id: str,
        result: Mapping[str, Any] | None = None,
        *,
        usage: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Complete a task this agent holds. ``usage`` is what the work cost
        (``tokens_in``, ``tokens_out``, ``model``, ``usd``): the witness records it."""
        operation = {"op": "complete", "task_id": task_id, "result": dict(result or {})}
        return await self._task(_with_usage(operation, usage))

    async def fail(
        self,
        task_id: str,
        reason: str,
        *,
        retry: bool = True,
        usage: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        operation = {"op": "fail", "task_id": task_id, "reason": reason, "retry": retry}
        return await self._task(_with_usage(operation, usage))

    @staticmethod
    @contextlib.contextmanager
    def trace(trace_id: str) -> Iterator[None]:
        """Send the messages of this block (in this task and the tasks it starts) with
        ``trace_id``: the fabric stamps the decisions they cause with it, and
        ``ifab witness trace TRACE_ID`` follows them."""
        token = _TRACE.set(trace_id)
        try:
            yield
        finally:
            _TRACE.reset(token)

    async def give_up(self, task_id: str) -> dict[str, Any]:
        return await self._task({"op": "give_up", "task_id": task_id})

    async def block(
        self,
        task_id: str,
        type: str,
        description: str,
        *,
        needed: Iterable[str] = (),
        urgency: str = "medium",
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Block ``task_id``; returns the task and the filler task offered meanwhile, if any."""
        reply = await self._board(
            {
                "op": "block",
                "task_id": task_id,
                "type": type,
                "description": description,
                "needed_capabilities": list(needed),
                "urgency": urgency,
            }
        )
        return reply["task"], reply["filler"]

    async def unblock(self, task_id: str) -> dict[str, Any]:
        return await self._task({"op": "unblock", "task_id": task_id})

    async def request_help(self, task_id: str, needed: Iterable[str]) -> list[str]:
        """Invite qualified agents to help; returns who was invited."""
        invited: list[str] = (
            await self._board({"op": "help", "task_id": task_id, "needed": list(needed)})
        )["invited"]
        return invited

    async def cancel(self, task_id: str, reason: str) -> dict[str, Any]:
        return await self._task({"op": "cancel", "task_id": task_id, "reason": reason})

    # -- messages -------------------------------------------------------------------------

    async def send(
        self,
        to: Address | Sequence[Address],
        performative: Performative,
        content: Mapping[str, Any],
        **fields: Any,
    ) -> dict[str, Any]:
        """Sign and send a message to agents (kept in their inboxes) or topics (live).

        With a mesh peer in use (:meth:`use_mesh`), a message to one agent of the mesh
        goes over the mesh first (``via`` "mesh" in the reply once the receiver has
        acknowledged it), and through the server only when the mesh cannot deliver it."""
        mesh = self._mesh
        if mesh is not None and isinstance(to, str) and mesh.reaches(to):
            sent = await mesh.send(to, performative, content, **fields)
            return {"delivered": [{"receiver": to, "via": sent["via"]}], "id": sent["id"]}
        return await self.send_via_server(to, performative, content, **fields)

    async def send_via_server(
        self,
        to: Address | Sequence[Address],
        performative: Performative,
        content: Mapping[str, Any],
        **fields: Any,
    ) -> dict[str, Any]:
        """:meth:`send`, always through the server."""
        return await self._post(performative=performative, receiver=to, content=content, **fields)

    def use_mesh(self, peer: MeshPeer | None) -> None:
        """Send direct messages over ``peer``'s mesh when it reaches the receiver (see
        :mod:`infrafabric.mesh.peer`); ``None`` goes back to the server alone."""
        self._mesh = peer

    async def request(
        self,
        to: Address,
        content: Mapping[str, Any],
        *,
        performative: Performative = "request",
        timeout: float = 30.0,
    ) -> IFMessage:
        """Send ``content`` to agent ``to`` and wait for its reply (a message from ``to`` in
        the same conversation); the reply is acknowledged. Raises ``TimeoutError`` after
        ``timeout`` seconds without one (the request stays in ``to``'s inbox), and
        :class:`RemoteError` ``DISCONNECTED`` if the stream closes before it."""
        conversation = new_conversation_id()
        async with self.stream() as frames:
            # (through the server: the reply is awaited on the server's stream)
            await self.send_via_server(to, performative, content, conversation_id=conversation)
            try:
                async with asyncio.timeout(timeout):
                    async for frame in frames:
                        message = frame.message if frame.kind == "message" else None
                        if (
                            message is not None
                            and message.conversation_id == conversation
                            and message.sender == to
                        ):
                            await self.ack(frame.position)  # type: ignore[arg-type]
                            return message
            except TimeoutError:  # asyncio's says nothing: say who and how long
                raise TimeoutError(
                    f"no reply from {to} within {timeout} s (the request stays in its inbox)"
                ) from None
        # the stream ended (the server closed it) before the reply or the deadline
        raise RemoteError(
            "DISCONNECTED", f"the stream closed before {to} replied; the request was sent", 503
        )

    async def reply(
        self, to: IFMessage, content: Mapping[str, Any], *, performative: Performative = "inform"
    ) -> dict[str, Any]:
        """Answer message ``to`` in its conversation (what :meth:`request` waits for)."""
        return await self.send_via_server(
            to.sender, performative, content, conversation_id=to.conversation_id
        )

    async def inbox(self, after: int = 0) -> list[tuple[int, IFMessage]]:
        """Unacknowledged direct messages (position, message), oldest first."""
        reply = await self._get("/v1/inbox", params={"after": after})
        return [
            (entry["position"], decode_json(json.dumps(entry["message"])))
            for entry in reply["messages"]
        ]

    async def ack(self, position: int) -> bool:
        """Acknowledge a direct message: it leaves the inbox for good (a signed request to
        ``if://service/inbox``); whether it was still there."""
        reply = await self._post(
            performative="request", receiver=ops.INBOX, content={"op": "ack", "position": position}
        )
        acknowledged: bool = reply["acknowledged"]
        return acknowledged

    @contextlib.asynccontextmanager
    async def stream(
        self, topics: Iterable[str] = (), *, replay: bool = False
    ) -> AsyncIterator[AsyncIterator[Frame]]:
        """Live frames: events of ``topics`` (``*`` one segment, ``**`` any) and every direct
        message (including those waiting in the inbox). Acknowledge messages with :meth:`ack`.
        The block is entered once the server has taken the subscription, so no event of a
        change made inside it is missed. A pattern the server would refuse (see ``docs/server.md``) raises ``MALFORMED`` here,
        in the embedded mode too. ``replay`` is the server's (its last 256 events and
        topic messages); an embedded fabric keeps no such buffer, so there it replays
        nothing: read what came before with :meth:`events`."""
        topics = _checked_topics(topics)
        if self._local is not None:
            async with _local_stream(self._local, self.agent, list(topics)) as local_frames:
                yield local_frames
            return
        opened = await self._open_stream()
        held = self._token  # (the one it was opened with)
        async with opened as socket:
            try:
                await socket.send(
                    json.dumps({"type": "subscribe", "topics": list(topics), "replay": replay})
                )
                # Yield once subscribed, so that an event of a change made right after
                # `async with` is not missed; the inbox's backlog comes first, kept here.
                early: list[Frame] = []
                async with asyncio.timeout(self._timeout):
                    while (frame := _stream_frame(await socket.recv())) != "subscribed":
                        if isinstance(frame, Frame):
                            early.append(frame)
            except websockets.exceptions.ConnectionClosed as exc:
                raise _disconnected(exc) from None
            except TimeoutError:
                raise RemoteError(
                    "TIMEOUT", f"the subscription was not answered within {self._timeout} s", 504
                ) from None

            async def frames() -> AsyncIterator[Frame]:
                for kept in early:
                    yield kept
                try:
                    async for text in socket:
                        arrived = _stream_frame(text)
                        if isinstance(arrived, Frame):
                            yield arrived
                except websockets.exceptions.ConnectionClosedError as exc:  # not a clean close
                    raise _disconnected(exc) from None

            renewer = asyncio.create_task(self._keep_renewed(socket, held))
            try:
                yield frames()
            finally:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer

    async def _keep_renewed(
        self, socket: websockets.asyncio.client.ClientConnection, held: str | None
    ) -> None:
        """Renew a stream's token before it expires: the server closes the stream then.
        A renewal the server refuses comes back as its error frame, which the stream
        raises. A sign-in refused for good (a revoked key) renews nothing: the stream
        closes when its token expires. One that fails for now is tried again."""
        while True:
            await asyncio.sleep(max(0.0, self._token_until - time.monotonic()) + 0.05)
            try:
                fresh = await self._renewed(held)
                if fresh is not None:
                    await socket.send(json.dumps({"type": "renew", "token": fresh}))
                    held = fresh
            except websockets.exceptions.ConnectionClosed:
                return  # the stream says so
            except (RemoteError, httpx.HTTPError) as exc:
                if _refused_for_good(exc):
                    return
                await asyncio.sleep(_RENEW_RETRY_SECONDS)

    async def _open_stream(self) -> websockets.asyncio.client.ClientConnection:
        """The stream's WebSocket. A handshake refused with 401 (a server restarted since
        the token was given forgets it) signs in again once, as the request socket does;
        before, the stream failed as DISCONNECTED until the token expired."""
        await self._ensure_token()
        ws_url = self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        for attempt in (1, 2):
            try:
                return await websockets.asyncio.client.connect(
                    f"{ws_url}/v1/ws?token={self._token}"
                )
            except websockets.exceptions.InvalidStatus as exc:
                if exc.response.status_code != 401 or attempt == 2:
                    raise _refused_handshake(exc) from None
                await self._authenticate()
            except (OSError, websockets.exceptions.WebSocketException) as exc:
                raise RemoteError("DISCONNECTED", f"cannot reach {self.url}: {exc}", 503) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- reads ----------------------------------------------------------------------------

    async def tasks(self, *states: str) -> list[dict[str, Any]]:
        """Every task (or those in ``states``), by id: the server's pages, read in turn."""
        tasks: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = await self._get("/v1/tasks", params=tasks_query(states, after))
            tasks += page["tasks"]
            after = next_page(after, page)
            if after is None:
                return tasks

    async def task(self, task_id: str) -> dict[str, Any]:
        task: dict[str, Any] = (await self._get(f"/v1/tasks/{path_segment(task_id)}"))["task"]
        return task

    async def agents(self) -> list[dict[str, Any]]:
        agents: list[dict[str, Any]] = (await self._get("/v1/agents"))["agents"]
        return agents

    async def events(self, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = (
            await self._get("/v1/events", params={"after": after, "limit": limit})
        )["events"]
        return events

    # -- keys -----------------------------------------------------------------------------

    async def delegate(self, public_key: bytes, seconds: int) -> dict[str, Any]:
        """Lend this agent's authority to ``public_key`` for ``seconds`` (60 s to 30 days):
        messages it signs count as this agent's until then. Returns the key's record."""
        content = {"op": "delegate", "public_key": b64url_encode(public_key), "seconds": seconds}
        key: dict[str, Any] = (
            await self._post(performative="request", receiver=ops.KEYS, content=content)
        )["key"]
        return key

    async def recall(self, kid: str) -> dict[str, Any]:
        """Revoke a key this agent lent (see :meth:`delegate`) before its time is up."""
        content = {"op": "recall", "kid": kid}
        key: dict[str, Any] = (
            await self._post(performative="request", receiver=ops.KEYS, content=content)
        )["key"]
        return key

    # -- the witness ----------------------------------------------------------------------

    async def reset_breaker(self, agent: str) -> dict[str, Any]:
        """Close ``agent``'s circuit breaker (this identity's key must be an operator key)."""
        return await self._post(
            performative="request", receiver=ops.GOVERNOR, content={"op": "reset", "agent": agent}
        )

    async def governor_report(self) -> dict[str, Any]:
        """Budgets, spend, breakers and reputation of every agent and swarm."""
        return await self._get("/v1/governor/report")

    async def keys(self) -> KeyringFile:
        """Every enrolled key's public record, as the fabric serves it: what a mesh peer
        verifies other agents' messages with."""
        document = await self._get("/v1/keys")
        return msgspec.convert(document, KeyringFile)

    async def mesh_report(self, report: Mapping[str, Any]) -> dict[str, Any]:
        """Report this agent's mesh links and link events (see
        :class:`~infrafabric.ops.MeshReport`); the events are witnessed."""
        return await self._post(
            performative="request", receiver=ops.MESH, content={"op": "report", **report}
        )

    async def mesh_status(self) -> dict[str, Any]:
        """Every mesh peer's latest report: links, their quality, reconnects under way."""
        return await self._get("/v1/mesh")

    @property
    def outbox(self) -> Outbox:
        """This client's signing outbox: a mesh peer signs with it too, so this agent's
        sequence numbers never repeat whichever way its messages go."""
        return self._outbox

    async def witness_checkpoint(self) -> dict[str, Any]:
        """The latest signed checkpoint: ``size``, ``checkpoint`` (the note), ``key``."""
        return await self._get("/v1/witness/checkpoint")

    async def witness_spend(self) -> dict[str, Any]:
        """Spend over time from the witness's costed entries: ``points`` (``[time, USD so
        far]``, at most 500), ``total_usd``; ``next`` < ``size``: call again for the rest."""
        return await self._get("/v1/witness/spend")

    async def witness_entries(self, start: int = 0, end: int | None = None) -> list[dict[str, Any]]:
        """Entries ``[start, end)`` of the witness log (at most 1,000 per call; without
        ``end``, the first 1,000 from ``start``: the server's own default is 100)."""
        params = {"start": start, "end": start + 1000 if end is None else end}
        entries: list[dict[str, Any]] = (await self._get("/v1/witness/entries", params=params))[
            "entries"
        ]
        return entries

    async def witness_search(
        self, start: int = 0, *, limit: int = 100, **filters: str
    ) -> dict[str, Any]:
        """Entries from ``start`` matching ``filters`` (``component``, ``event`` pattern,
        ``trace_id``, ``task_id``, ``actor``, ``since``/``until`` RFC 3339, ``cost="true"``):
        ``entries`` (at most ``limit``), ``next`` (where to continue) and ``size``. One
        call reads at most 20,000 entries; continue from ``next`` until it is ``size``."""
        params = {"start": start, "limit": limit, **filters}
        return await self._get("/v1/witness/entries", params=params)

    async def witness_proof(
        self, index: int | None = None, *, leaf: bytes | None = None, size: int | None = None
    ) -> dict[str, Any]:
        """A proof bundle for entry ``index`` (or the entry whose leaf hash is ``leaf``)
        against the latest checkpoint, or the one at ``size``; check it offline with
        :func:`infrafabric.witness.bundle.verify_bundle`."""
        params: dict[str, Any] = {"index": index} if leaf is None else {"hash": leaf.hex()}
        if size is not None:
            params["size"] = size
        return await self._get("/v1/witness/proof", params=params)

    async def witness_consistency(self, old: int, new: int | None = None) -> dict[str, Any]:
        """The consistency proof from tree size ``old`` to ``new`` (default: the latest
        checkpoint), with both checkpoints when they were signed."""
        params = {"old": old} if new is None else {"old": old, "new": new}
        return await self._get("/v1/witness/consistency", params=params)

    # -- internals ------------------------------------------------------------------------

    async def _task(self, operation: dict[str, Any]) -> dict[str, Any]:
        task: dict[str, Any] = (await self._board(operation))["task"]
        return task

    async def _board(self, operation: dict[str, Any]) -> dict[str, Any]:
        # (a help request goes signed: the invited agents receive the asker's message)
        if self._operate is not None and operation["op"] != "help":
            try:
                result = await self._operate(operation, _TRACE.get())
            except ServiceError as exc:  # as the HTTP answer would have said it
                raise RemoteError.of(exc.to_json()["error"], exc.status) from None
            return _as_decoded(result)
        return await self._post(performative="request", receiver=ops.BOARD, content=operation)

    async def _post(self, **fields: Any) -> dict[str, Any]:
        trace = _TRACE.get()
        if trace is not None:
            fields.setdefault("trace_id", trace)
        for _ in range(_SEQUENCE_ATTEMPTS - 1):
            try:
                return await self._post_once(**fields)
            except RemoteError as exc:
                if not self._numbered_past(exc):
                    raise
        return await self._post_once(**fields)

    def _numbered_past(self, refusal: RemoteError) -> bool:
        """Whether ``refusal`` was for the message's number alone, so that it may go again
        (nothing was done): then this client's next number is past the highest the server
        accepted. Another client of this identity numbered past ours, in the same
        millisecond or on a clock ahead. By a few more at random: the other client's next
        number is the highest's next, and drawing it too would be refused again."""
        highest = refusal.highest
        # A highest far ahead of our clock is not a peer's: a server (or whoever wrote the
        # reply) could push this identity's numbers to the top, for good.
        # (from the clock alone: measured from our own numbers, each retry would move
        # the limit on, and forged replies could walk them ahead ten minutes at a time)
        reach = int(time.time() * 1000) + _MOST_AHEAD_MS
        if highest is None or not 0 < highest <= reach:
            return False
        skip = secrets.randbelow(_SEQUENCE_SKIP)
        self._outbox.last_sequence = max(self._outbox.last_sequence, highest + skip)
        return True

    async def _post_once(self, **fields: Any) -> dict[str, Any]:
        if self._submit is not None:
            async with self._send_lock:
                message = self._outbox.message(now=time.time(), **fields)
                try:
                    result = await self._submit(encode_json(message))
                except ServiceError as exc:  # as the HTTP answer would have said it
                    raise RemoteError.of(exc.to_json()["error"], exc.status) from None
            return _as_decoded(result)
        if not self._use_socket:
            async with self._send_lock:
                message = self._outbox.message(now=time.time(), **fields)
                response = await self._http.post(
                    "/v1/messages",
                    content=encode_json(message),
                    headers={"content-type": "application/json"},
                )
            return _reply(response)
        # One deadline for the whole call: waiting for the lock and the send count too, or
        # a server that stops reading would hold this call (and, through the lock, every
        # later one) past the timeout.
        handed = False  # whether the frame may have left (then it may have been carried out)
        socket: _RequestSocket | None = None
        sending = False  # the frame is handed over, and waits for the peer to take it
        try:
            async with asyncio.timeout(self._timeout):
                async with self._send_lock:
                    socket = await self._request_socket()
                    wire = encode_json(self._outbox.message(now=time.time(), **fields))
                    if len(wire) > DEFAULT_MAX_BYTES:
                        # Refused here: a frame far over the server's limit closes the
                        # socket (1009), failing every call in flight on it.
                        raise RemoteError(
                            "TOO_LARGE",
                            f"{len(wire)} bytes > {DEFAULT_MAX_BYTES}: no server takes it",
                            413,
                        )
                    handed = sending = True
                    reply = await socket.send(wire)
                    sending = False
                # Wait outside the lock: the next message may leave before this reply is
                # back (the server answers the frames of one connection in order).
                return await reply
        except TimeoutError:
            if sending and socket is not None:
                # The peer took nothing of this frame for the whole timeout: it is stuck,
                # and more frames would only pile up behind this one. Drop the connection
                # (calls waiting on it fail DISCONNECTED); the next call reconnects.
                socket.abort()
            outcome = (
                "the message may have been carried out"
                if handed
                else "the message was never sent (the connection was busy or unreachable)"
            )
            raise RemoteError(
                "TIMEOUT", f"no reply within {self._timeout} s; {outcome}", 504
            ) from None

    async def _request_socket(self) -> _RequestSocket:
        held = self._socket
        if held is not None and not held.closed:
            if held.token == self._token and time.monotonic() <= self._token_until:
                return held  # (every call but one in ~14 minutes: nothing to await)
            # The server closes a socket when the token it holds expires: renewed before
            # (in band, so the calls in flight on it go on).
            try:
                fresh = await self._renewed(held.token)
            except (RemoteError, httpx.HTTPError) as exc:
                # cannot sign in now: the socket serves while its token lasts (a refusal
                # for good, a revoked key, fails the call as any message would fail)
                if _refused_for_good(exc) or time.monotonic() >= held.expires:
                    raise
                return held
            if fresh is None:
                return held
            try:
                await held.renew(fresh, self._token_expires)
                return held
            except RemoteError:  # (it closed meanwhile, or refused: a new one, then)
                await self._close_socket()
        await self._ensure_token()
        ws_url = self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        for attempt in (1, 2):
            try:
                socket = await websockets.asyncio.client.connect(
                    f"{ws_url}/v1/ws?inbox=false&token={self._token}",
                    max_size=MAX_REPLY_FRAME,
                    open_timeout=self._timeout,
                    compression=None,  # small signed frames: deflate costs more than it saves
                )
            except websockets.exceptions.InvalidStatus:
                if attempt == 2:
                    raise
                await self._authenticate()  # the server restarted and forgot our session
                continue
            except (OSError, websockets.exceptions.WebSocketException) as exc:
                raise RemoteError("DISCONNECTED", f"cannot reach {self.url}: {exc}", 503) from None
            break
        self._socket = _RequestSocket(socket, self._token, self._token_expires)
        return self._socket

    async def _close_socket(self) -> None:
        if self._socket is not None:
            await self._socket.close()
            self._socket = None

    async def _get(self, path: str, **options: Any) -> dict[str, Any]:
        return await self._request("GET", path, **options)

    async def _request(self, method: str, path: str, **options: Any) -> dict[str, Any]:
        await self._ensure_token()
        for attempt in (1, 2):
            try:
                response = await self._http.request(
                    method, path, headers={"authorization": f"Bearer {self._token}"}, **options
                )
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                # A kept-alive connection the server closed or reset (idle too long) just
                # as this request went out on it: a read is safe to send again on a new one.
                if method != "GET" or attempt == 2:
                    raise
                continue
            if response.status_code == 401 and attempt == 1:
                await self._authenticate()  # the server restarted and forgot our session
                continue
            break
        return _reply(response)

    async def _ensure_token(self) -> None:
        if self._token is None or time.monotonic() > self._token_until:
            await self._authenticate()

    async def _authenticate(self) -> None:
        started = time.monotonic()
        challenge = _reply(await self._http.post("/v1/auth/challenge", json={"agent": self.agent}))[
            "challenge"
        ]
        signature = self.identity.sign_bytes(auth_input(b64url_decode(challenge), self.agent))
        answer = {
            "agent": self.agent,
            "kid": self.identity.kid,
            "challenge": challenge,
            "signature": b64url_encode(signature),
        }
        reply = _reply(await self._http.post("/v1/auth/token", json=answer))
        self._token = reply["token"]
        # A server that does not say (an older one) gives tokens of TOKEN_SECONDS, and
        # neither closes a socket when its token expires nor knows the renew frame.
        self._sockets_expire = "expires_in" in reply
        life = float(reply.get("expires_in", TOKEN_SECONDS))
        self._token_expires = started + life  # (on this clock; the server's is later)
        self._token_until = self._token_expires - min(_TOKEN_MARGIN, life / 4)

    async def _renewed(self, held: str | None) -> str | None:
        """A token to renew a socket opened (or last renewed) with ``held``: a fresh one
        once ``held`` is due for renewal, else ``None``."""
        await self._ensure_token()
        return None if self._token == held or not self._sockets_expire else self._token


@contextlib.asynccontextmanager
async def _local_stream(
    service: FabricService, agent: str, topics: list[str]
) -> AsyncIterator[AsyncIterator[Frame]]:
    """Frames from an in-process service: the same as the WebSocket would carry."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Frame] = asyncio.Queue()

    def push(frame: Frame) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, frame)

    def on_events(events: Sequence[Any]) -> None:
        for event in events:
            if any(address_matches(pattern, event.topic) for pattern in topics):
                push(Frame("event", event.topic, None, {"event": msgspec.to_builtins(event)}))

    pending: set[int] = set()  # positions already queued from the inbox

    def live(frame: Frame) -> None:  # on the loop, after the inbox was read: each once
        if frame.position not in pending:
            queue.put_nowait(frame)

    def on_delivery(delivery: Any) -> None:
        if delivery.receiver == agent:
            frame = Frame(
                "message", None, delivery.position, {"message": json.loads(delivery.body)}
            )
            loop.call_soon_threadsafe(live, frame)

    def on_topic(topic: str, body: bytes) -> None:
        if any(address_matches(pattern, topic) for pattern in topics):
            push(Frame("event", topic, None, {"message": json.loads(body)}))

    service.on_events(on_events)
    service.on_delivery(on_delivery)
    service.on_topic(on_topic)
    for entry in service.store.pending(agent, 0, 1000):
        pending.add(entry.position)
        queue.put_nowait(
            Frame("message", None, entry.position, {"message": json.loads(entry.body)})
        )

    async def frames() -> AsyncIterator[Frame]:
        while True:
            yield await queue.get()

    try:
        yield frames()
    finally:
        for listener in (on_events, on_delivery, on_topic):
            service.forget(listener)


#: Largest reply frame the SDK accepts (a reply to a big ``create`` lists every task).
MAX_REPLY_FRAME: Final = 64 * 1024 * 1024


class _RequestSocket:
    """One WebSocket carrying a client's signed messages (``send`` frames) and the replies,
    matched by frame id."""

    def __init__(
        self,
        socket: websockets.asyncio.client.ClientConnection,
        token: str | None,
        expires: float,
    ) -> None:
        self._socket = socket
        self.token = token  # the token it was opened or last renewed with
        self.expires = expires  # when that expires, at the latest (monotonic)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._last_id = 0
        self.closed = False
        self._reader = asyncio.create_task(self._read())

    async def send(self, body: bytes) -> asyncio.Future[dict[str, Any]]:
        """Send one wire message; the future settles with its reply (or a RemoteError)."""
        return await self._send_frame(
            lambda frame_id: b'{"type":"send","id":%d,"message":%s}' % (frame_id, body)
        )

    async def renew(self, token: str, expires: float) -> None:
        """Extend this connection's life to ``token``'s (before the one it holds expires),
        which expires at ``expires`` at the latest."""
        frame = {"type": "renew", "token": token}
        await (
            await self._send_frame(lambda frame_id: json.dumps({**frame, "id": frame_id}).encode())
        )
        self.token, self.expires = token, expires

    async def _send_frame(self, make: Callable[[int], bytes]) -> asyncio.Future[dict[str, Any]]:
        """Send the frame ``make`` makes with a fresh frame id; the future settles with
        the answer of that id."""
        self._last_id += 1
        frame_id = self._last_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[frame_id] = future
        frame = make(frame_id)
        try:
            await self._socket.send(frame.decode())
        except websockets.exceptions.ConnectionClosed as exc:
            self._waiting.pop(frame_id, None)
            self.closed = True
            raise RemoteError("DISCONNECTED", f"the connection closed: {exc}", 503) from None
        except asyncio.CancelledError:
            # The call was given up while the frame waited for the peer to take it.
            # websockets hands the whole frame to the transport before it waits for the
            # buffer to drain, so no frame is cut in half and the connection stays good
            # for the other calls; its reply, if one comes, is ignored. (A call whose own
            # timeout passed here drops the connection: the peer is stuck, see _post.)
            self._waiting.pop(frame_id, None)
            raise
        return future

    def abort(self) -> None:
        """Drop the connection at once: a closing handshake would queue behind the
        frames the peer is not reading (websockets' ``close`` would wait its close
        timeout for it)."""
        self.closed = True
        self._socket.transport.abort()

    async def close(self) -> None:
        self.closed = True
        await self._socket.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _read(self) -> None:
        try:
            async for text in self._socket:
                frame = json.loads(text)
                frame_id = frame.get("id") if isinstance(frame, dict) else None
                future = self._waiting.pop(frame_id, None) if isinstance(frame_id, int) else None
                if future is None or future.done():
                    continue  # not an answer to us (or one nobody waits for any more)
                if frame.get("type") == "reply":
                    future.set_result(frame["result"])
                elif frame.get("type") == "renewed":
                    future.set_result(frame)
                else:
                    status = int(frame.get("status", 400))
                    future.set_exception(RemoteError.of(frame.get("error"), status))
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            self.closed = True
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(
                        RemoteError(
                            "DISCONNECTED",
                            "the connection closed before the reply; the message may have been carried out",
                            503,
                        )
                    )
            self._waiting.clear()


def _stream_frame(text: str | bytes) -> Frame | str:
    """A stream's frame: an event or a message, or the type of any other frame; the
    server's refusal (the answer to the subscribe frame) raised."""
    frame = json.loads(text)
    if frame["type"] == "error":
        error = frame["error"]
        raise RemoteError(error["code"], error["detail"], frame.get("status") or 400)
    if frame["type"] in ("event", "message"):
        return Frame(frame["type"], frame.get("topic"), frame.get("position"), frame)
    return str(frame["type"])


def _refused_for_good(failure: Exception) -> bool:
    """Whether signing in failed for a reason that waiting will not mend (a key revoked
    or unknown), not for the moment (the server unreachable, busy)."""
    return isinstance(failure, RemoteError) and failure.status in (401, 403)


def _refused_handshake(exc: websockets.exceptions.InvalidStatus) -> RemoteError:
    """The server's refusal of a WebSocket handshake, with its reason code if it sent one."""
    status = exc.response.status_code
    try:
        error = json.loads(exc.response.body or b"")["error"]
        return RemoteError(str(error["code"]), str(error["detail"]), status)
    except (ValueError, TypeError, KeyError):
        return RemoteError("DISCONNECTED", f"the WebSocket was refused: HTTP {status}", 503)


def _checked_topics(topics: Iterable[str]) -> list[str]:
    """``topics`` as a list, once the server's rules for subscriptions hold."""
    wanted = list(topics)
    problem = subscription_problem((), wanted)
    if problem is not None:
        raise RemoteError("MALFORMED", problem, 400)
    return wanted


def _disconnected(exc: websockets.exceptions.ConnectionClosed) -> RemoteError:
    """A stream's WebSocket that dropped, as the SDK reports every lost connection."""
    return RemoteError("DISCONNECTED", f"the stream's connection closed: {exc}", 503)


def path_segment(value: str) -> str:
    """``value`` (a task id...) as one URL path segment: escaped, or ``a?b`` would look up
    ``a`` and ``a/b`` another path; a dot segment spelled with escapes, or URL
    normalisation would remove it (``/v1/tasks/..`` is ``/v1``)."""
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return urllib.parse.quote(value, safe="")


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process: building one loads the CA store (~25 ms),
    which httpx would otherwise do for every client, even for plain-HTTP loopback URLs."""
    return ssl.create_default_context()


def _reply(response: httpx.Response) -> dict[str, Any]:
    try:
        document = response.json()
    except (ValueError, json.JSONDecodeError):
        raise RemoteError(
            "BAD_RESPONSE", f"HTTP {response.status_code}: not JSON", response.status_code
        ) from None
    if response.status_code != 200:
        error = document.get("error") if isinstance(document, dict) else None
        raise RemoteError.of(error, response.status_code)
    if not isinstance(document, dict):
        raise RemoteError("BAD_RESPONSE", "expected a JSON object", response.status_code)
    result: dict[str, Any] = document
    return result


class SyncClient:
    """The SDK for code that is not async: every :class:`Client` coroutine method, run on
    a private event loop in a background thread and waited for.

    ::

        with SyncClient.connect("http://127.0.0.1:8765", identity) as agent:
            task = agent.claim_next()
            agent.complete(task["id"], {"ok": True})
    """

    #: as :meth:`Client.trace` (the context reaches the loop thread with each call)
    trace = staticmethod(Client.trace)

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self.agent = client.agent
        self.identity = client.identity

    @classmethod
    @contextlib.contextmanager
    def connect(cls, url: str, identity: SigningIdentity, **options: Any) -> Iterator[SyncClient]:
        """Like :meth:`Client.connect`, blocking."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="ifab-sdk", daemon=True)
        thread.start()
        context = Client.connect(url, identity, **options)
        try:
            client = asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result()
            try:
                yield cls(client, loop)
            finally:
                asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if name.startswith("_") or not asyncio.iscoroutinefunction(method):
            raise AttributeError(
                f"SyncClient has no {name!r}: it runs Client's coroutine methods only"
                " (stream, use_mesh and outbox need the async Client)"
            )

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(method(*args, **kwargs), self._loop).result()

        return blocking

"""The embedded mode: a whole fabric inside one process, no server, no socket.

::

    fabric = Fabric.open("./board")              # a data directory, SQLite inside
    alice = fabric.enroll("alice", ["code:python"])
    async with fabric.connect(alice) as agent:   # the same Client as over the network
        task = await agent.claim_next()
    with fabric.connect_sync(alice) as agent:    # or blocking, from any thread
        task = agent.claim_next()

Requests take the server's path with no socket and no HTTP where it can be spared. A
client connects as over a network (a challenge and answer with the agent's key), then:

* board operations go to the same committer (group commit) as ``POST /v1/messages``
  hands a signed message to, but as data, unsigned: in one process a signature proves
  nothing (see :class:`~infrafabric.service.InProcess`), and signing and checking
  took half of a claim's time. The agent's key is checked at every operation.
* messages to agents and topics, and help requests, are signed and go through the
  verification pipeline, as their receivers check who sent them
  (``connect(identity, signed=True)`` signs every operation too, as over a network);
* the other requests go to the same application, called in-process through httpx's
  ASGI transport.

A sweeper thread returns expired leases every second. For single-process swarms and
tests.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import httpx

from infrafabric.board.rules import DEFAULT_CONFIG, BoardConfig
from infrafabric.client import Client, InProcessBoard, SyncClient
from infrafabric.governor.core import Manifest
from infrafabric.governor.policy import Price
from infrafabric.protocol.identity import SigningIdentity
from infrafabric.protocol.keyring import new_key_record
from infrafabric.protocol.message import agent_id
from infrafabric.server.app import ServerState, create_app, enroll_keys
from infrafabric.server.runner import open_server, sweep_until
from infrafabric.service import InProcess, InProcessSession
from infrafabric.storage.base import AgentRecord

__all__ = ["Fabric"]

#: The address embedded clients use; nothing listens on it.
EMBEDDED_URL: Final = "http://embedded.fabric"
#: How often the checkpoint thread of an embedded fabric at NORMAL copies the WAL.
EMBEDDED_CHECKPOINT_SECONDS: Final = 0.25


class Fabric:
    """A fabric in this process. Use :meth:`open`; :meth:`close` when done."""

    def __init__(self, state: ServerState, *, sweep_every: float) -> None:
        self.state = state
        self.app = create_app(state)
        self._stop = threading.Event()
        self._sweeper = threading.Thread(
            target=self._sweep, args=(sweep_every,), daemon=True, name="ifab-sweeper"
        )
        self._sweeper.start()
        if state.witness is not None:
            state.witness.start()

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        config: BoardConfig = DEFAULT_CONFIG,
        synchronous: str = "FULL",
        sweep_every: float = 1.0,
    ) -> Fabric:
        """Open (creating if needed) the fabric whose data directory is ``path``."""
        # With FULL, SQLite checkpoints the WAL itself, inside the commit that fills it
        # past 1,000 pages, rather than from the server's background thread. Under a
        # steady stream of commits that thread's RESTART rarely finds the writer idle, so
        # the WAL grew to its 20,000-page backstop (82 MB), every commit appending to
        # it, and a flush of appended pages costs more than one of pages rewritten in
        # place (os.pwrite of 7 frames + fdatasync on this VM: 236 against 119 us p50;
        # an append changes the file's size, which the file system must record too). A
        # WAL kept under 1,000 pages is soon rewritten in place. With FULL the WAL is
        # already flushed at each commit, so the checkpoint in the commit only copies
        # pages and flushes the database. With NORMAL it would first flush the MBs of WAL
        # the commits left unflushed: there the thread stays. Measured on Fabric.open
        # with its witness, 2,500 claims one after another, four alternating rounds:
        # FULL p50 606-876 us against 955-1,131 us with the thread, p99 1.6-3.3 ms
        # against 3.5-4.1; NORMAL without the thread: p99 4.9-5.0 ms against 1.1-1.7.
        # The thread checkpoints every 0.25 s here, not every 0.05 s as a server's does:
        # one writer committing back to back leaves it no quiet moment, and the more
        # often it copies, the more it holds that writer up (claim p50 378 and 391 us
        # against 389 and 449 us, p99 833 and 987 against 1,033 and 1,273 us).
        return cls(
            open_server(
                Path(path),
                config=config,
                synchronous=synchronous,
                background_checkpoints=synchronous == "NORMAL",
                checkpoint_seconds=EMBEDDED_CHECKPOINT_SECONDS,
            ),
            sweep_every=sweep_every,
        )

    def enroll(
        self,
        identity: SigningIdentity | str,
        capabilities: Iterable[str] = (),
        description: str = "",
        *,
        model: str = "",
        price: Price | None = None,
        swarm: str | None = None,
    ) -> SigningIdentity:
        """Trust ``identity`` (or a fresh one named so) with ``capabilities``; returns it.
        ``model``, ``price`` and ``swarm`` complete its manifest for the governor."""
        if isinstance(identity, str):
            identity = SigningIdentity.generate(agent_id(identity))
        manifest = Manifest(capabilities=tuple(capabilities), model=model, price=price, swarm=swarm)
        # before any key is trusted, as a server's enrollment does: a refused manifest
        # leaves nothing behind (a key trusted but never witnessed)
        self.state.service.check_manifest(identity.agent, manifest)
        now = time.time()
        key = new_key_record(
            identity.agent, identity.public_key, version=identity.version, now=now - 60
        )
        record = AgentRecord(
            id=identity.agent,
            capabilities=manifest.capabilities,
            description=description,
            enrolled_at=now,
        )
        # as a server's enrollment: witnessed (the key, the agent), then written to the
        # data directory's keyring (a fabric opened again must still know the key the
        # agent's record belongs to) and trusted
        enroll_keys(self.state, record, [key], manifest, now)
        return identity

    @contextlib.asynccontextmanager
    async def connect(
        self, identity: SigningIdentity, *, signed: bool = False
    ) -> AsyncIterator[Client]:
        """An SDK client for ``identity``, talking to this fabric in-process.

        Connecting proves that the caller holds ``identity``'s private key (the challenge
        and answer a server asks for). Then board operations (except help requests) go
        to the board as data, unsigned, with the key checked again at each one (see
        :class:`~infrafabric.service.InProcess` for why); messages to agents and topics,
        and help requests, are signed as over a network, since their receivers check
        who sent them. ``signed=True`` signs every operation too and has it checked by
        the verification pipeline, exactly as a server would: for testing what an agent
        sends, at about twice the cost of a claim. A fabric whose verifier runs in audit
        or permissive mode or by authorization rules, or one over a shared store, signs
        every operation anyway (see ``FabricService.takes_in_process``)."""
        session = self._session_for(identity, signed)
        async with Client.connect(EMBEDDED_URL, identity, **self._in_process(session)) as client:
            with self._open(session):
                yield client

    @contextlib.contextmanager
    def connect_sync(
        self, identity: SigningIdentity, *, signed: bool = False
    ) -> Iterator[SyncClient]:
        """The blocking SDK for ``identity`` (:class:`~infrafabric.client.SyncClient`: its
        own event loop in a thread), talking to this fabric in-process as :meth:`connect`
        does. Any number of them, from any threads, share the fabric."""
        session = self._session_for(identity, signed)
        options = self._in_process(session)
        with SyncClient.connect(EMBEDDED_URL, identity, **options) as client, self._open(session):
            yield client

    def _in_process(self, session: InProcessSession | None) -> dict[str, Any]:
        """What a client needs to reach this fabric in process: the application (reads,
        over httpx's ASGI transport), the service (streams), the committer (signed
        messages) and, with a ``session``, the board (unsigned operations)."""
        return {
            "transport": httpx.ASGITransport(app=self.app),
            "local": self.state.service,
            "submit": self._submit,
            "operate": None if session is None else self._board_of(session),
        }

    async def _submit(self, data: bytes) -> dict[str, Any]:
        """A signed message to the committer, as ``POST /v1/messages`` hands it over
        (the same verification and group commit), without building an HTTP request and
        answer around it: that took most of an embedded claim's time."""
        return await self.state.committer.submit(data, self.state.clock())

    def _session_for(self, identity: SigningIdentity, signed: bool) -> InProcessSession | None:
        """The session whose board operations go unsigned, or ``None``: signed asked for,
        or a fabric that needs signed messages (see ``FabricService.takes_in_process``)."""
        if signed or not self.state.service.takes_in_process:
            return None
        return InProcessSession(identity.agent, identity.kid)

    @contextlib.contextmanager
    def _open(self, session: InProcessSession | None) -> Iterator[None]:
        """Hold ``session`` open while its client is in use. Entered once the client has
        connected, which it does only after proving that it holds the key."""
        if session is None:
            yield
            return
        service = self.state.service
        service.open_in_process(session)
        try:
            yield
        finally:
            service.close_in_process(session)

    def _board_of(self, session: InProcessSession) -> InProcessBoard:
        """The board as ``session``'s client reaches it: each operation to the same
        committer as a signed message (the same group commit, in order with them)."""
        committer, clock = self.state.committer, self.state.clock

        async def operate(operation: dict[str, Any], trace: str | None) -> dict[str, Any]:
            # (made here, in the caller's turn: the operation is copied before any await)
            request = InProcess(session, operation, trace)
            return await committer.submit(request, clock())

        return operate

    def close(self) -> None:
        self._stop.set()
        self._sweeper.join(timeout=10)
        self.state.close()

    def __enter__(self) -> Fabric:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _sweep(self, every: float) -> None:
        sweep_until(self._stop, self.state.service.coordinator, every)

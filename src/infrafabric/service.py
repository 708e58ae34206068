"""The fabric service: one verified IFMessage in, one reply out, whatever the transport.

The server calls it for every HTTP or WebSocket message, the embedded mode calls it
directly (and hands it board operations unsigned, see :class:`InProcess`). Every
message goes through the verification pipeline first; then:

* a ``request`` to ``if://service/board`` carries a board operation (:mod:`infrafabric.ops`);
* a message to ``if://agent/...`` is kept in each receiver's inbox until acknowledged;
* a message to ``if://topic/...`` goes to the topic's live subscribers.

Errors come back as :class:`ServiceError` with a stable ``code`` (the verification
reason codes, and the board's own) and the HTTP status a server should use.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgspec
from msgspec import UNSET

from infrafabric import ops
from infrafabric.board.dag import DependencyError
from infrafabric.board.model import Blocker, BoardEvent, Task, TaskState, Urgency
from infrafabric.board.rules import InvalidTask, LeaseLost, NotOwner, qualifies
from infrafabric.board.transitions import IllegalTransition
from infrafabric.coordinator import Busy, Coordinator, TaskNotFound
from infrafabric.errors import CallerError, FabricError, KeyringError, MessageError, StoreError
from infrafabric.governor.core import Manifest, ManifestError
from infrafabric.governor.driver import GovernorDriver
from infrafabric.protocol.identity import b64url_decode
from infrafabric.protocol.keyring import (
    KeyRecord,
    Keyring,
    KeyringFile,
    KeyRole,
    KeyState,
    delegated_key,
)
from infrafabric.protocol.message import IFMessage, content_copy, encode_json
from infrafabric.protocol.patterns import TokenField
from infrafabric.protocol.reasons import Reason
from infrafabric.protocol.verify import AllowAll, Mode, Verdict, Verifier
from infrafabric.storage.base import AgentRecord, Replayed, SharesKeys
from infrafabric.types import AgentId, KeyId, Timestamp

__all__ = ["Delivery", "FabricService", "InProcess", "InProcessSession", "ServiceError"]

_STATUS_OF_REASON: Final = {
    Reason.TOO_LARGE: 413,
    Reason.MALFORMED: 400,
    Reason.UNSUPPORTED_VERSION: 400,
    Reason.EXPIRED: 401,
    Reason.FROM_FUTURE: 401,
    Reason.UNKNOWN_KEY: 401,
    Reason.KEY_REVOKED: 401,
    Reason.KEY_EXPIRED: 401,
    Reason.UNSIGNED: 401,
    Reason.BAD_SIGNATURE: 401,
    Reason.REPLAY: 409,
    Reason.OUT_OF_SEQUENCE: 409,
    Reason.UNAUTHORIZED: 403,
}


_log = logging.getLogger(__name__)
#: Where a shared store keeps each agent's keyring document (see ``share_keys``).
KEYS_PREFIX: Final = "keyring/"
#: Reading the shared keys again for an unknown key: at most this often.
KEYS_RELOAD_SECONDS: Final = 1.0
#: How long a server trusts an agent's record read from a shared store, and how many it
#: keeps at most (then it starts again: a record costs one read to get back). Every
#: enrollment, through any server, reaches every server as an event, which drops the
#: records kept there (``load_shared_keys``); this is the backstop for one never read.
AGENT_RECORD_SECONDS: Final = 30.0
MAX_KEPT_RECORDS: Final = 100_000
_KEYRING_DECODER: Final = msgspec.json.Decoder(KeyringFile)
T = TypeVar("T")
_OPERATION_DECODER: Final = msgspec.json.Decoder(ops.Operation)
_GOVERNOR_DECODER: Final = msgspec.json.Decoder(ops.GovernorOperation)
_KEYS_DECODER: Final = msgspec.json.Decoder(ops.KeysOperation)
_INBOX_DECODER: Final = msgspec.json.Decoder(ops.InboxOperation)
_MESH_DECODER: Final = msgspec.json.Decoder(ops.MeshOperation)
_CONTENT_ENCODER: Final = msgspec.json.Encoder()


class ServiceError(FabricError):
    """A refused message: ``code`` is stable (a verification reason code or a board code
    such as ``NOT_OWNER``), ``status`` the HTTP status that fits it."""

    def __init__(self, code: str, detail: str, status: int, *, highest: int | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status
        #: a refusal for the sequence number (``REPLAY`` of a number, ``OUT_OF_SEQUENCE``):
        #: the sender's highest accepted, so that a client may number its next above it
        self.highest = highest

    @property
    def retryable(self) -> bool:
        """A 503 (``STORE_UNAVAILABLE``, ``BUSY``): the message was not carried out, and
        the same one may be sent again later."""
        return self.status == 503

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "detail": self.detail}
        if self.highest is not None:
            error["highest"] = self.highest
        return {"error": error}


@dataclass(frozen=True, eq=False)  # (open sessions are known by identity, not by value)
class InProcessSession:
    """An agent's client in the fabric's own process, once it has authenticated (proved
    that it holds ``kid``'s private key). The service carries out :class:`InProcess`
    operations only for sessions it holds open (:meth:`FabricService.open_in_process`):
    an ``InProcess`` names no key and carries no proof of its own, so one built from
    anything read off a wire would be refused, not believed."""

    agent: AgentId
    kid: KeyId


@dataclass(frozen=True, slots=True)
class InProcess:
    """A board operation from a client in the fabric's own process (an embedded fabric's
    :meth:`~infrafabric.fabric.Fabric.connect`), handed over as data, not as a signed
    message.

    A signature proves who sent bytes that crossed a boundary. In process there is no
    boundary: the code that holds the client holds the fabric too, and could call the
    board directly; nothing is read off a wire, so nothing can be forged or replayed on
    the way; and the fabric keeps no request's signature (the witness records its
    decisions, which it signs itself). Signing and checking each operation here took
    half of an embedded claim's time and proved nothing. What does count is checked:
    the client proved it holds the agent's private key when its session opened (the
    same challenge and answer as over a network), the session must still be open, and
    the key is checked again at every operation (see
    :meth:`FabricService.handle_in_process`).

    Made, the operation is copied as plain JSON data, with the checks a signed
    message's content gets (:func:`~infrafabric.protocol.message.content_copy`: no NaN,
    no integer beyond 2**53, string keys, nesting within bounds; a ``trace_id`` as
    IFMessage's): what the caller changes afterwards changes nothing, and a refusal is
    the same :class:`~infrafabric.errors.MessageError` the SDK raises before signing."""

    session: InProcessSession
    operation: dict[str, Any]
    trace_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.operation, Mapping):
            raise MessageError(f"an operation is a JSON object, not {type(self.operation)}")
        object.__setattr__(self, "operation", content_copy(self.operation))
        if self.trace_id is not None:
            try:
                msgspec.convert(self.trace_id, TokenField)
            except msgspec.ValidationError as exc:
                raise MessageError(f"trace_id: {exc}") from None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A direct message for live delivery: ``position`` in ``receiver``'s inbox."""

    receiver: AgentId
    position: int
    body: bytes


@dataclass
class _Listeners:
    events: list[Callable[[Sequence[BoardEvent]], None]] = field(default_factory=list)
    deliveries: list[Callable[[Delivery], None]] = field(default_factory=list)
    topics: list[Callable[[str, bytes], None]] = field(default_factory=list)


class FabricService:
    """Verification, board operations, inboxes and topics behind ``handle`` (a wire
    message) and ``handle_in_process`` (an operation from this process), both carried
    out in batches by ``handle_batch``."""

    def __init__(
        self,
        coordinator: Coordinator,
        verifier: Verifier,
        governor: GovernorDriver | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.store = coordinator.store
        self.verifier = verifier
        self.governor = governor
        self._verify_lock = threading.Lock()  # the verifier's replay state is not thread-safe
        self._listeners = _Listeners()
        self._held = threading.local()  # inside handle_batch: announcements wait for the commit
        self._keys_loaded_at = float("-inf")  # shared keys last read for an unknown key
        #: Called with an agent whose keys changed here (a delegation): the server keeps
        #: its keyring directory up to date with it.
        self.keys_changed: Callable[[AgentId], None] | None = None
        #: Each told of each message of a batch once it is committed: its operation
        #: (``claim``, ``direct``, ``unverified``...), its refusal code or ``None``, and the
        #: seconds from the start of its handling to the commit (metrics, logs).
        self.observers: list[Callable[[str, str | None, float], None]] = []
        #: Each told of each batch once it is committed and announced: how many messages
        #: it held and the seconds it took in all. On SQLite a batch runs on the server's
        #: event loop, so every request that arrives meanwhile waits behind it.
        self.batch_observers: list[Callable[[int, float], None]] = []
        self._operation = threading.local()  # what the message being handled asked for
        self._in_process: set[InProcessSession] = set()  # open sessions (see InProcess)
        #: agent records read from the store, and when (see :meth:`agent`); the
        #: generation rises with each enrollment here
        self._records: dict[AgentId, tuple[AgentRecord, float]] = {}
        self._records_lock = threading.Lock()
        self._records_generation = 0
        coordinator.listen(self._on_board_events)
        if governor is not None:
            governor.attach()
        if verifier.mode is Mode.AUDIT and verifier.on_reject is None:
            verifier.on_reject = self._witness_verdict

    # -- messages -------------------------------------------------------------------------

    def handle(
        self,
        data: bytes,
        *,
        now: Timestamp,
        local: bool = False,
        recorded: list[IFMessage] | None = None,
    ) -> dict[str, Any]:
        """Verify and carry out one wire message; returns the JSON-ready reply or raises
        :class:`ServiceError`. A message that passed every check of the verifier (its
        nonce and sequence number now recorded) is appended to ``recorded``: should the
        store then fail, :meth:`handle_batch` takes that record back."""
        with self._verify_lock:
            verdict = self.verifier.check(data, now=now, local=local)
            if verdict.reason is Reason.UNKNOWN_KEY and self._may_reload_keys(now):
                # enrolled through another server a moment ago? read the keys again (at
                # most once a second: an unknown key costs nothing to send)
                self._load_shared_keys()
                verdict = self.verifier.check(data, now=now, local=local)
            # Over a shared store another server may have accepted the very bytes, which
            # this one's nonces do not know: no highest then (see Verdict.highest).
            message = _accepted(verdict, numbered=not self.store.shared)
            if recorded is not None and verdict.reason is None:
                recorded.append(message)
            # an operator's authority needs a message that passed every check: audit mode
            # accepts a forged or replayed one, which proves nothing about its sender
            key = verdict.key if verdict.reason is None else None
            # an acknowledgment needs its sender's signature only: audit mode accepts, with
            # a reason, the replay of a number that two clients of one identity can draw,
            # and acknowledging again changes nothing
            signed = verdict.key is not None and verdict.reason in _SIGNATURE_HELD
            window = self.verifier.sequences.snapshot(message.sender)
        # Each server keeps its own replay windows; over a shared store one more check
        # makes a replay through another server fail too: the nonce, recorded once for
        # the fabric until the message expires (spent by _carry_out).
        spend = self.store.shared and verdict.reason is None
        try:
            reply = self._carry_out(message, data, key, now, spend, signed=signed)
        except BaseException as exc:
            # a refusal answers the message, so a replay of it is refused too; one that
            # left nothing done may be sent again (handle_batch takes the record back)
            if not _retryable(exc):
                self._remember_window(message.sender, window)
            raise
        self._remember_window(message.sender, window)
        return reply

    def _remember_window(self, sender: AgentId, window: tuple[int, int] | None) -> None:
        if window is not None and not self.store.shared:
            # (A shared store records every nonce instead: no window to keep.) Durable
            # with the message's effects (one commit in a batch): after a crash the
            # restarted verifier still refuses a replay of anything acknowledged. A window
            # only grows, so the store keeps the widest it is given.
            self.store.remember_sequence(sender, *window)

    def _carry_out(
        self,
        message: IFMessage,
        data: bytes,
        key: KeyRecord | None,
        now: Timestamp,
        spend: bool,
        *,
        signed: bool = False,
    ) -> dict[str, Any]:
        if spend and message.receivers != (ops.BOARD,):
            self._spend_nonce(message, now)
        receivers = message.receivers
        self._operation.name = _operation_of(receivers)
        if key is not None and receivers != (ops.BOARD,):  # (board operations count already)
            self.coordinator.heard_from(message.sender)
        if receivers == (ops.BOARD,):
            operator = key is not None and key.role is KeyRole.OPERATOR
            if spend:
                return self._board_spending(message, now, operator)
            return self._board(message, operator)
        if receivers == (ops.GOVERNOR,):
            return self._governor(message, key)
        if receivers == (ops.KEYS,):
            return self._keys(message, key, now)
        if receivers == (ops.INBOX,):
            return self._inbox(message, signed)
        if receivers == (ops.MESH,):
            return self._mesh(message, data, key, now)
        if any(receiver.startswith("if://service/") for receiver in receivers):
            raise ServiceError("UNKNOWN_SERVICE", f"no such service among {list(receivers)}", 404)
        for receiver in receivers:  # (all checked before anything goes anywhere)
            if ops.fabric_topic(receiver):
                # what a follower reads there must be what the fabric decided or checked
                where = f": send yours to {ops.MESH}" if receiver == ops.MESH_STATUS_TOPIC else ""
                raise ServiceError(
                    "RESERVED_TOPIC", f"only the fabric publishes on {receiver}{where}", 403
                )
            if receiver.startswith("if://agent/") and self.agent(AgentId(receiver)) is None:
                raise ServiceError(
                    "UNKNOWN_RECEIVER",
                    f"{receiver} is not enrolled in this fabric: nobody would read its inbox",
                    404,
                )
        body = encode_json(message)
        delivered: list[dict[str, Any]] = []
        published: list[str] = []
        for receiver in receivers:
            if receiver.startswith("if://agent/"):
                position = self.store.deliver(receiver, message.id, body)
                delivered.append({"receiver": receiver, "position": position})
                self._emit_delivery(Delivery(receiver, position, body))
            else:
                published.append(receiver)
                self._announce(self._listeners.topics, receiver, body)
        return {"delivered": delivered, "published": published}

    def open_in_process(self, session: InProcessSession) -> None:
        """Take :class:`InProcess` operations for ``session`` from now on: its client has
        authenticated (see :meth:`~infrafabric.fabric.Fabric.connect`)."""
        self._in_process.add(session)

    def close_in_process(self, session: InProcessSession) -> None:
        """Take no more operations for ``session`` (its client is closing)."""
        self._in_process.discard(session)

    @property
    def takes_in_process(self) -> bool:
        """Whether unsigned in-process operations may stand for signed messages here:
        only under a strict verifier with no authorization rules, over a store of this
        process's own. An audit or permissive verifier carries out (and witnesses)
        messages that fail a check, and rules authorize messages: both need the message
        itself. Over a shared store the other servers' keys are reloaded on a signed
        message's unknown key."""
        return (
            self.verifier.mode is Mode.STRICT
            and isinstance(self.verifier.authorizer, AllowAll)
            and not self.store.shared
        )

    def handle_in_process(self, request: InProcess, now: Timestamp) -> dict[str, Any]:
        """Carry out a board operation from a client in this process (see
        :class:`InProcess`); returns the reply a signed request would have had, or raises
        :class:`ServiceError` with the code it would have had. Its session must be open
        (``UNAUTHENTICATED``), and its key is checked as the verifier checks a signed
        message's, at every operation: a key revoked, or deprecated past its grace,
        stops its sessions at once. The content is bounded by the verifier's
        ``max_bytes`` (a signed message's envelope would add some 600 bytes to it)."""
        session = request.session
        self._operation.name = "board"
        if session not in self._in_process:
            raise ServiceError(
                "UNAUTHENTICATED", "no open session in this process for that operation", 401
            )
        if not self.takes_in_process:
            raise ServiceError(
                "UNSIGNED",
                "this fabric checks messages in audit or permissive mode, or by rules,"
                " or over a shared store: board operations must be signed",
                401,
            )
        with self._verify_lock:
            key = self.verifier.keyring.resolve(session.agent, session.kid, now)
        if key.reason is not None or key.record is None:
            reason = key.reason or Reason.UNKNOWN_KEY
            raise ServiceError(str(reason), key.detail, _STATUS_OF_REASON.get(reason, 401))
        content = _CONTENT_ENCODER.encode(request.operation)  # (plain JSON data: see InProcess)
        most = self.verifier.max_bytes
        if len(content) > most:
            raise ServiceError("TOO_LARGE", f"{len(content)} bytes > {most} in one operation", 413)
        try:
            operation = _OPERATION_DECODER.decode(content)
        except msgspec.ValidationError as exc:
            raise ServiceError("INVALID_OPERATION", str(exc), 422) from None
        operator = key.record.role is KeyRole.OPERATOR
        return self._board_operation(operation, session.agent, request.trace_id, operator, None)

    def handle_batch(
        self, batch: Sequence[tuple[bytes | InProcess, Timestamp]]
    ) -> list[dict[str, Any] | ServiceError]:
        """Carry out several wire messages with one commit (group commit, see
        :meth:`~infrafabric.storage.base.Store.batch`): the reply or refusal of each, in
        order. Each message succeeds or fails on its own; live announcements (board
        events, deliveries, topic messages) go out only once the commit is durable. If
        the commit fails, every message of the batch is refused with STORE_UNAVAILABLE.

        A message refused with a 503 (its store failed, or it lost too many races:
        ``BUSY``) was never carried out, so the verifier's record of it (nonce, sequence
        number) is taken back: a client that sends the very same bytes again after the
        503 (as ``Retry-After`` invites) is not refused as a replay. (Over a shared store, a nonce a message other than a
        board change already spent in the store before it failed stays spent there.)"""
        batch_started = time.perf_counter()
        results: list[dict[str, Any] | ServiceError] = []
        begun: list[tuple[str, float]] = []  # each message's operation and start
        recorded: list[IFMessage] = []  # messages whose replay state the verifier recorded
        with self._announced_after_commit() as held:
            try:
                with self.store.batch():
                    for data, now in batch:
                        begun.append(("unverified", time.perf_counter()))
                        self._operation.name = "unverified"
                        before = len(recorded)
                        try:
                            if isinstance(data, InProcess):
                                results.append(self.handle_in_process(data, now))
                            else:
                                results.append(self.handle(data, now=now, recorded=recorded))
                        except ServiceError as exc:
                            results.append(exc)
                        except StoreError as exc:  # if the batch is lost, the commit says so
                            results.append(ServiceError("STORE_UNAVAILABLE", str(exc), 503))
                        except Exception as exc:  # a bug: this message fails, not the batch
                            _log.exception("message failed")
                            results.append(ServiceError("INTERNAL", f"{type(exc).__name__}", 500))
                        if _retryable(results[-1]):  # not carried out: may come again
                            self._forget(recorded[before:])
                            del recorded[before:]
                        begun[-1] = (self._operation.name, begun[-1][1])
            except StoreError as exc:
                held.clear()  # none of it happened: nothing to announce
                self._forget(recorded)
                refusal = ServiceError("STORE_UNAVAILABLE", str(exc), 503)
                results = [refusal] * len(batch)
        self._observe(begun, results)
        if self.batch_observers:
            took = time.perf_counter() - batch_started
            for batch_observer in self.batch_observers:
                batch_observer(len(batch), took)
        return results

    def _forget(self, messages: Sequence[IFMessage]) -> None:
        """Take back the verifier's record of ``messages``, which were not carried out."""
        if messages:
            with self._verify_lock:
                for message in messages:
                    self.verifier.forget(message)

    def _observe(
        self, begun: Sequence[tuple[str, float]], results: Sequence[dict[str, Any] | ServiceError]
    ) -> None:
        if not self.observers:
            return
        done = time.perf_counter()
        for (operation, started), result in zip(begun, results, strict=False):
            refusal = result.code if isinstance(result, ServiceError) else None
            for observer in self.observers:
                observer(operation, refusal, done - started)

    # -- agents ---------------------------------------------------------------------------

    def enroll(
        self,
        record: AgentRecord,
        events: Sequence[BoardEvent] = (),
        manifest: Manifest | None = None,
    ) -> None:
        """Enroll an agent; ``events`` (its keys added, rotated or revoked) are logged in
        the same transaction, for the witness. With a governor the agent registers its
        capability ``manifest`` (default: the enrolled capabilities, no price); one the
        policy refuses raises :class:`ServiceError` ``INVALID_MANIFEST`` before anything
        is written."""
        manifest = manifest or Manifest(capabilities=record.capabilities)
        if self.governor is not None:
            self.check_manifest(record.id, manifest)
        try:
            with self._announced_after_commit(), self.store.batch():
                self.store.enroll(record)
                if events:
                    self.coordinator.record(events)
                if self.governor is not None:
                    self.governor.register(record.id, manifest)
        finally:  # (a store without rollback may hold the new record even so)
            self._forget_records(record.id)

    def check_manifest(self, agent: AgentId, manifest: Manifest) -> None:
        """Refuse (``INVALID_MANIFEST``, 422) a manifest the governor's policy does not accept."""
        if self.governor is not None:
            try:
                self.governor.check(agent, manifest)
            except ManifestError as exc:
                raise ServiceError("INVALID_MANIFEST", str(exc), 422) from None

    def agent(self, agent_id: AgentId) -> AgentRecord | None:
        """The agent's enrolled record, or ``None``.

        Every board message asks, for a record that changes only when the agent is
        enrolled again, so a record read is kept in memory. This process is the only
        writer of a local store (the data directory is locked to it), and an enrollment
        here drops the kept record, so a record kept is current. Over a shared store
        (Redis) another server may enroll the agent again: its event, read by this
        server's relay, drops the records kept here (:meth:`load_shared_keys`), and a
        record is read again after :data:`AGENT_RECORD_SECONDS` in any case (an
        enrollment through another server applies here once its event is read, within
        milliseconds; through this one, at once). "Not enrolled" is never
        remembered: an agent enrolled a moment ago through another server is known at
        once."""
        now = time.monotonic()
        kept = self._records.get(agent_id)
        if kept is not None and (not self.store.shared or now - kept[1] < AGENT_RECORD_SECONDS):
            return kept[0]
        generation = self._records_generation
        record = self.store.agent(agent_id)
        with self._records_lock:
            if record is None:
                self._records.pop(agent_id, None)
            elif generation == self._records_generation:
                # (not a record read before an enrollment here committed and dropped it)
                if len(self._records) >= MAX_KEPT_RECORDS:
                    self._records.clear()
                self._records[agent_id] = (record, now)
        return record

    def _board_spending(self, message: IFMessage, now: Timestamp, operator: bool) -> dict[str, Any]:
        """A board message over a shared store: its nonce is spent in the same commit
        as its change (one round trip, and only if the change is written); a message
        that changed nothing spends it afterwards."""
        nonce = message.nonce
        self.store.spend_nonce_with_change(message.sender, nonce, self._nonce_life(message, now))
        try:
            result = self._board(message, operator)
        except Replayed:
            raise _replay(message) from None
        except ServiceError as exc:
            # refused before anything was written (a replayed creation finds its task,
            # say): if it is a replay, that is the reason to give; a 503 leaves the nonce
            # unspent, for the same message to come again
            if self.store.unspent_nonce() and not exc.retryable:
                self._spend_nonce(message, now)
            raise
        except BaseException:
            self.store.unspent_nonce()  # never left for this thread's next message
            raise
        if self.store.unspent_nonce():
            self._spend_nonce(message, now)
        return result

    def _spend_nonce(self, message: IFMessage, now: Timestamp) -> None:
        if not self.store.claim_nonce(
            message.sender, message.nonce, self._nonce_life(message, now)
        ):
            raise _replay(message)

    def _nonce_life(self, message: IFMessage, now: Timestamp) -> float:
        """How long a nonce must be remembered: until its message would be refused as
        expired anyway."""
        return message.expires_at - now + self.verifier.clock_skew

    # -- keys shared by several servers ---------------------------------------------------

    def share_keys(self, agents: Sequence[AgentId]) -> None:
        """On a shared store: keep ``agents``' keys there, for the other servers."""
        if self.store.shared:
            keyring = self.verifier.keyring
            with self._verify_lock:  # what another server wrote (a revocation) is kept
                self._load_shared_keys()
                documents = {
                    KEYS_PREFIX + agent: msgspec.json.encode(keyring.to_file(agent))
                    for agent in agents
                }
            # Merged key by key where the store can (saved whole, a copy made before
            # another server revoked a key and saved after took the revocation back)
            if isinstance(self.store, SharesKeys):
                for name, document in documents.items():
                    self.store.share_keyring(name, document)
            else:
                self.store.save_state(documents)

    def load_shared_keys(self) -> None:
        """On a shared store: trust the keys the other servers enrolled or revoked, and
        read the agents' records afresh (an enrollment may have changed them)."""
        with self._verify_lock:
            self._load_shared_keys()
        self._forget_records()

    def _forget_records(self, agent: AgentId | None = None) -> None:
        """Drop the kept record of ``agent`` (of every agent: ``None``); a record being
        read meanwhile is not kept either (see :meth:`agent`)."""
        with self._records_lock:
            self._records_generation += 1
            if agent is None:
                self._records.clear()
            else:
                self._records.pop(agent, None)

    def reload_keys_if_due(self, now: Timestamp) -> bool:
        """On a shared store, for a key not known here: read the shared keys again, at
        most once a second (an unknown key costs nothing to send). True if read."""
        if not self._may_reload_keys(now):
            return False
        self.load_shared_keys()
        return True

    def _may_reload_keys(self, now: Timestamp) -> bool:
        if not self.store.shared or now - self._keys_loaded_at < KEYS_RELOAD_SECONDS:
            return False
        self._keys_loaded_at = now
        return True

    def _load_shared_keys(self) -> None:
        for name, document in self.store.load_state(KEYS_PREFIX).items():
            try:
                records = _KEYRING_DECODER.decode(document).keys
                for record in records:
                    self.verifier.keyring.add(record)
            except (msgspec.DecodeError, msgspec.ValidationError, CallerError) as exc:
                _log.warning("shared keys %s not loaded: %s", name, exc)

    # -- listeners (the server's WebSocket fan-out) ---------------------------------------

    def on_events(self, listener: Callable[[Sequence[BoardEvent]], None]) -> None:
        self._listeners.events.append(listener)

    def on_delivery(self, listener: Callable[[Delivery], None]) -> None:
        self._listeners.deliveries.append(listener)

    def on_topic(self, listener: Callable[[str, bytes], None]) -> None:
        self._listeners.topics.append(listener)

    def forget(self, listener: Callable[..., None]) -> None:
        """Stop calling ``listener`` (registered with any ``on_*``)."""
        for registered in (
            self._listeners.events,
            self._listeners.deliveries,
            self._listeners.topics,
        ):
            while listener in registered:
                registered.remove(listener)

    # -- internals ------------------------------------------------------------------------

    def _board(self, message: IFMessage, operator: bool = False) -> dict[str, Any]:
        """One board operation; ``operator``: the message passed every check under an
        operator's key (it may cancel any task)."""
        operation = _request(message, _OPERATION_DECODER, "board")
        trace = None if message.trace_id is UNSET else message.trace_id
        return self._board_operation(operation, message.sender, trace, operator, message)

    def _board_operation(
        self,
        operation: ops.Operation,
        agent: AgentId,
        trace: str | None,
        operator: bool,
        message: IFMessage | None,
    ) -> dict[str, Any]:
        """``operation`` carried out for ``agent``, its refusals as :class:`ServiceError`;
        ``message``: the signed request that asked for it (``None`` in process)."""
        self._operation.name = type(operation).__struct_config__.tag or "board"
        record = self.agent(agent)
        if record is None:
            raise ServiceError("NOT_ENROLLED", f"{agent} is not enrolled in this fabric", 403)
        if self.governor is not None:
            self.governor.seen(agent)
        try:
            with self.coordinator.traced(trace):
                return self._operate(operation, agent, record, operator, message)
        except (NotOwner, LeaseLost) as exc:
            raise ServiceError(
                "LEASE_LOST" if isinstance(exc, LeaseLost) else "NOT_OWNER", str(exc), 403
            ) from None
        except IllegalTransition as exc:
            raise ServiceError("ILLEGAL_TRANSITION", str(exc), 409) from None
        except TaskNotFound as exc:
            raise ServiceError("NOT_FOUND", str(exc), 404) from None
        except (InvalidTask, DependencyError) as exc:
            raise ServiceError("INVALID_TASK", str(exc), 422) from None
        except Busy as exc:
            raise ServiceError("BUSY", str(exc), 503) from None
        except StoreError as exc:
            raise ServiceError("STORE_UNAVAILABLE", str(exc), 503) from None

    def _invite(self, request: IFMessage, invited: Sequence[AgentId]) -> None:
        """Put the signed help request itself in the inbox of each agent it invites.

        The ``help.requested`` event reaches only agents following the board's events at
        that moment; an agent that was offline, or one that follows no events (an MCP
        client reads its inbox when it looks), would never hear of it. In the inbox the
        invitation waits until acknowledged, and it is the asker's own signed message:
        its receiver can check who asked, and nothing is signed on the asker's behalf.
        It is stored with the same commit as the event."""
        body = encode_json(request)
        for helper in invited:
            position = self.store.deliver(helper, request.id, body)
            self._emit_delivery(Delivery(helper, position, body))

    def _operate(
        self,
        operation: ops.Operation,
        agent: AgentId,
        record: AgentRecord,
        operator: bool,
        message: IFMessage | None,
    ) -> dict[str, Any]:
        board = self.coordinator
        match operation:
            case ops.Create(tasks=specs):
                return {
                    "tasks": [_task_json(t) for t in board.create([_task(s, agent) for s in specs])]
                }
            case ops.Claim(task_id=task_id):
                wanted = board.get(task_id)
                # (a task that is not available: the board says why, with its 409)
                if self.governor is not None and wanted.state is TaskState.AVAILABLE:
                    refusal = self.governor.admit(agent, wanted)
                    if refusal is not None:
                        raise ServiceError(refusal.code, refusal.reason, 403)
                elif wanted.state is TaskState.AVAILABLE and not qualifies(
                    wanted, record.capabilities
                ):
                    # without the governor, the board's own test, as claim_next makes it
                    missing = sorted(set(wanted.required_capabilities) - set(record.capabilities))
                    raise ServiceError(
                        "NOT_QUALIFIED", f"{agent} lacks {', '.join(missing)} for {task_id}", 403
                    )
                return {"task": _task_json(board.claim(task_id, agent))}
            case ops.ClaimNext():
                accept = None if self.governor is None else self.governor.accepting(agent)
                task = board.claim_next(agent, record.capabilities, accept=accept)
                return {"task": None if task is None else _task_json(task)}
            case ops.Heartbeat(task_id=task_id):
                return {"task": _task_json(board.heartbeat(task_id, agent))}
            case ops.Progress(task_id=task_id, percent=percent, note=note, usage=usage):
                task = board.progress(
                    task_id, agent, percent, note, usage=self._usage(agent, usage)
                )
                return {"task": _task_json(task)}
            case ops.Block(task_id=task_id) as block:
                blocker = Blocker(
                    type=block.type,
                    description=block.description,
                    needed_capabilities=tuple(block.needed_capabilities),
                    urgency=Urgency(block.urgency),
                )
                accept = None if self.governor is None else self.governor.accepting(agent)
                task, filler = board.block(
                    task_id, agent, blocker, record.capabilities, accept=accept
                )
                return {
                    "task": _task_json(task),
                    "filler": None if filler is None else _task_json(filler),
                }
            case ops.Unblock(task_id=task_id):
                return {"task": _task_json(board.unblock(task_id, agent))}
            case ops.Complete(task_id=task_id, result=result, usage=usage):
                task = board.complete(task_id, agent, result, usage=self._usage(agent, usage))
                return {"task": _task_json(task)}
            case ops.Fail(task_id=task_id, reason=reason, retry=retry, usage=usage):
                task = board.fail(
                    task_id, agent, reason, retry=retry, usage=self._usage(agent, usage)
                )
                return {"task": _task_json(task)}
            case ops.GiveUp(task_id=task_id):
                return {"task": _task_json(board.give_up(task_id, agent))}
            case ops.Help(task_id=task_id, needed=needed):
                if message is None:
                    raise ServiceError(
                        "UNSIGNED",
                        "a help request reaches the invited agents' inboxes as the asker's"
                        " own signed message: send it signed",
                        _STATUS_OF_REASON[Reason.UNSIGNED],
                    )
                agents = {a.id: a.capabilities for a in self.store.agents()}
                chosen = None
                if self.governor is not None:
                    chosen = self.governor.helpers(board.get(task_id), agent, needed)
                invited = board.request_help(task_id, agent, needed, agents, helpers=chosen)
                self._invite(message, invited)
                return {"invited": invited}
            case ops.Cancel(task_id=task_id, reason=reason):
                task = board.get(task_id)
                if task.creator != agent and not operator:
                    raise ServiceError(
                        "NOT_CREATOR",
                        f"only {task.creator} or an operator may cancel {task_id}",
                        403,
                    )
                return {"task": _task_json(board.cancel(task_id, agent, reason))}
        raise ServiceError(
            "INVALID_OPERATION", f"unknown operation {operation!r}", 422
        )  # pragma: no cover

    @contextlib.contextmanager
    def _announced_after_commit(self) -> Iterator[list[Callable[[], None]]]:
        """Hold this thread's announcements (board events, deliveries, topic messages)
        until the block ends without an error, which is after the commit inside it: no
        listener hears of a change that could still be rolled back. Each listener's
        failure is caught and logged."""
        held: list[Callable[[], None]] = []
        self._held.announcements = held
        try:
            yield held
        finally:
            self._held.announcements = None
        for announce in held:
            announce()

    def _usage(self, agent: AgentId, usage: ops.Usage | None) -> dict[str, Any] | None:
        if usage is None:
            return None
        reported: dict[str, Any] = msgspec.to_builtins(usage)
        return reported if self.governor is None else self.governor.priced(agent, reported)

    def _governor(self, message: IFMessage, key: KeyRecord | None) -> dict[str, Any]:
        if self.governor is None:
            raise ServiceError("UNKNOWN_SERVICE", "this fabric runs no governor", 404)
        operation = _request(message, _GOVERNOR_DECODER, "governor")
        if key is None or key.role is not KeyRole.OPERATOR:
            raise ServiceError(
                "NOT_OPERATOR",
                f"a reset needs a message from {message.sender} that passed every check,"
                " signed with an operator key",
                403,
            )
        try:
            self.governor.reset(operation.agent, message.sender)
        except CallerError as exc:
            raise ServiceError("NOT_FOUND", str(exc), 404) from None
        return {"reset": operation.agent}

    def _mesh(
        self, message: IFMessage, data: bytes, key: KeyRecord | None, now: Timestamp
    ) -> dict[str, Any]:
        """A mesh peer's report: its link events are witnessed (each a ``mesh`` event in
        the fabric's log), and the report itself is published on
        :data:`~infrafabric.ops.MESH_STATUS_TOPIC` for every server's mesh view. Only a
        message that passed every check (audit mode lets others through) may speak for
        its sender's links."""
        report = _request(message, _MESH_DECODER, "mesh")
        agent = message.sender
        if key is None:
            raise ServiceError(
                "NOT_VERIFIED", "a mesh report needs a message that passed every check", 403
            )
        if self.agent(agent) is None:
            raise ServiceError("NOT_ENROLLED", f"{agent} is not enrolled in this fabric", 403)
        events = [
            BoardEvent(
                component="mesh",
                kind=event.kind.removeprefix("mesh."),
                actor=agent,
                at=now,
                payload={
                    ("seen_at" if name == "at" else name): value
                    for name, value in msgspec.to_builtins(event).items()
                    if name != "kind" and value is not None
                },
                trace_id=message.trace_id if message.trace_id is not UNSET else None,
            )
            for event in report.events
        ]
        if events:
            self.coordinator.record(events)
        self._announce(self._listeners.topics, ops.MESH_STATUS_TOPIC, data)
        return {"recorded": len(events)}

    def keyring_document(self) -> dict[str, Any]:
        """Every key's public record, as a keyring file (read under the verifier's lock:
        messages being carried out may add keys meanwhile)."""
        with self._verify_lock:
            document: dict[str, Any] = msgspec.to_builtins(self.verifier.keyring.to_file())
        return document

    def _inbox(self, message: IFMessage, signed: bool) -> dict[str, Any]:
        """Acknowledge a direct message: it leaves the sender's own inbox, in the commit
        of the message's batch (a signed message, as every change an agent makes through a server is).
        Only with the sender's valid signature: audit and permissive modes accept a
        forged or unsigned one, and a message acknowledged is gone for good."""
        operation = _request(message, _INBOX_DECODER, "inbox")
        if not signed:
            raise ServiceError(
                "NOT_VERIFIED", "an acknowledgment needs its sender's valid signature", 403
            )
        return {"acknowledged": self.store.ack(message.sender, operation.position)}

    def _keys(self, message: IFMessage, key: KeyRecord | None, now: Timestamp) -> dict[str, Any]:
        """Lend a key (``delegate``) or take one back (``recall``): only with a message
        signed by the agent's own key that passed every check, so a delegated key can
        neither lend itself on nor outlive its term."""
        operation = _request(message, _KEYS_DECODER, "keys")
        agent = message.sender
        if key is None or key.role is KeyRole.DELEGATE:
            raise ServiceError(
                "NOT_OWN_KEY",
                f"only {agent}'s own key may lend or recall keys, in a message that passed every check",
                403,
            )
        if self.agent(agent) is None:
            raise ServiceError("NOT_ENROLLED", f"{agent} is not enrolled in this fabric", 403)
        keyring = self.verifier.keyring
        # Worked out on a copy of the key. A key lent is trusted (and its keyring file
        # written) only once the lending is witnessed, after this batch's commit: the
        # other way round, a crash or a failed commit left a lent key trusted that no
        # event recorded, after a refusal. A recall takes effect at once, before its event
        # (failing closed: a recall no event records harms nothing, a recall witnessed but
        # lost with its keyring file would trust the key again after a restart). Over
        # Redis the keys go first either way: the other servers read them when the event
        # reaches them.
        with self._verify_lock:
            if isinstance(operation, ops.Delegate):
                record = delegated_key(
                    agent, b64url_decode(operation.public_key), key, now, operation.seconds
                )
                known = keyring.get(record.kid)
                try:
                    record = Keyring([] if known is None else [known]).add(record)
                except KeyringError as exc:
                    raise ServiceError("KEY_CONFLICT", str(exc), 409) from None
                kind = "key.delegated"
            else:
                lent = keyring.get(operation.kid)
                if lent is None or lent.agent != agent or lent.role is not KeyRole.DELEGATE:
                    raise ServiceError("NOT_FOUND", f"{agent} lent no key {operation.kid}", 404)
                record = lent
                if lent.state is KeyState.ACTIVE:
                    record = Keyring([lent]).revoke(lent.kid, now)
                kind = "key.recalled"
        payload: dict[str, Any] = {"agent": agent, "kid": record.kid, "by": key.kid}
        if record.valid_until is not UNSET:
            payload["valid_until"] = record.valid_until
        first = self.store.shared or kind == "key.recalled"
        if first:
            self._trust(agent, record)
        self.coordinator.record(
            [BoardEvent(component="keys", kind=kind, actor=agent, at=now, payload=payload)]
        )
        if not first:
            self._after_commit(lambda: self._trust(agent, record))
        return {"key": msgspec.to_builtins(record)}

    def _trust(self, agent: AgentId, record: KeyRecord) -> None:
        """Trust ``record`` (a key lent, or its recall: the keyring keeps the further
        state), write the agent's keyring file and share it; once witnessed."""
        with self._verify_lock:
            self.verifier.keyring.add(record)
        if self.keys_changed is not None:
            self.keys_changed(agent)
        self.share_keys([agent])

    def _after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the batch this thread is in has committed (now if none);
        not at all if it rolls back. Its failure is logged: what committed stays."""

        def guarded() -> None:
            try:
                action()
            except Exception:
                _log.exception("after a commit, %r failed", action)

        held: list[Callable[[], None]] | None = getattr(self._held, "announcements", None)
        if held is None:
            guarded()
        else:
            held.append(guarded)

    def _witness_verdict(self, verdict: Verdict) -> None:
        """Audit mode: log every message that failed a check (accepted or not) as a
        ``verify`` event. What the sender claims is recorded as a claim, not as the actor:
        a forged message proves nothing about who sent it."""
        message = verdict.message
        payload: dict[str, Any] = {
            "reason": str(verdict.reason),
            "detail": verdict.detail[:500],
            "accepted": verdict.accepted,
        }
        if message is not None:
            payload |= {"message_id": message.id, "claimed_sender": message.sender}
        trace = None if message is None or message.trace_id is UNSET else message.trace_id
        event = BoardEvent(
            component="verify",
            kind="message.accepted_flagged" if verdict.accepted else "message.rejected",
            actor=None,
            at=self.coordinator.clock(),
            payload=payload,
            trace_id=trace,
        )
        self.coordinator.record([event])

    def _on_board_events(self, events: Sequence[BoardEvent]) -> None:
        self._announce(self._listeners.events, events)

    def _emit_delivery(self, delivery: Delivery) -> None:
        self._announce(self._listeners.deliveries, delivery)

    def _announce(self, listeners: Sequence[Callable[..., None]], *arguments: Any) -> None:
        """Tell ``listeners`` now, or after the commit of the batch this thread is in."""

        def announce() -> None:
            for listener in tuple(listeners):  # one may forget itself meanwhile
                try:  # one listener's trouble is not the others', nor the sender's
                    listener(*arguments)
                except Exception:
                    _log.exception("listener %r failed", listener)

        self._after_commit(announce)


def _request(message: IFMessage, decoder: msgspec.json.Decoder[T], service: str) -> T:
    """The operation a ``request`` to a service carries, or the refusal that fits."""
    if message.performative != "request":
        raise ServiceError("UNSUPPORTED_PERFORMATIVE", f"{service} operations are requests", 400)
    try:
        # through JSON: a typed decoder costs 0.2 us, ``msgspec.convert`` to a union 9 us
        # (it has no cached plan for a union); the checks are the same
        return decoder.decode(_CONTENT_ENCODER.encode(message.content))
    except msgspec.ValidationError as exc:
        raise ServiceError("INVALID_OPERATION", str(exc), 422) from None


def _operation_of(receivers: Sequence[str]) -> str:
    """The metrics' name for what a message to ``receivers`` asks (a board operation is
    named by its ``op`` once decoded)."""
    if len(receivers) == 1 and receivers[0].startswith("if://service/"):
        return receivers[0].removeprefix("if://service/")
    return "direct" if all(r.startswith("if://agent/") for r in receivers) else "topic"


def _replay(message: IFMessage) -> ServiceError:
    return ServiceError(
        str(Reason.REPLAY),
        f"nonce {message.nonce} of {message.sender} was used before",
        _STATUS_OF_REASON.get(Reason.REPLAY, 409),
    )


def _retryable(outcome: object) -> bool:
    """Whether a message's outcome left nothing done: its store failed, or it was refused
    with a 503."""
    return isinstance(outcome, StoreError) or (
        isinstance(outcome, ServiceError) and outcome.retryable
    )


#: The refusals the verifier reaches only after a signature verified (for an unsigned
#: message, permissive mode, too: hence the key is required beside them).
_SIGNATURE_HELD: Final = frozenset({None, Reason.REPLAY, Reason.OUT_OF_SEQUENCE})


def _accepted(verdict: Verdict, *, numbered: bool = True) -> IFMessage:
    if verdict.accepted and verdict.message is not None:
        return verdict.message
    reason = verdict.reason or Reason.MALFORMED
    status = _STATUS_OF_REASON.get(reason, 400)
    highest = verdict.highest if numbered else None
    raise ServiceError(str(reason), verdict.detail, status, highest=highest)


def _task(spec: ops.TaskSpec, creator: AgentId) -> Task:
    return Task(
        id=spec.id or f"task-{secrets.token_hex(6)}",
        title=spec.title,
        description=spec.description,
        required_capabilities=tuple(spec.required_capabilities),
        priority=spec.priority,
        dependencies=tuple(spec.dependencies),
        filler=spec.filler,
        max_attempts=spec.max_attempts or 0,  # 0: the board's config fills it in
        creator=creator,
    )


def _task_json(task: Task) -> dict[str, Any]:
    document: dict[str, Any] = msgspec.to_builtins(task)
    return document

"""The verification pipeline every incoming IFMessage goes through, whatever its transport.

Checks run cheapest first, replay state last, so a forged message can never touch the
nonce cache or a sequence window:

1. size and structure: ``TOO_LARGE``, ``MALFORMED``, ``UNSUPPORTED_VERSION``
2. clock: ``EXPIRED`` (``timestamp + ttl < now``), ``FROM_FUTURE`` (``timestamp > now + skew``)
3. key: ``UNKNOWN_KEY``, ``KEY_REVOKED``, ``KEY_EXPIRED`` (deprecated past its grace)
4. signature: ``UNSIGNED``, ``BAD_SIGNATURE``
5. replay: ``REPLAY`` (nonce or sequence number seen), ``OUT_OF_SEQUENCE`` (below the window)
6. authorization: ``UNAUTHORIZED``

:meth:`Verifier.check` never raises for any input bytes: it returns a :class:`Verdict`.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

from msgspec import UNSET

from infrafabric.errors import MessageError
from infrafabric.protocol.addresses import address_matches
from infrafabric.protocol.identity import verify_signature
from infrafabric.protocol.keyring import KeyRecord, Keyring
from infrafabric.protocol.message import IFMessage, decode_with_signing_input
from infrafabric.protocol.reasons import Reason
from infrafabric.protocol.replay import NonceCache, SequenceWindows
from infrafabric.types import Timestamp

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_MAX_BYTES",
    "AllowAll",
    "Authorizer",
    "Mode",
    "Rule",
    "RuleAuthorizer",
    "Verdict",
    "Verifier",
]

#: 64 KiB: far above any envelope an agent needs (content is for instructions and
#: results, not bulk data) and small enough that parsing cannot be used to exhaust memory.
DEFAULT_MAX_BYTES: Final = 64 * 1024
#: Clocks of agents on NTP agree within well under a second; 30 s tolerates a laptop
#: that just woke up without letting messages be pre-dated by much.
DEFAULT_CLOCK_SKEW: Final = 30.0


class Mode(StrEnum):
    STRICT = "strict"  # reject on any failed check
    PERMISSIVE = "permissive"  # also accept unsigned messages from local agents, with a reason
    AUDIT = "audit"  # accept every message that parses; report each would-be rejection


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one check.

    ``accepted`` says whether to act on ``message``. ``reason`` is the first check that
    failed, or ``None`` when all passed; in permissive and audit modes a message can be
    accepted *with* a reason, which the caller should log (or witness).
    """

    accepted: bool
    reason: Reason | None
    detail: str
    message: IFMessage | None
    key: KeyRecord | None = None
    #: refused for its sequence number alone (a number the sender's window no longer
    #: takes, under a nonce known to be fresh): the highest number accepted from the
    #: sender, so that a sender with several clients may number past it. ``None``
    #: otherwise, and for anything that may be a replay of the very bytes: a nonce seen,
    #: or one the cache cannot vouch for (:meth:`NonceCache.vouches_for`: a message of a
    #: sender whose window was restored, dated before the restart, or one as old as an
    #: evicted entry), which must not be answered so: a client would sign it anew.
    highest: int | None = None

    @property
    def ok(self) -> bool:
        """Accepted with every check passed."""
        return self.accepted and self.reason is None


class Authorizer(Protocol):
    """Decides whether a verified sender may send this message (step 6)."""

    def authorize(self, message: IFMessage) -> str | None:
        """``None`` to allow, or a short reason for the refusal."""


class AllowAll:
    """Every verified sender may send anything (the default until policies exist)."""

    def authorize(self, message: IFMessage) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class Rule:
    """Senders matching ``sender`` may use ``performatives`` (``None``: any) towards
    receivers that each match one of ``receivers``. Patterns match segment by segment
    (:func:`~infrafabric.protocol.addresses.address_matches`): ``*`` is one segment,
    ``**`` any number."""

    sender: str
    performatives: frozenset[str] | None = None
    receivers: tuple[str, ...] = ("**",)

    def allows(self, message: IFMessage) -> bool:
        if not address_matches(self.sender, message.sender):
            return False
        if self.performatives is not None and message.performative not in self.performatives:
            return False
        return all(
            any(address_matches(pattern, receiver) for pattern in self.receivers)
            for receiver in message.receivers
        )


class RuleAuthorizer:
    """Allow a message when some rule allows it; deny everything else."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)

    def authorize(self, message: IFMessage) -> str | None:
        if any(rule.allows(message) for rule in self.rules):
            return None
        return f"no rule lets {message.sender} send {message.performative} to {message.receiver}"


class Verifier:
    """Runs the pipeline against a keyring, holding the replay state of one receiver.

    Not thread-safe: give each event loop or worker its own, or guard it.
    ``on_reject`` is called with every verdict that has a reason, accepted or not
    (audit mode records those in the witness).
    """

    def __init__(
        self,
        keyring: Keyring,
        *,
        mode: Mode = Mode.STRICT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        authorizer: Authorizer | None = None,
        nonces: NonceCache | None = None,
        sequences: SequenceWindows | None = None,
        on_reject: Callable[[Verdict], None] | None = None,
    ) -> None:
        self.keyring = keyring
        self.mode = Mode(mode)
        self.max_bytes = max_bytes
        self.clock_skew = clock_skew
        self.authorizer: Authorizer = authorizer or AllowAll()
        self.nonces = NonceCache() if nonces is None else nonces
        self.sequences = SequenceWindows() if sequences is None else sequences
        self.on_reject = on_reject
        #: verdicts by reason (``None`` for clean accepts), for metrics
        self.counts: Counter[Reason | None] = Counter()

    def check(
        self, data: bytes | bytearray | memoryview | str, *, now: Timestamp, local: bool = False
    ) -> Verdict:
        """Verify one wire message received at ``now`` (POSIX seconds).

        ``local`` tells whether the sender is connected from this host (in-process, Unix
        socket or loopback); only permissive mode uses it.
        """
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
        if len(raw) > self.max_bytes:
            return self._finish(Reason.TOO_LARGE, f"{len(raw)} bytes > {self.max_bytes}", None)
        try:
            message, signed_bytes = decode_with_signing_input(raw)
        except MessageError as exc:
            return self._finish(Reason(exc.reason), exc.detail, None)
        sent_at = message.sent_at
        reason, detail = self._check_clock(sent_at, message.ttl, now)
        if reason is not None:
            return self._finish(reason, detail, message)
        if message.signature is UNSET:
            return self._unsigned(message, sent_at, now, local)
        resolution = self.keyring.resolve(message.sender, message.signature.kid, now)
        if resolution.verify_key is None:
            reason = resolution.reason or Reason.UNKNOWN_KEY
            return self._finish(reason, resolution.detail, message, resolution.record)
        # The schema admits only the canonical 86-character spelling, so a plain decode will do.
        signature = base64.urlsafe_b64decode(message.signature.sig + "==")
        if not verify_signature(resolution.verify_key, signed_bytes, signature):
            return self._finish(
                Reason.BAD_SIGNATURE, "signature does not verify", message, resolution.record
            )
        reason, detail, highest = self._check_replay(message, sent_at, now, record=True)
        if reason is None:
            refusal = self.authorizer.authorize(message)
            if refusal is not None:
                reason, detail = Reason.UNAUTHORIZED, refusal
        return self._finish(
            reason, detail or resolution.detail, message, resolution.record, highest=highest
        )

    def forget(self, message: IFMessage) -> None:
        """Take back what :meth:`check` recorded of ``message`` (its nonce and sequence
        number): it was never carried out, its store having failed, and the sender may send
        the same bytes again. Harmless for a message that recorded nothing."""
        self.nonces.forget(message.sender, message.nonce)
        self.sequences.forget(message.sender, message.sequence_num)

    def _check_clock(
        self, sent_at: Timestamp, ttl: int, now: Timestamp
    ) -> tuple[Reason | None, str]:
        if sent_at + ttl < now:
            return Reason.EXPIRED, f"expired {now - sent_at - ttl:.3f}s ago"
        if sent_at > now + self.clock_skew:
            return Reason.FROM_FUTURE, f"dated {sent_at - now:.3f}s ahead (skew {self.clock_skew}s)"
        return None, ""

    def _check_replay(
        self, message: IFMessage, sent_at: Timestamp, now: Timestamp, *, record: bool
    ) -> tuple[Reason | None, str, int | None]:
        """A replay's reason and detail, and the sender's highest number when the number
        alone was refused (see :attr:`Verdict.highest`)."""
        sender = message.sender
        if self.nonces.seen(sender, message.nonce, now):
            return Reason.REPLAY, f"nonce {message.nonce} already used", None
        number = message.sequence_num
        if not self.sequences.would_accept(sender, number):
            highest = self.sequences.highest(sender)
            # Only a message whose nonce the cache would know, had it been accepted, is
            # known to be fresh: one sent before a restart, or as old as an evicted entry,
            # may be the very bytes accepted then, and must not be answered with a highest
            # (a client would sign that operation anew).
            fresh = highest if self.nonces.vouches_for(sender, sent_at) else None
            if number > highest - self.sequences.window:
                return (
                    Reason.REPLAY,
                    f"sequence {number} already accepted (highest {highest})",
                    fresh,
                )
            return Reason.OUT_OF_SEQUENCE, f"sequence {number} too old (highest {highest})", fresh
        if record:
            self.nonces.add(sender, message.nonce, sent_at + message.ttl, now)
            self.sequences.accept(sender, number)
        return None, "", None

    def _unsigned(
        self, message: IFMessage, sent_at: Timestamp, now: Timestamp, local: bool
    ) -> Verdict:
        """An unsigned message: rejected in strict mode; in permissive mode accepted from a
        local sender. Unsigned messages are checked against, never recorded in, replay state:
        anyone could have written them."""
        if self.mode is Mode.PERMISSIVE and local:
            # (no highest for an unsigned message: anyone could have written it)
            reason, detail, _ = self._check_replay(message, sent_at, now, record=False)
            if reason is None:
                refusal = self.authorizer.authorize(message)
                if refusal is not None:
                    reason, detail = Reason.UNAUTHORIZED, refusal
            if reason is not None:
                return self._finish(reason, detail, message)
            return self._finish(
                Reason.UNSIGNED, "unsigned, accepted from a local sender", message, lenient=True
            )
        return self._finish(Reason.UNSIGNED, "message carries no signature", message)

    def _finish(
        self,
        reason: Reason | None,
        detail: str,
        message: IFMessage | None,
        key: KeyRecord | None = None,
        *,
        lenient: bool = False,
        highest: int | None = None,
    ) -> Verdict:
        accepted = reason is None or lenient or (self.mode is Mode.AUDIT and message is not None)
        verdict = Verdict(accepted, reason, detail, message, key, highest)
        self.counts[reason] += 1
        if reason is not None and self.on_reject is not None:
            self.on_reject(verdict)
        return verdict

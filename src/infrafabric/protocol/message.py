"""IFMessage v2.1: the one signed envelope every agent message travels in.

An :class:`IFMessage` is a frozen, validated value. Whatever path creates one
(keyword construction, :func:`build_message`, :func:`decode_json`, ``msgspec.convert``)
checks every field against the same rules as ``schemas/ifmessage-2.1.json``; an invalid
value never exists. (The ``content`` dict is the sender's payload and is not deep-frozen:
treat it as read-only.)

Optional fields are *absent* rather than ``null`` (``msgspec.UNSET``) and no field has a
default on the wire, so decoding and re-encoding an envelope keeps exactly the members the
sender signed; :func:`build_message` is where defaults live. The bytes that are
signed and verified come from one function, :func:`signing_input`.
"""

from __future__ import annotations

import contextvars
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from infrafabric.errors import CanonicalizationError, MessageError
from infrafabric.protocol.canonical import MAX_SAFE_INTEGER, canonical_json, canonical_json_of_data
from infrafabric.protocol.patterns import (
    ADDRESS_PATTERN,
    AgentField,
    ConversationField,
    HazardTypeField,
    KidField,
    NonceField,
    SignatureField,
    TimestampField,
    TokenField,
    compiled,
)
from infrafabric.protocol.timefmt import format_timestamp, parse_timestamp
from infrafabric.types import Address, AgentId, Timestamp

__all__ = [
    "DEFAULT_TTL",
    "MAX_TTL",
    "PERFORMATIVES",
    "SIGNING_PREFIX",
    "VERSION",
    "Hazard",
    "IFMessage",
    "Performative",
    "Priority",
    "Provenance",
    "Scope",
    "Severity",
    "Signature",
    "agent_id",
    "body_builtins",
    "build_message",
    "decode_json",
    "decode_msgpack",
    "encode_json",
    "encode_msgpack",
    "new_conversation_id",
    "new_message_id",
    "new_nonce",
    "signing_input",
]

VERSION: Final = "2.1"
#: Domain separation: these bytes precede the canonical JSON in every signing input, so
#: an IFMessage signature can never be replayed as a signature over anything else.
SIGNING_PREFIX: Final = b"IFMessage-v2.1-signature\n"
DEFAULT_TTL: Final = 300
MAX_TTL: Final = 3600

Performative: TypeAlias = Literal[
    # the v2.1 speech acts
    "request",
    "inform",
    "agree",
    "refuse",
    "query-if",
    "query-ref",
    "contradict",
    "escalate",
    "share",
    "hold",
    # what task negotiation adds
    "propose",
    "accept",
    "reject",
    "failure",
    "cancel",
]
PERFORMATIVES: Final[frozenset[str]] = frozenset(Performative.__args__)  # type: ignore[attr-defined]
Priority: TypeAlias = Literal["low", "medium", "high", "critical"]
Severity: TypeAlias = Literal["low", "medium", "high", "critical"]

_ADDRESS = compiled(ADDRESS_PATTERN)

TextField = Annotated[str, Meta(min_length=1, max_length=128)]
SafeCount = Annotated[int, Meta(ge=0, le=MAX_SAFE_INTEGER)]


# While set, __post_init__ trusts the value: msgspec itself is validating it (decode or
# convert), or this module is re-validating a value built with keyword arguments.
_VALIDATING: contextvars.ContextVar[bool] = contextvars.ContextVar("_VALIDATING", default=False)


class _Frozen(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the envelope's parts: immutable, no unknown members, validated however made.

    msgspec validates what it decodes or converts, but not keyword construction; this
    runs the same validation then, so ``Scope(priority="urgent")`` fails as decoding would.
    """

    def __post_init__(self) -> None:
        if _VALIDATING.get():
            return
        token = _VALIDATING.set(True)
        try:
            msgspec.convert(msgspec.to_builtins(self), type(self))
        except msgspec.ValidationError as exc:
            raise MessageError(str(exc)) from None
        finally:
            _VALIDATING.reset(token)


class Scope(_Frozen, frozen=True):
    """Where a message belongs: mission, workflow, domain, and how urgent it is."""

    priority: Priority
    mission_id: TextField | UnsetType = UNSET
    workflow: TextField | UnsetType = UNSET
    domain: TextField | UnsetType = UNSET


class Hazard(_Frozen, frozen=True):
    """A declared hazard; ``auto_escalate`` escalates whatever the confidence."""

    type: HazardTypeField
    severity: Severity
    auto_escalate: bool
    rationale: Annotated[str, Meta(max_length=2000)] | UnsetType = UNSET


class Provenance(_Frozen, frozen=True):
    """What produced the content, and what it cost."""

    model: TextField
    tokens_in: SafeCount | UnsetType = UNSET
    tokens_out: SafeCount | UnsetType = UNSET
    # Finite: JSON has no infinity, and msgspec would write one as null.
    cost_usd: Annotated[float, Meta(ge=0, le=1e15)] | UnsetType = UNSET


class Signature(_Frozen, frozen=True):
    """An Ed25519 signature (RFC 8032) over :func:`signing_input`, base64url without padding."""

    alg: Literal["ed25519"]
    kid: KidField
    sig: SignatureField


class IFMessage(_Frozen, frozen=True):
    """The IFMessage v2.1 envelope (see ``docs/protocol.md``)."""

    v: Literal["2.1"]
    id: TokenField
    performative: Performative
    sender: AgentField
    # Addresses are checked in __post_init__: msgspec 0.19-0.22 double-frees at interpreter
    # exit when a union puts a pattern-constrained str beside an array.
    receiver: str | Annotated[tuple[str, ...], Meta(min_length=1, max_length=64)]
    conversation_id: ConversationField
    content: dict[str, Any]
    timestamp: TimestampField
    sequence_num: Annotated[int, Meta(ge=1, le=MAX_SAFE_INTEGER)]
    nonce: NonceField
    ttl: Annotated[int, Meta(ge=1, le=MAX_TTL)]
    scope: Scope
    hazard: Hazard | UnsetType = UNSET
    trace_id: TokenField | UnsetType = UNSET
    provenance: Provenance | UnsetType = UNSET
    citation_ids: Annotated[tuple[TokenField, ...], Meta(max_length=64)] | UnsetType = UNSET
    signature: Signature | UnsetType = UNSET

    def __post_init__(self) -> None:
        if _VALIDATING.get():
            _check_semantics(self)
            return
        token = _VALIDATING.set(True)
        try:
            msgspec.convert(msgspec.to_builtins(self), IFMessage)
            canonical_json(body_builtins(self))  # signable as a whole, not just JSON-ish
        except msgspec.ValidationError as exc:
            raise MessageError(str(exc)) from None
        except CanonicalizationError as exc:
            raise MessageError(f"content has no canonical form: {exc}") from None
        except RecursionError:
            raise MessageError("content nesting too deep") from None
        except TypeError as exc:  # to_builtins meets a value JSON does not have
            raise MessageError(f"content is not JSON: {exc}") from None
        finally:
            _VALIDATING.reset(token)

    @property
    def sent_at(self) -> Timestamp:
        """POSIX time of ``timestamp``."""
        return parse_timestamp(self.timestamp)

    @property
    def expires_at(self) -> Timestamp:
        """POSIX time after which the message is expired (``timestamp + ttl``)."""
        return parse_timestamp(self.timestamp) + self.ttl

    @property
    def receivers(self) -> tuple[Address, ...]:
        """``receiver`` as a tuple, whether one address or several were given."""
        return (self.receiver,) if isinstance(self.receiver, str) else self.receiver

    @property
    def is_signed(self) -> bool:
        return self.signature is not UNSET


def _check_semantics(message: IFMessage) -> None:
    """What msgspec's constraints cannot say: receiver addresses, a real calendar date."""
    receiver = message.receiver
    for address in (receiver,) if isinstance(receiver, str) else receiver:
        if _ADDRESS.match(address) is None:
            raise ValueError(f"receiver {address[:80]!r} is not an if:// agent, service or topic")
    parse_timestamp(message.timestamp)  # ValueError for February 30 and such


def agent_id(name: str) -> AgentId:
    """``if://agent/<name>``; raises :class:`MessageError` if the name is not allowed."""
    address = f"if://agent/{name}"
    try:
        msgspec.convert(address, AgentField)
    except msgspec.ValidationError:
        raise MessageError(
            f"agent name {name!r} must be 1-64 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        ) from None
    return address


_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Every two-character Crockford base32 string, by the 10 bits it spells: an id is 13
#: lookups instead of 26 (two are made per message sent).
_CROCKFORD_PAIRS: Final = tuple(high + low for high in _CROCKFORD for low in _CROCKFORD)
_PAIR_SHIFTS: Final = tuple(range(120, -1, -10))


def new_message_id() -> str:
    """A fresh message id: 48 bits of milliseconds then 80 random bits, Crockford base32
    (26 characters, the first one spelling the top 3 bits of the 128)."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    pairs = _CROCKFORD_PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def new_nonce() -> str:
    """96 random bits as 24 lowercase hex digits."""
    return secrets.token_hex(12)


def new_conversation_id() -> str:
    return f"if://conversation/{new_message_id()}"


_CONTENT_ENCODER = msgspec.json.Encoder()
_CONTENT_DECODER = msgspec.json.Decoder(dict[str, Any])


def content_copy(content: Mapping[str, Any]) -> dict[str, Any]:
    """A fresh deep copy of ``content`` as plain JSON data (tuples become lists).

    The copy makes the envelope independent of the caller's dict (mutating it after
    signing cannot change what the message says) and lets signing take the fast
    canonical path. Raises :class:`MessageError` when ``content`` has no canonical form.
    """
    try:
        copy = _CONTENT_DECODER.decode(_CONTENT_ENCODER.encode(content))
    except (TypeError, ValueError, RecursionError, msgspec.DecodeError):
        copy = None
    try:
        if copy is None or copy != content:
            # Not plain JSON data (tuples, enums; or NaN, non-string keys, objects that
            # msgspec writes as text): the exact canonicalizer accepts or refuses it.
            copy = _CONTENT_DECODER.decode(canonical_json(content))
        # integers beyond 2**53; nesting deeper than 64 counting the envelope around it
        canonical_json_of_data({"content": copy})
    except CanonicalizationError as exc:
        raise MessageError(f"content has no canonical form: {exc}") from None
    return copy


def build_message(
    *,
    performative: Performative,
    sender: AgentId,
    receiver: Address | Sequence[Address],
    content: Mapping[str, Any],
    now: Timestamp,
    sequence_num: int,
    ttl: int = DEFAULT_TTL,
    scope: Scope | None = None,
    conversation_id: str | None = None,
    hazard: Hazard | None = None,
    trace_id: str | None = None,
    provenance: Provenance | None = None,
    citation_ids: Sequence[str] | None = None,
    message_id: str | None = None,
    nonce: str | None = None,
) -> IFMessage:
    """Build an unsigned, validated envelope; fresh id, nonce and conversation by default.

    ``now`` is the send time (POSIX seconds). ``content`` is copied as plain JSON data
    (see :func:`content_copy`). Raises
    :class:`MessageError` on any invalid field. Sign the result with
    :meth:`~infrafabric.protocol.identity.SigningIdentity.sign`.
    """
    fields: dict[str, Any] = {
        "v": VERSION,
        "id": message_id or new_message_id(),
        "performative": performative,
        "sender": sender,
        "receiver": receiver if isinstance(receiver, str) else tuple(receiver),
        "conversation_id": conversation_id or new_conversation_id(),
        "content": content_copy(content),
        "timestamp": format_timestamp(now),
        "sequence_num": sequence_num,
        "nonce": nonce or new_nonce(),
        "ttl": ttl,
        "scope": scope or Scope(priority="medium"),
    }
    optional = {"hazard": hazard, "trace_id": trace_id, "provenance": provenance}
    fields.update((name, value) for name, value in optional.items() if value is not None)
    if citation_ids is not None:
        fields["citation_ids"] = tuple(citation_ids)
    token = _VALIDATING.set(True)  # content is checked above; msgspec checks the rest
    try:
        return msgspec.convert(fields, IFMessage)
    except msgspec.ValidationError as exc:
        raise MessageError(str(exc)) from None
    finally:
        _VALIDATING.reset(token)


def signed_copy(message: IFMessage, *, kid: str, sig: str) -> IFMessage:
    """``message`` carrying an Ed25519 signature this process has just made over it
    (``kid`` and ``sig`` as :class:`Signature` has them). Not validated a second time:
    the message was when it was made, and a key id and a base64url signature made by
    :mod:`~infrafabric.protocol.identity` have the schema's form. Re-validating both
    took about a fifth of what the SDK spends to send a message (20 of 94 us)."""
    token = _VALIDATING.set(True)
    try:
        return msgspec.structs.replace(
            message, signature=Signature(alg="ed25519", kid=kid, sig=sig)
        )
    finally:
        _VALIDATING.reset(token)


_OPTIONAL_FIELDS: Final = ("hazard", "trace_id", "provenance", "citation_ids")
_NESTED_STRUCTS: Final = ("scope", "hazard", "provenance")


def body_builtins(message: IFMessage) -> dict[str, Any]:
    """The envelope as plain JSON values, without ``signature``: what gets canonicalized.

    ``content`` is passed through as it is, not copied: the canonicalizer bounds its
    depth with a clear error, where a recursive copy could exhaust the stack first.
    """
    body: dict[str, Any] = msgspec.structs.asdict(message)  # shallow
    del body["signature"]
    for name in _OPTIONAL_FIELDS:
        if body[name] is UNSET:
            del body[name]
    for name in _NESTED_STRUCTS:
        if name in body:
            body[name] = msgspec.to_builtins(body[name])
    return body


def signing_input(message: IFMessage) -> bytes:
    """The exact bytes an IFMessage signature covers.

    ``SIGNING_PREFIX`` followed by the RFC 8785 canonical JSON of the envelope without its
    ``signature`` member. Raises :class:`MessageError` if the content has no canonical
    form (a non-finite float, an integer beyond 2**53, nesting deeper than 64).
    """
    try:
        return SIGNING_PREFIX + canonical_json_of_data(body_builtins(message))
    except CanonicalizationError as exc:
        raise MessageError(f"content has no canonical form: {exc}") from None


_JSON_ENCODER = msgspec.json.Encoder()
_MSGPACK_ENCODER = msgspec.msgpack.Encoder()


_JSON_DECODER = msgspec.json.Decoder(IFMessage)
_MSGPACK_DECODER = msgspec.msgpack.Decoder(IFMessage)


def encode_json(message: IFMessage) -> bytes:
    """Compact JSON for the wire (field order fixed, not canonical: only signing needs that)."""
    return _JSON_ENCODER.encode(message)


def encode_msgpack(message: IFMessage) -> bytes:
    """MessagePack, for compact storage; the signature still covers canonical JSON."""
    return _MSGPACK_ENCODER.encode(message)


def decode_json(data: bytes | str) -> IFMessage:
    """Decode and validate one JSON envelope; raises :class:`MessageError` (``MALFORMED``,
    ``UNSUPPORTED_VERSION``) naming the first offending member.

    This checks structure only. Whether to *trust* a message is
    :meth:`~infrafabric.protocol.verify.Verifier.check`'s job.
    """
    return decode_with_signing_input(data.encode() if isinstance(data, str) else data)[0]


def decode_msgpack(data: bytes) -> IFMessage:
    """Decode and validate one MessagePack envelope; raises :class:`MessageError`."""
    token = _VALIDATING.set(True)
    try:
        message = _MSGPACK_DECODER.decode(data)
        canonical_json(body_builtins(message))  # MessagePack, unlike JSON, can carry NaN
        return message
    except CanonicalizationError as exc:
        raise MessageError(f"content has no canonical form: {exc}") from None
    except msgspec.ValidationError as exc:
        raise MessageError(str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MessageError(f"not MessagePack: {exc}") from None
    except RecursionError:
        raise MessageError("nesting too deep") from None
    finally:
        _VALIDATING.reset(token)


def decode_with_signing_input(data: bytes) -> tuple[IFMessage, bytes]:
    """Decode a JSON envelope and compute its signing input, rejecting what I-JSON forbids.

    Besides the schema, an envelope must be I-JSON (RFC 7493): no duplicate member names
    (a parser keeping the first duplicate would read different content than the one the
    signature covers), integers exactly representable as doubles, finite numbers.
    """
    token = _VALIDATING.set(True)
    try:
        message = _JSON_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise _structure_error(data, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise MessageError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise MessageError("nesting too deep") from None
    finally:
        _VALIDATING.reset(token)
    try:
        canonical = canonical_json_of_data(body_builtins(message))
    except CanonicalizationError as exc:
        raise MessageError(f"content has no canonical form: {exc}") from None
    if _has_duplicate_names(data, canonical, message):
        raise MessageError("duplicate member name (I-JSON, RFC 7493 section 2.3)")
    return message, SIGNING_PREFIX + canonical


def _structure_error(data: bytes, detail: str) -> MessageError:
    """Say UNSUPPORTED_VERSION when the envelope is otherwise readable but not version 2.1."""
    if "$.v" in detail:
        try:
            version = msgspec.json.decode(data).get("v")
        except (msgspec.DecodeError, AttributeError, UnicodeDecodeError, RecursionError):
            version = None
        if isinstance(version, str):
            return MessageError(
                f"version {version[:16]!r} is not 2.1", reason="UNSUPPORTED_VERSION"
            )
    return MessageError(detail)


# "signature":{"alg":..,"kid":..,"sig":..}: four members; the patterns of alg, kid and sig
# admit no colon.
_SIGNATURE_COLONS: Final = 4


def _has_duplicate_names(raw: bytes, canonical_body: bytes, message: IFMessage) -> bool:
    """True if ``raw`` repeats a member name somewhere, in about a microsecond.

    Each member of a JSON object contributes exactly one ``:`` outside strings; a colon
    inside a string is either literal or escaped as ``\\u003a``. With no escaped colons in
    ``raw``, every string of the parsed value keeps its colons in the canonical form, so
    ``raw`` has as many colons as the canonical body plus the signature member exactly when
    nothing was dropped, and more when a duplicate was. Escaped colons (rare) take the
    exact path: a full parse that sees every member.
    """
    if b"\\u003" in raw and (b"\\u003a" in raw or b"\\u003A" in raw):
        return _has_duplicate_names_exact(raw)
    expected = canonical_body.count(b":")
    if message.signature is not UNSET:
        expected += _SIGNATURE_COLONS
    return raw.count(b":") != expected


def _has_duplicate_names_exact(raw: bytes) -> bool:
    import json  # the slow, exact path; json sees every member before a dict drops one

    duplicate = False

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal duplicate
        result = dict(pairs)
        duplicate = duplicate or len(result) != len(pairs)
        return result

    try:
        json.loads(raw, object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError):
        return True  # msgspec read it, json cannot: refuse rather than guess
    return duplicate

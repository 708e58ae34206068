"""What a client sends, read with a bound and decoded into a shape: every failure is a
typed refusal (:class:`~infrafabric.service.ServiceError`), never a 500 or an unbounded
read. The REST routes, the dashboard's login and the WebSocket's frames all use it."""

from __future__ import annotations

from typing import Any, Final, TypeVar

import msgspec
from starlette.requests import Request

from infrafabric.protocol.verify import DEFAULT_MAX_BYTES
from infrafabric.service import ServiceError

__all__ = ["MAX_BODY", "decode", "json_body", "loads", "read_body"]

#: The largest request body read: a signed message (its own limit), or an enrollment
#: with a keyring document.
MAX_BODY: Final = DEFAULT_MAX_BYTES

T = TypeVar("T")


async def read_body(request: Request, most: int = MAX_BODY) -> bytes:
    """The body, refused with 413 ``TOO_LARGE`` as soon as it is known to exceed
    ``most`` bytes: from its declared length before reading, or while reading."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > most:
        raise ServiceError("TOO_LARGE", f"body of {declared} bytes > {most}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > most:
            raise ServiceError("TOO_LARGE", f"body larger than {most} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def decode(data: bytes | str, shape: type[T], what: str = "body") -> T:
    """``data`` as JSON of ``shape``; 400 ``MALFORMED`` naming the fault otherwise.
    (A document nested thousands deep makes msgspec raise ``RecursionError``, even where
    the shape skips the value unread, as ``msgspec.Raw`` does: refused like any other.)"""
    try:
        return msgspec.json.decode(data, type=shape)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ServiceError("MALFORMED", f"not a {what}: {exc}", 400) from None
    except RecursionError:
        raise ServiceError("MALFORMED", f"not a {what}: nested too deep", 400) from None


async def json_body(request: Request, shape: type[T]) -> T:
    return decode(await read_body(request), shape)


def loads(data: bytes | str) -> Any:
    """Any JSON value, or ``None`` if ``data`` is not JSON (nested too deep included)."""
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None

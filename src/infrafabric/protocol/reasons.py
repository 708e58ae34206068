"""Reason codes of the verification pipeline, in the order its checks run."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Reason"]


class Reason(StrEnum):
    """Why a message was (or, in audit mode, would have been) rejected.

    The value is the stable wire/CLI spelling; see ``docs/protocol.md`` for each code.
    """

    # 1. size and structure
    TOO_LARGE = "TOO_LARGE"
    MALFORMED = "MALFORMED"
    UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
    # 2. clock
    EXPIRED = "EXPIRED"
    FROM_FUTURE = "FROM_FUTURE"
    # 3. key
    UNKNOWN_KEY = "UNKNOWN_KEY"
    KEY_REVOKED = "KEY_REVOKED"
    KEY_EXPIRED = "KEY_EXPIRED"
    # 4. signature
    UNSIGNED = "UNSIGNED"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    # 5. replay
    REPLAY = "REPLAY"
    OUT_OF_SEQUENCE = "OUT_OF_SEQUENCE"
    # 6. authorization
    UNAUTHORIZED = "UNAUTHORIZED"

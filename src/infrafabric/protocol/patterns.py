"""The text patterns of IFMessage and keyring fields, written once.

Each ``*_PATTERN`` is an ECMA-262 regular expression exactly as
``schemas/ifmessage-2.1.json`` publishes it (a test checks they agree). The ``*Field``
types apply them through msgspec, which runs Python's ``re``; there ``$`` also matches
before a final newline, so :func:`python_pattern` anchors with ``\\Z`` instead and
``"if://agent/alice\\n"`` is refused as it is by every JSON Schema validator.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from msgspec import Meta

__all__ = [
    "ADDRESS_PATTERN",
    "AGENT_PATTERN",
    "CONVERSATION_PATTERN",
    "HAZARD_TYPE_PATTERN",
    "KID_PATTERN",
    "NONCE_PATTERN",
    "PUBLIC_KEY_PATTERN",
    "SIGNATURE_PATTERN",
    "TIMESTAMP_PATTERN",
    "TOKEN_PATTERN",
    "python_pattern",
]

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_SEGMENT = r"(?:[A-Za-z0-9._-]{1,64}|\*|\*\*)"
_TOKEN = r"[\x21-\x7e]{1,128}"  # noqa: S105 - a pattern: 1-128 printable ASCII, no spaces

AGENT_PATTERN: Final = rf"^if://agent/{_NAME}$"
#: an agent, a fabric service, or a topic of up to 16 segments (``*``: one, ``**``: any)
ADDRESS_PATTERN: Final = (
    rf"^if://(?:agent/{_NAME}|service/{_NAME}|topic/{_SEGMENT}(?:/{_SEGMENT}){{0,15}})$"
)
CONVERSATION_PATTERN: Final = rf"^if://conversation/{_TOKEN}$"
TOKEN_PATTERN: Final = rf"^{_TOKEN}$"
TIMESTAMP_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z$"
)
NONCE_PATTERN: Final = r"^[0-9a-f]{24}$"
HAZARD_TYPE_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]{0,63}$"
#: 16 base64url characters: the first 96 bits of SHA-256 of the public key
KID_PATTERN: Final = r"^[A-Za-z0-9_-]{16}$"
#: 32 bytes in unpadded base64url
PUBLIC_KEY_PATTERN: Final = r"^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$"
#: 64 bytes in unpadded base64url; the last character carries 2 bits, so only the
#: canonical spelling of a signature is accepted
SIGNATURE_PATTERN: Final = r"^[A-Za-z0-9_-]{85}[AQgw]$"


def python_pattern(pattern: str) -> str:
    """``pattern`` with its final ``$`` made ``\\Z``, for Python's ``re`` (and msgspec)."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern


def compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(python_pattern(pattern))


AgentField = Annotated[str, Meta(pattern=python_pattern(AGENT_PATTERN))]
ConversationField = Annotated[str, Meta(pattern=python_pattern(CONVERSATION_PATTERN))]
TokenField = Annotated[str, Meta(pattern=python_pattern(TOKEN_PATTERN))]
TimestampField = Annotated[str, Meta(pattern=python_pattern(TIMESTAMP_PATTERN))]
NonceField = Annotated[str, Meta(pattern=python_pattern(NONCE_PATTERN))]
HazardTypeField = Annotated[str, Meta(pattern=python_pattern(HAZARD_TYPE_PATTERN))]
KidField = Annotated[str, Meta(pattern=python_pattern(KID_PATTERN))]
PublicKeyField = Annotated[str, Meta(pattern=python_pattern(PUBLIC_KEY_PATTERN))]
SignatureField = Annotated[str, Meta(pattern=python_pattern(SIGNATURE_PATTERN))]

"""The bearer token of ``/mcp``: a key an agent lent, written as text. Pure.

``ifab mcp token`` makes a fresh Ed25519 key pair, lends it for a while with a message
signed by the agent's own key (see :class:`~infrafabric.ops.Delegate`), and prints::

    ifmcp1.<agent name, base64url>.<the lent key's 32-byte seed, base64url>

The server keeps only the public half (in its keyring, with the term), so a token is
checked like any key: unknown, recalled or past its term, it is refused. Whoever holds
the token acts as the agent until then: keep it like a password.
"""

from __future__ import annotations

import binascii
import re
from typing import Final

from infrafabric.errors import CallerError, FabricError
from infrafabric.protocol.identity import SigningIdentity, b64url_decode, b64url_encode
from infrafabric.protocol.message import agent_id
from infrafabric.types import AgentId

__all__ = ["PREFIX", "TokenError", "format_token", "parse_token"]

PREFIX: Final = "ifmcp1"
_SHAPE: Final = re.compile(r"^ifmcp1\.([A-Za-z0-9_-]{1,200})\.([A-Za-z0-9_-]{43})\Z")


class TokenError(CallerError):
    """Not a token of this shape: ``code`` ``MALFORMED``."""

    code = "MALFORMED"


def format_token(identity: SigningIdentity) -> str:
    """The token text for the lent key ``identity``."""
    name = identity.agent.removeprefix("if://agent/")
    return f"{PREFIX}.{b64url_encode(name.encode())}.{b64url_encode(identity.seed)}"


def parse_token(text: str) -> tuple[AgentId, bytes]:
    """The agent and the 32-byte seed of a token; :class:`TokenError` if it is not one."""
    match = _SHAPE.match(text.strip())
    if match is None:
        raise TokenError(f"not an {PREFIX} token (run `ifab mcp token` to get one)")
    try:
        agent = agent_id(b64url_decode(match.group(1)).decode())
        seed = b64url_decode(match.group(2))
    except (ValueError, binascii.Error, UnicodeDecodeError, FabricError) as exc:
        raise TokenError(f"not an {PREFIX} token: {exc}") from None
    if len(seed) != 32:
        raise TokenError(f"not an {PREFIX} token: the key is {len(seed)} bytes, not 32")
    return agent, seed

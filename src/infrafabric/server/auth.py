"""Agent sessions: an Ed25519 challenge-response yields a short-lived bearer token.

1. ``POST /v1/auth/challenge {"agent": A}`` returns 32 random bytes (base64url), valid
   for 60 s, usable once.
2. The agent signs ``"IFMessage-v2.1-auth\\n" || challenge || agent`` with its current key
   and ``POST /v1/auth/token {"agent", "kid", "challenge", "signature"}``.
3. The server checks the key in its keyring (as for any message) and returns a token
   valid for 15 minutes, bound to the agent. Mutations are still signed messages; the
   token only opens reads, the inbox and the WebSocket.

Pure state with time passed in; the server holds one :class:`Sessions`.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass
from typing import Final

from infrafabric.protocol.identity import b64url_decode, b64url_encode, verify_signature
from infrafabric.protocol.keyring import Keyring
from infrafabric.types import AgentId, Timestamp

__all__ = ["AUTH_PREFIX", "AuthError", "Sessions", "auth_input"]

AUTH_PREFIX: Final = b"IFMessage-v2.1-auth\n"
CHALLENGE_SECONDS: Final = 60.0
TOKEN_SECONDS: Final = 900.0
MAX_OPEN_CHALLENGES: Final = 10_000


class AuthError(Exception):
    """A refused authentication; ``code`` is the reason (``UNKNOWN_KEY``, ``BAD_SIGNATURE``...)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def auth_input(challenge: bytes, agent: AgentId) -> bytes:
    """The bytes an agent signs to answer ``challenge``."""
    return AUTH_PREFIX + challenge + agent.encode()


@dataclass(frozen=True, slots=True)
class _Pending:
    agent: AgentId
    expires_at: Timestamp


class Sessions:
    """Open challenges and issued tokens (thread-safe)."""

    def __init__(self, keyring: Keyring, admin_token: str) -> None:
        self.keyring = keyring
        self.admin_token = admin_token
        self._lock = threading.Lock()
        self._challenges: dict[str, _Pending] = {}
        self._tokens: dict[str, _Pending] = {}

    def challenge(self, agent: AgentId, now: Timestamp) -> str:
        with self._lock:
            self._prune(now)
            if len(self._challenges) >= MAX_OPEN_CHALLENGES:
                raise AuthError("BUSY", "too many open challenges; try again shortly")
            text = b64url_encode(secrets.token_bytes(32))
            self._challenges[text] = _Pending(agent, now + CHALLENGE_SECONDS)
            return text

    def token(
        self, agent: AgentId, kid: str, challenge: str, signature: str, now: Timestamp
    ) -> str:
        """Exchange a signed challenge for a token; raises :class:`AuthError`."""
        with self._lock:
            pending = self._challenges.pop(challenge, None)  # usable once, whatever happens
        if pending is None or pending.expires_at < now or pending.agent != agent:
            raise AuthError("BAD_CHALLENGE", "unknown, used or expired challenge")
        resolution = self.keyring.resolve(agent, kid, now)
        if resolution.verify_key is None:
            raise AuthError(str(resolution.reason), resolution.detail)
        try:
            raw_signature = b64url_decode(signature)
            raw_challenge = b64url_decode(challenge)
        except ValueError:
            raise AuthError("MALFORMED", "signature or challenge is not base64url") from None
        if not verify_signature(
            resolution.verify_key, auth_input(raw_challenge, agent), raw_signature
        ):
            raise AuthError("BAD_SIGNATURE", "the challenge signature does not verify")
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = _Pending(agent, now + TOKEN_SECONDS)
        return token

    def agent_of(self, token: str | None, now: Timestamp) -> AgentId | None:
        """The agent a token belongs to, or ``None`` if it is unknown or expired."""
        if not token:
            return None
        with self._lock:
            session = self._tokens.get(token)
        if session is None or session.expires_at < now:
            return None
        return session.agent

    def is_admin(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(token or "", self.admin_token)

    def _prune(self, now: Timestamp) -> None:
        for store in (self._challenges, self._tokens):
            for key in [key for key, value in store.items() if value.expires_at < now]:
                del store[key]

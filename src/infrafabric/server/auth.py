"""Agent sessions: an Ed25519 challenge-response yields a short-lived bearer token.

1. ``POST /v1/auth/challenge {"agent": A}`` returns a challenge (base64url: 16 random
   bytes, its expiry and a MAC binding both to A), valid for 60 s, usable once.
2. The agent signs ``"IFMessage-v2.1-auth\\n" || challenge || agent`` with its current key
   and ``POST /v1/auth/token {"agent", "kid", "challenge", "signature"}``.
3. The server checks the key in its keyring (as for any message) and returns a token
   valid for 15 minutes, bound to the agent. Mutations are still signed messages; the
   token only opens reads, the inbox and the WebSocket.

Pure state with time passed in; the server holds one :class:`Sessions`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import threading
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from infrafabric.protocol.identity import b64url_decode, b64url_encode, verify_signature
from infrafabric.protocol.keyring import Keyring
from infrafabric.types import AgentId, Timestamp

__all__ = ["AUTH_PREFIX", "AuthError", "Sessions", "auth_input"]

AUTH_PREFIX: Final = b"IFMessage-v2.1-auth\n"
CHALLENGE_SECONDS: Final = 60.0
TOKEN_SECONDS: Final = 900.0
MAX_OPEN_CHALLENGES: Final = 100_000
MAX_TOKEN_CHARS: Final = 1024
#: How long the dashboard's operator session (a cookie) lasts.
OPERATOR_SESSION_SECONDS: Final = 12 * 3600.0
_MAC_BYTES: Final = 16


class AuthError(Exception):
    """A refused authentication; ``code`` is the reason (``UNKNOWN_KEY``, ``BAD_SIGNATURE``...)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def auth_input(challenge: bytes, agent: AgentId) -> bytes:
    """The bytes an agent signs to answer ``challenge``."""
    return AUTH_PREFIX + challenge + agent.encode()


class Sessions:
    """Challenges and tokens that need no memory shared between servers (thread-safe).

    Both are MACed with a key derived from the operator's token (HKDF-SHA256), which
    every server of a fabric has: a challenge issued by one server is answered to
    another, and a token issued by one opens any of them, behind any load balancer.

    * a challenge is 16 random bytes and its expiry, MACed with the agent it is for;
      ``used_once(challenge, until, now)`` says whether it is being used for the first
      time (by default this server's memory; several servers pass the shared store's
      nonce record);
    * a token is the agent and its expiry, MACed. It cannot be withdrawn before it
      expires (``token_seconds``, 15 minutes), but it only opens reads, the inbox and the
      WebSocket (which closes when the token it was opened or renewed with expires): a
      revoked key signs no change, and a new token needs a valid key.
    """

    def __init__(
        self,
        keyring: Keyring,
        admin_token: str,
        *,
        used_once: Callable[[str, Timestamp, Timestamp], bool] | None = None,
        token_seconds: float = TOKEN_SECONDS,
    ) -> None:
        self.keyring = keyring
        self.admin_token = admin_token
        self.token_seconds = token_seconds
        self._key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"infrafabric sessions v1"
        ).derive(admin_token.encode())
        self._lock = threading.Lock()
        self._used: dict[str, Timestamp] = {}  # this server's spent challenges, till expiry
        self._used_once = used_once or self._first_use_here

    def challenge(self, agent: AgentId, now: Timestamp) -> str:
        body = secrets.token_bytes(16) + struct.pack(">d", now + CHALLENGE_SECONDS)
        return b64url_encode(body + self._mac(b"challenge", body, agent.encode()))

    def token(
        self, agent: AgentId, kid: str, challenge: str, signature: str, now: Timestamp
    ) -> str:
        """Exchange a signed challenge for a token; raises :class:`AuthError`."""
        try:
            raw_challenge = b64url_decode(challenge)
            raw_signature = b64url_decode(signature)
        except ValueError:
            raise AuthError("MALFORMED", "signature or challenge is not base64url") from None
        body, mac = raw_challenge[:24], raw_challenge[24:]
        if (
            len(raw_challenge) != 24 + _MAC_BYTES
            or not hmac.compare_digest(mac, self._mac(b"challenge", body, agent.encode()))
            or (until := struct.unpack(">d", body[16:])[0]) < now
        ):
            raise AuthError("BAD_CHALLENGE", "unknown, used or expired challenge")
        resolution = self.keyring.resolve(agent, kid, now)
        if resolution.verify_key is None:
            raise AuthError(str(resolution.reason), resolution.detail)
        if not verify_signature(
            resolution.verify_key, auth_input(raw_challenge, agent), raw_signature
        ):
            raise AuthError("BAD_SIGNATURE", "the challenge signature does not verify")
        # spent only once answered: a forged answer must not use up the record's room
        if not self._used_once(challenge, until, now):
            raise AuthError("BAD_CHALLENGE", "unknown, used or expired challenge")
        return self._seal(b"token", now + self.token_seconds, agent.encode())

    def agent_of(self, token: str | None, now: Timestamp) -> AgentId | None:
        """The agent a token belongs to, or ``None`` if it is not one of ours or expired."""
        opened = self.token_expiry(token, now)
        return None if opened is None else opened[0]

    def token_expiry(self, token: str | None, now: Timestamp) -> tuple[AgentId, Timestamp] | None:
        """The agent a token belongs to and when it expires; ``None`` as for :meth:`agent_of`."""
        opened = self._open(b"token", token, now)
        if opened is None or not opened[1]:
            return None
        return opened[1].decode(), opened[0]

    def is_admin(self, token: str | None) -> bool:
        # compared as bytes: compare_digest refuses a str that is not ASCII with a
        # TypeError, and any header may carry one (Latin-1 on the wire)
        return bool(token) and hmac.compare_digest(
            (token or "").encode("utf-8", "surrogateescape"), self.admin_token.encode()
        )

    def operator_session(self, now: Timestamp) -> str:
        """A session for the dashboard, given for the admin token: its expiry, MACed (the
        browser keeps it in an HttpOnly cookie instead of the token itself)."""
        return self._seal(b"operator", now + OPERATOR_SESSION_SECONDS, b"")

    def is_operator_session(self, session: str | None, now: Timestamp) -> bool:
        return self.operator_session_expiry(session, now) is not None

    def operator_session_expiry(self, session: str | None, now: Timestamp) -> Timestamp | None:
        """When an operator session expires; ``None`` if it is not one or has expired."""
        opened = self._open(b"operator", session, now)
        return None if opened is None or opened[1] != b"" else opened[0]

    def _seal(self, purpose: bytes, until: Timestamp, subject: bytes) -> str:
        """``until`` and ``subject``, MACed for ``purpose``: a token needing no memory."""
        body = struct.pack(">d", until) + subject
        return b64url_encode(body) + "." + b64url_encode(self._mac(purpose, body))

    def _open(
        self, purpose: bytes, sealed: str | None, now: Timestamp
    ) -> tuple[Timestamp, bytes] | None:
        """The expiry and subject of a token :meth:`_seal` made for ``purpose``, if it is
        one and has not expired; ``None`` otherwise."""
        if not sealed or sealed.count(".") != 1 or len(sealed) > MAX_TOKEN_CHARS:
            return None
        encoded_body, encoded_mac = sealed.split(".")
        try:
            body, mac = b64url_decode(encoded_body), b64url_decode(encoded_mac)
        except ValueError:
            return None
        if len(body) < 8 or not hmac.compare_digest(mac, self._mac(purpose, body)):
            return None
        until: Timestamp = struct.unpack(">d", body[:8])[0]
        if until < now:
            return None
        return until, body[8:]

    def _mac(self, purpose: bytes, *parts: bytes) -> bytes:
        digest = hmac.new(self._key, purpose, hashlib.sha256)
        for part in parts:  # each with its length: no two splits of the bytes agree
            digest.update(len(part).to_bytes(4, "big") + part)
        return digest.digest()[:_MAC_BYTES]

    def _first_use_here(self, challenge: str, until: Timestamp, now: Timestamp) -> bool:
        with self._lock:
            if len(self._used) >= MAX_OPEN_CHALLENGES:
                for spent in [c for c, until in self._used.items() if until < now]:
                    del self._used[spent]
                if len(self._used) >= MAX_OPEN_CHALLENGES:
                    return False  # refused rather than forgotten: a flood, try again later
            if challenge in self._used:
                return False
            self._used[challenge] = until
            return True

"""The one exception tree of InfraFabric.

Every error the package raises on purpose derives from :class:`FabricError`, split by
whose fault it is:

* :class:`CallerError`: the caller asked for something invalid (bad argument, unknown
  identity, wrong passphrase).
* :class:`PeerError`: something another party sent is invalid (a malformed rotation
  announcement, a forged countersignature).
* :class:`StoreError`: the local store (keystore files, later databases) failed.

Errors carry the ids and states they are about as attributes, so callers never parse
messages. Foreign exceptions are translated at the boundary with ``raise ... from``.
Builtins such as :class:`TimeoutError` are never shadowed.

Note that message verification does not raise: :meth:`Verifier.check` returns a
:class:`~infrafabric.protocol.verify.Verdict` with a reason code for every input.
"""

from __future__ import annotations


class FabricError(Exception):
    """Root of every error InfraFabric raises on purpose."""


class CallerError(FabricError, ValueError):
    """The caller supplied something invalid."""


class PeerError(FabricError):
    """Another party sent something invalid or untrustworthy."""


class StoreError(FabricError):
    """Local storage failed (I/O, corruption, permissions)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (Redis down, restarting, a timeout): the
    request did not happen, or its outcome is unknown. Retryable; the fabric reconnects
    by itself."""

    retryable = True


class CanonicalizationError(CallerError):
    """A value has no RFC 8785 canonical form (non-finite float, unsafe integer,
    non-string key, lone surrogate, unsupported type)."""


class MessageError(CallerError):
    """An IFMessage could not be built or decoded; ``reason`` is a verification reason code."""

    def __init__(self, detail: str, *, reason: str = "MALFORMED") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class IdentityError(CallerError):
    """An identity operation failed; ``name`` is the identity concerned."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"identity {name!r}: {detail}")
        self.name = name
        self.detail = detail


class IdentityNotFound(IdentityError):
    """No identity of that name exists in the keystore."""


class IdentityExists(IdentityError):
    """An identity of that name already exists."""


class WrongPassphrase(IdentityError):
    """The passphrase does not decrypt the identity's private key."""


class KeyringError(CallerError):
    """A keyring operation is invalid (unknown key, illegal state change)."""

    def __init__(self, detail: str, *, kid: str | None = None) -> None:
        super().__init__(detail if kid is None else f"key {kid}: {detail}")
        self.kid = kid
        self.detail = detail


class RotationError(PeerError):
    """A key-rotation announcement is invalid; ``reason`` says which check failed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class KeystoreCorrupt(StoreError):
    """A keystore file exists but cannot be read as what it should be."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail

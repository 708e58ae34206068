"""The keystore: identities encrypted at rest, and keyring files, under ``IFAB_HOME``.

Layout (directories 0700, files 0600, every write atomic: temp file, fsync, rename)::

    $IFAB_HOME/                  default: the user's config dir, e.g. ~/.config/infrafabric
      identities/<name>.json     private: the current seed, sealed with the passphrase
      identities/<name>.seq      the last sequence number handed out
      keyring/<name>.json        public: every key version of agent <name>, with states

Sealing: Argon2id (RFC 9106, by default t=3, p=4, m=64 MiB, its second recommended
option) derives a 256-bit key from the passphrase and a random 128-bit salt;
ChaCha20-Poly1305 (RFC 8439) encrypts the 32-byte seed with the agent id and key id
as associated data, so a sealed seed cannot be moved to another identity unnoticed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final

import msgspec
import platformdirs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from msgspec import UNSET, Meta, Struct, UnsetType

from infrafabric.errors import (
    CallerError,
    IdentityExists,
    IdentityNotFound,
    KeystoreCorrupt,
    MessageError,
    RotationError,
    WrongPassphrase,
)
from infrafabric.protocol.identity import SigningIdentity, b64url_decode, b64url_encode
from infrafabric.protocol.keyring import (
    KEYRING_FORMAT,
    Keyring,
    KeyringFile,
    KeyRole,
    new_key_record,
)
from infrafabric.protocol.message import IFMessage, agent_id, decode_json, encode_json
from infrafabric.protocol.rotation import RotationKind, announce_rotation, apply_rotation
from infrafabric.protocol.timefmt import format_timestamp, parse_timestamp
from infrafabric.types import Timestamp

__all__ = [
    "ENV_HOME",
    "ENV_PASSPHRASE",
    "IdentityInfo",
    "KdfCost",
    "Keystore",
    "default_home",
    "keyring_lock",
    "load_keyring_dir",
    "write_keyring_dir",
    "write_private",
]

ENV_HOME: Final = "IFAB_HOME"
ENV_PASSPHRASE: Final = "IFAB_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
IDENTITY_FORMAT: Final = "infrafabric-identity/1"


def default_home() -> Path:
    """``$IFAB_HOME`` if set, else the user's config directory for ``infrafabric``."""
    configured = os.environ.get(ENV_HOME)
    return Path(configured) if configured else platformdirs.user_config_path("infrafabric")


@dataclass(frozen=True, slots=True)
class KdfCost:
    """Argon2id cost. The default is RFC 9106's second recommended option; lower it only
    in tests. Reading a sealed seed honours the cost stored with it, within these bounds."""

    iterations: int = 3
    lanes: int = 4
    memory_kib: int = 64 * 1024

    def __post_init__(self) -> None:
        # Bounded both ways: a file with a tampered cost must not make unlocking hang.
        if not (1 <= self.iterations <= 16 and 1 <= self.lanes <= 16):
            raise CallerError("Argon2id iterations and lanes must be between 1 and 16")
        if not (8 * self.lanes <= self.memory_kib <= 1024 * 1024):
            raise CallerError("Argon2id memory must be between 8 KiB per lane and 1 GiB")


class _Kdf(Struct, frozen=True, forbid_unknown_fields=True):
    alg: str
    salt: str
    iterations: int
    lanes: int
    memory_kib: int


class _Sealed(Struct, frozen=True, forbid_unknown_fields=True):
    kdf: _Kdf
    cipher: str
    nonce: str
    ciphertext: str


class IdentityInfo(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the keystore holds about one identity; everything but ``sealed`` is public."""

    format: str
    name: str
    agent: str
    role: str
    version: Annotated[int, Meta(ge=1)]
    kid: str
    public_key: str
    created_at: str
    sealed: _Sealed
    last_rotation: str | UnsetType = UNSET  # the announcement JSON of the latest rotation


# Placeholder while the associated data (which covers the other fields) is computed.
_PENDING = _Sealed(_Kdf("argon2id", "", 1, 1, 8), "chacha20-poly1305", "", "")


class Keystore:
    """Identities and the local keyring under one home directory."""

    def __init__(self, home: Path | str | None = None, *, kdf: KdfCost | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.kdf = kdf or KdfCost()
        self.identities_dir = self.home / "identities"
        self.keyring_dir = self.home / "keyring"

    # -- identities ---------------------------------------------------------------------

    def create(
        self, name: str, passphrase: str, *, now: Timestamp, role: KeyRole = KeyRole.AGENT
    ) -> SigningIdentity:
        """Create identity ``if://agent/<name>`` with a fresh key; raises
        :class:`IdentityExists` if the name is taken."""
        agent = _checked_agent(name)
        _require_passphrase(passphrase)
        identity = SigningIdentity.generate(agent)
        with self._mutating():
            self._save_identity(name, identity, passphrase, role=role, now=now, exclusive=True)
            keyring = self.load_keyring()
            keyring.add(new_key_record(agent, identity.public_key, version=1, now=now, role=role))
            write_keyring_dir(keyring, self.keyring_dir, agents=[agent])
        return identity

    def names(self) -> list[str]:
        if not self.identities_dir.is_dir():
            return []
        return sorted(path.stem for path in self.identities_dir.glob("*.json"))

    def info(self, name: str) -> IdentityInfo:
        """The stored identity (raises :class:`IdentityNotFound`, :class:`KeystoreCorrupt`)."""
        path = self._identity_path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise IdentityNotFound(name, f"no identity file {path}") from None
        except OSError as exc:
            raise KeystoreCorrupt(str(path), exc.strerror or str(exc)) from exc
        try:
            info = msgspec.json.decode(data, type=IdentityInfo)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise KeystoreCorrupt(str(path), f"not an identity file: {exc}") from None
        if info.format != IDENTITY_FORMAT:
            raise KeystoreCorrupt(str(path), f"unknown format {info.format!r}")
        if info.name != name or info.agent != _checked_agent(name):
            raise KeystoreCorrupt(
                str(path), f"holds identity {info.name!r} ({info.agent}), not {name!r}"
            )
        return info

    def unlock(self, name: str, passphrase: str) -> SigningIdentity:
        """Decrypt identity ``name``; raises :class:`WrongPassphrase` if it does not open."""
        info = self.info(name)
        seed = _unseal(info.sealed, passphrase, _aad(info), name)
        identity = SigningIdentity.from_seed(info.agent, seed, version=info.version)
        if identity.kid != info.kid:
            raise KeystoreCorrupt(str(self._identity_path(name)), "sealed seed does not match kid")
        return identity

    def rotate(
        self,
        name: str,
        passphrase: str,
        *,
        now: Timestamp,
        kind: RotationKind = RotationKind.SCHEDULED,
        operator: SigningIdentity | None = None,
    ) -> IFMessage:
        """Replace identity ``name``'s key and return the signed rotation announcement.

        The announcement is checked by :func:`apply_rotation` against the local keyring
        before anything is written, then stored with the new sealed key in one atomic
        write, so a crash leaves either the old identity or the new one, never half.
        A compromised rotation needs ``operator`` (an unlocked operator identity).
        """
        if kind is RotationKind.COMPROMISED and operator is None:
            raise CallerError("a compromised rotation is countersigned by an operator identity")
        with self._mutating():  # two rotations at once would fork the identity
            old = self.unlock(name, passphrase)
            info = self.info(name)
            new = SigningIdentity.generate(old.agent, version=old.version + 1)
            announcement = announce_rotation(
                old.kid,
                old.version,
                new,
                countersigner=operator if kind is RotationKind.COMPROMISED and operator else old,
                kind=kind,
                now=now,
                sequence_num=self.reserve_sequence(name),
            )
            keyring = self.load_keyring()
            apply_rotation(keyring, announcement, now)
            role = KeyRole(info.role)
            self._save_identity(
                name, new, passphrase, role=role, now=now, last_rotation=announcement
            )
            write_keyring_dir(keyring, self.keyring_dir, agents=[old.agent])
        return announcement

    def reserve_sequence(self, name: str, count: int = 1) -> int:
        """Hand out ``count`` sequence numbers for ``name``; returns the first.

        Durable before it returns (fsync), so numbers keep rising across restarts and
        concurrent callers (an exclusive ``flock``) never share a number.
        """
        if count < 1:
            raise CallerError("count must be at least 1")
        self.info(name)  # the identity must exist
        path = self.identities_dir / f"{name}.seq"
        with _locked(self.identities_dir / f"{name}.lock"):
            try:
                last = int(path.read_text(encoding="ascii").strip() or "0")
            except FileNotFoundError:
                last = 0
            except ValueError:
                raise KeystoreCorrupt(str(path), "not a sequence number") from None
            write_private(path, f"{last + count}\n".encode("ascii"))
        return last + 1

    # -- keyring ------------------------------------------------------------------------

    def load_keyring(self) -> Keyring:
        """The local keyring, completed from the identity files.

        Identity files are written first, keyring files second; if a crash fell between
        the two, the identity's current key and latest rotation are applied here again
        (both idempotently), so the keyring never lags behind the identities.
        """
        keyring = load_keyring_dir(self.keyring_dir)
        for name in self.names():
            info = self.info(name)
            if info.last_rotation is not UNSET:
                announcement = decode_json(info.last_rotation)
                with contextlib.suppress(RotationError):  # stale once later rotations exist
                    apply_rotation(keyring, announcement, announcement.sent_at)
            if keyring.get(info.kid) is None:
                public_key = b64url_decode(info.public_key)
                created = parse_timestamp(info.created_at)
                role = KeyRole(info.role)
                keyring.add(
                    new_key_record(
                        info.agent, public_key, version=info.version, now=created, role=role
                    )
                )
        return keyring

    # -- internals ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _mutating(self) -> Iterator[None]:
        """Hold the keyring lock while identities and keyring files change together."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        with keyring_lock(self.keyring_dir):
            yield

    def _identity_path(self, name: str) -> Path:
        _checked_agent(name)  # refuses path tricks such as "../x"
        return self.identities_dir / f"{name}.json"

    def _save_identity(
        self,
        name: str,
        identity: SigningIdentity,
        passphrase: str,
        *,
        role: KeyRole,
        now: Timestamp,
        last_rotation: IFMessage | None = None,
        exclusive: bool = False,
    ) -> None:
        info = IdentityInfo(
            format=IDENTITY_FORMAT,
            name=name,
            agent=identity.agent,
            role=str(role),
            version=identity.version,
            kid=identity.kid,
            public_key=b64url_encode(identity.public_key),
            created_at=format_timestamp(now),
            sealed=_PENDING,
            last_rotation=UNSET if last_rotation is None else encode_json(last_rotation).decode(),
        )
        sealed = _seal(identity.seed, passphrase, _aad(info), self.kdf)
        document = msgspec.json.format(
            msgspec.json.encode(msgspec.structs.replace(info, sealed=sealed))
        )
        try:
            write_private(self._identity_path(name), document, exclusive=exclusive)
        except FileExistsError:
            raise IdentityExists(name, f"already exists at {self._identity_path(name)}") from None


def load_keyring_dir(directory: Path) -> Keyring:
    """A keyring from every ``*.json`` keyring document in ``directory`` (may not exist).

    Raises :class:`KeystoreCorrupt` naming the file that is not a keyring document or
    that contradicts another.
    """
    keyring = Keyring()
    if not directory.is_dir():
        return keyring
    for path in sorted(directory.glob("*.json")):
        try:
            document = msgspec.json.decode(path.read_bytes(), type=KeyringFile)
        except (msgspec.ValidationError, msgspec.DecodeError, OSError) as exc:
            raise KeystoreCorrupt(str(path), f"not a keyring document: {exc}") from None
        if document.format != KEYRING_FORMAT:
            raise KeystoreCorrupt(str(path), f"unknown format {document.format!r}")
        for record in document.keys:
            try:
                keyring.add(record)
            except CallerError as exc:
                raise KeystoreCorrupt(str(path), str(exc)) from None
    return keyring


def write_keyring_dir(
    keyring: Keyring, directory: Path, *, agents: list[str] | None = None
) -> None:
    """Write one ``<name>.json`` per agent (only ``agents`` if given) into ``directory``."""
    wanted = agents if agents is not None else sorted({r.agent for r in keyring.records()})
    for agent in wanted:
        document = keyring.to_file(agent)
        name = agent.removeprefix("if://agent/")
        write_private(
            directory / f"{name}.json", msgspec.json.format(msgspec.json.encode(document))
        )


def _checked_agent(name: str) -> str:
    try:
        return agent_id(name)
    except MessageError as exc:
        raise CallerError(exc.detail) from None


def _require_passphrase(passphrase: str) -> None:
    if not passphrase:
        raise CallerError(
            f"an empty passphrase protects nothing; set {ENV_PASSPHRASE} or answer the prompt"
        )


def _aad(info: IdentityInfo) -> bytes:
    """What the seal binds the seed to: a sealed seed moved to another file does not open."""
    fields = (IDENTITY_FORMAT, info.name, info.agent, info.kid, info.role, str(info.version))
    return "\n".join(fields).encode()


def _derive(passphrase: str, salt: bytes, cost: KdfCost) -> bytes:
    kdf = Argon2id(
        salt=salt,
        length=32,
        iterations=cost.iterations,
        lanes=cost.lanes,
        memory_cost=cost.memory_kib,
    )
    return kdf.derive(passphrase.encode("utf-8"))


def _seal(seed: bytes, passphrase: str, aad: bytes, cost: KdfCost) -> _Sealed:
    salt, nonce = os.urandom(16), os.urandom(12)
    ciphertext = ChaCha20Poly1305(_derive(passphrase, salt, cost)).encrypt(nonce, seed, aad)
    kdf = _Kdf("argon2id", b64url_encode(salt), cost.iterations, cost.lanes, cost.memory_kib)
    return _Sealed(kdf, "chacha20-poly1305", b64url_encode(nonce), b64url_encode(ciphertext))


def _unseal(sealed: _Sealed, passphrase: str, aad: bytes, name: str) -> bytes:
    if sealed.kdf.alg != "argon2id" or sealed.cipher != "chacha20-poly1305":
        raise KeystoreCorrupt(name, f"unsupported sealing {sealed.kdf.alg}/{sealed.cipher}")
    try:
        cost = KdfCost(sealed.kdf.iterations, sealed.kdf.lanes, sealed.kdf.memory_kib)
        salt, nonce = b64url_decode(sealed.kdf.salt), b64url_decode(sealed.nonce)
        ciphertext = b64url_decode(sealed.ciphertext)
    except (ValueError, CallerError) as exc:
        raise KeystoreCorrupt(name, f"sealed seed unreadable: {exc}") from None
    try:
        return ChaCha20Poly1305(_derive(passphrase, salt, cost)).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise WrongPassphrase(name, "wrong passphrase (or the file was altered)") from None


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600, durable when this returns:
    a crash (``kill -9``) or a full disk leaves the old file or the new one, whole.

    ``exclusive``: create ``path``, raising ``FileExistsError`` if it exists, even if
    another process creates it at the same moment.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:  # a write may take less than asked (a full disk, a signal)
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temp)  # (nothing half-written is ever renamed into place)
        raise
    os.close(fd)
    if exclusive:
        try:
            os.link(temp, path)  # fails if path exists: no check-then-write race
        finally:
            os.unlink(temp)
    else:
        os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def keyring_lock(directory: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on keyring directory ``directory`` for a read-modify-write."""
    return _locked(directory / ".lock")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

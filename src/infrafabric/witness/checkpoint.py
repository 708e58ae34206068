"""Signed checkpoints in the C2SP formats, so transparency tooling can read them.

A checkpoint (c2sp.org/tlog-checkpoint) is the text::

    <origin>
    <tree size, decimal>
    <root hash, base64>
    time <RFC 3339 UTC>            (an extension line: when the fabric signed it)

signed as a note (c2sp.org/signed-note): after a blank line, one line per signature,
``— <key name> <base64(key id || Ed25519 signature of the text)>``, where the key id is
the first 4 bytes of SHA-256(key name || "\\n" || 0x01 || public key). A verifier key is
written ``<name>+<key id, hex>+<base64(0x01 || public key)>``, as the Go tooling does.

Imports only the standard library, PyNaCl and :mod:`.merkle`: an offline verifier needs
nothing else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Final

import nacl.exceptions
import nacl.signing

from infrafabric.witness.merkle import HASH_SIZE

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "key_id",
    "open_checkpoint",
    "open_note",
    "parse_verifier_key",
    "sign_checkpoint",
    "sign_note",
    "verifier_key",
]

_ED25519: Final = b"\x01"  # the signed-note signature type of Ed25519
_DASH: Final = "\u2014 "  # an em dash and a space open each signature line
_NAME: Final = re.compile(r"[^\s+]+\Z")
_DECIMAL: Final = re.compile(r"(0|[1-9][0-9]*)\Z")  # ASCII digits only, no leading zero
MAX_NOTE: Final = 64 * 1024
#: ASCII control characters, which a note may not hold but for its newlines.
_CONTROL: Final = re.compile(r"[\x00-\x09\x0b-\x1f]")


class CheckpointError(ValueError):
    """A checkpoint or verifier key that is malformed, or whose signature does not verify."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    time: str = ""  # RFC 3339, from the extension line; empty if absent

    def body(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        if self.time:
            lines.append(f"time {self.time}")
        return "\n".join(lines) + "\n"


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public_key).digest()[:4]


def verifier_key(name: str, public_key: bytes) -> str:
    """The verifier key string of ``name`` and a 32-byte Ed25519 ``public_key``."""
    _check_name(name)
    return (
        f"{name}+{key_id(name, public_key).hex()}+"
        f"{base64.b64encode(_ED25519 + public_key).decode()}"
    )


def parse_verifier_key(text: str) -> tuple[str, bytes]:
    """``(name, public key)`` of a verifier key string; :class:`CheckpointError` if bad."""
    parts = text.strip().split("+", 2)  # the base64 key may itself hold a "+"
    if len(parts) != 3 or not _is_utf8(text):
        raise CheckpointError("a verifier key is <name>+<key id>+<base64 key>")
    name, hex_id, encoded = parts
    _check_name(name)
    try:
        raw = base64.b64decode(encoded, validate=True)
        expected_id = bytes.fromhex(hex_id)
    except (binascii.Error, ValueError):
        raise CheckpointError("the verifier key is not hex and base64 where it must be") from None
    if len(raw) != 33 or raw[:1] != _ED25519:
        raise CheckpointError("only Ed25519 verifier keys (type 0x01, 32 bytes) are supported")
    public_key = raw[1:]
    if key_id(name, public_key) != expected_id:
        raise CheckpointError("the verifier key's id does not match its name and key")
    return name, public_key


def sign_note(text: str, name: str, signing_key: nacl.signing.SigningKey) -> str:
    """``text`` (ending in a newline) as a note signed by ``signing_key`` under ``name``."""
    _check_name(name)
    if not text.endswith("\n") or "\n\n" in text:
        raise CheckpointError("a note's text ends with a newline and has no blank line")
    signature = signing_key.sign(text.encode()).signature
    public_key = bytes(signing_key.verify_key)
    line = base64.b64encode(key_id(name, public_key) + signature).decode()
    return f"{text}\n{_DASH}{name} {line}\n"


def sign_checkpoint(checkpoint: Checkpoint, name: str, signing_key: nacl.signing.SigningKey) -> str:
    """The signed note of ``checkpoint``, signed by ``signing_key`` under ``name``."""
    return sign_note(checkpoint.body(), name, signing_key)


def open_checkpoint(note: str, key: str, *, origin: str | None = None) -> Checkpoint:
    """Verify ``note`` with the verifier key ``key`` and return its checkpoint.

    Refuses (with :class:`CheckpointError`) a note that is too large, malformed, lacks a
    valid signature by that key, whose body is not a checkpoint, or whose origin is not
    ``origin`` (default: the key's name, as a fabric names its key after its log): a
    checkpoint the same key signed for another log proves nothing about this one."""
    checkpoint = _parse_body(open_note(note, key))
    expected = parse_verifier_key(key)[0] if origin is None else origin
    if checkpoint.origin != expected:
        raise CheckpointError(f"the checkpoint is for log {checkpoint.origin!r}, not {expected!r}")
    return checkpoint


def open_note(note: str, key: str) -> str:
    """The text of ``note`` once a signature by the verifier key ``key`` verifies on it."""
    name, public_key = parse_verifier_key(key)
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise CheckpointError("a checkpoint is a text of at most 64 KiB")
    if _CONTROL.search(note) or not _is_utf8(note):
        raise CheckpointError("a note is UTF-8 text without control characters but newlines")
    # The signatures follow the LAST blank line (c2sp.org/signed-note): a signature line
    # is never blank, so everything before it is the text, blank lines and all.
    body, separator, signatures = note.rpartition("\n\n")
    if not separator or not signatures.endswith("\n"):
        raise CheckpointError("a signed note is text, a blank line, then signature lines")
    body += "\n"
    wanted = key_id(name, public_key)
    verify_key = nacl.signing.VerifyKey(public_key)
    for line in signatures[:-1].split("\n"):
        if not line.startswith(_DASH):
            raise CheckpointError("each signature line starts with an em dash and a space")
        signer, _, encoded = line[len(_DASH) :].rpartition(" ")
        if signer != name:
            continue  # someone else's signature (a cosigner): not ours to judge
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:  # binascii.Error, or a str with non-ASCII characters
            raise CheckpointError("a signature is not base64") from None
        if len(raw) != 4 + 64 or raw[:4] != wanted:
            continue
        try:
            verify_key.verify(body.encode(), raw[4:])
        except nacl.exceptions.BadSignatureError:
            raise CheckpointError(f"the signature of {name} does not verify") from None
        return body
    raise CheckpointError(f"no signature by {name} with key id {wanted.hex()}")


def _parse_body(body: str) -> Checkpoint:
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("a checkpoint has an origin, a size and a root hash")
    origin, size_text, root_text, *extensions = lines
    if not origin or not _DECIMAL.match(size_text) or len(size_text) > 19:
        raise CheckpointError("the tree size is a decimal number without leading zeros")
    try:
        root = base64.b64decode(root_text, validate=True)
    except ValueError:  # binascii.Error, or a str with non-ASCII characters
        raise CheckpointError("the root hash is not base64") from None
    if len(root) != HASH_SIZE:
        raise CheckpointError(f"the root hash is not {HASH_SIZE} bytes")
    time = ""
    for extension in extensions:
        if extension.startswith("time "):
            time = extension[5:]
    return Checkpoint(origin, int(size_text), root, time)


def _is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (a str read with surrogate escapes may not)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise CheckpointError(f"a key name has no spaces or '+': {name!r}")

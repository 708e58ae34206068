"""Signed notes and checkpoints against the Go reference (golang.org/x/mod/sumdb/note)."""

from __future__ import annotations

import base64

import nacl.signing
import pytest

from infrafabric.witness.checkpoint import (
    Checkpoint,
    CheckpointError,
    key_id,
    open_checkpoint,
    open_note,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    verifier_key,
)

# The example of golang.org/x/mod/sumdb/note (note.go and note_test.go).
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def go_signing_key() -> nacl.signing.SigningKey:
    raw = base64.b64decode(GO_SIGNER.split("+", 4)[4])  # the key itself may hold a '+'
    assert raw[0] == 1  # Ed25519
    return nacl.signing.SigningKey(raw[1:])


def test_our_notes_are_the_go_reference_byte_for_byte() -> None:
    key = go_signing_key()
    assert sign_note(GO_TEXT, "PeterNeumann", key) == GO_NOTE
    assert verifier_key("PeterNeumann", bytes(key.verify_key)) == GO_VERIFIER
    assert open_note(GO_NOTE, GO_VERIFIER) == GO_TEXT
    with pytest.raises(CheckpointError, match="does not verify"):
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), GO_VERIFIER)


def test_a_checkpoint_round_trips_and_any_change_is_refused() -> None:
    key = nacl.signing.SigningKey.generate()
    vkey = verifier_key("example.org/log", bytes(key.verify_key))
    checkpoint = Checkpoint("example.org/log", 12, bytes(range(32)), "2026-11-23T20:00:00Z")
    note = sign_checkpoint(checkpoint, "example.org/log", key)
    assert note.startswith("example.org/log\n12\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n")
    assert open_checkpoint(note, vkey) == checkpoint
    for changed in (
        note.replace("\n12\n", "\n13\n"),
        note.replace("AAEC", "AAED"),
        note.replace("20:00:00", "20:00:01"),
    ):
        with pytest.raises(CheckpointError):
            open_checkpoint(changed, vkey)
    other = verifier_key("example.org/log", bytes(nacl.signing.SigningKey.generate().verify_key))
    with pytest.raises(CheckpointError, match="no signature"):
        open_checkpoint(note, other)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "no signatures at all\n",
        "text\n\nnot a signature line\n",
        "text\n\n— PeterNeumann not-base64!\n",
        "text\n\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        "x" * 70_000,
        GO_NOTE[:-3] + "\u00e9\n",  # a non-ASCII character in the signature's base64
        GO_NOTE.replace("answer", "answer\x00"),  # a control character in the text
        GO_NOTE.replace("answer", "answer\udcff"),  # not UTF-8 (a surrogate escape)
    ],
)
def test_malformed_notes_are_refused(bad: str) -> None:
    with pytest.raises(CheckpointError):
        open_note(bad, GO_VERIFIER)


@pytest.mark.parametrize(
    "body",
    [
        "only\ntwo\n",
        "origin\n012\nAAAA\n",
        "origin\n-1\nAAAA\n",
        "origin\n3\nnot base64\n",
        "origin\n3\nAAAA\n",
        "origin\n\u0661\u0662\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",  # Arabic digits
        "origin\n\u00b2\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",  # superscript two
        "origin\n3\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh\u00e9=\n",  # non-ASCII root
    ],
)
def test_a_signed_note_that_is_not_a_checkpoint_is_refused(body: str) -> None:
    key = nacl.signing.SigningKey.generate()
    note = sign_note(body, "origin", key)
    with pytest.raises(CheckpointError):
        open_checkpoint(note, verifier_key("origin", bytes(key.verify_key)))


@pytest.mark.parametrize(
    "bad",
    [
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+AhpC2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+zz+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ARpc",
    ],
)
def test_malformed_verifier_keys_are_refused(bad: str) -> None:
    with pytest.raises(CheckpointError):
        parse_verifier_key(bad)


def test_a_verifier_key_whose_base64_holds_a_plus_parses() -> None:
    # from transparency-dev/formats note tests: the key material contains a '+'
    name, public_key = parse_verifier_key(
        "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"
    )
    assert name == "TEST"
    assert len(public_key) == 32


def test_a_checkpoint_of_another_log_is_refused_even_with_a_good_signature() -> None:
    key = nacl.signing.SigningKey.generate()
    vkey = verifier_key("example.org/log", bytes(key.verify_key))
    other_log = sign_checkpoint(
        Checkpoint("example.org/other", 1, bytes(32)), "example.org/log", key
    )
    with pytest.raises(CheckpointError, match=r"for log 'example\.org/other'"):
        open_checkpoint(other_log, vkey)
    assert open_checkpoint(other_log, vkey, origin="example.org/other").size == 1


def _signed_by_hand(text: str, name: str, key: nacl.signing.SigningKey) -> str:
    """``text`` signed as a note without :func:`sign_note`'s checks of the text."""
    signature = key.sign(text.encode()).signature
    line = base64.b64encode(key_id(name, bytes(key.verify_key)) + signature).decode()
    return f"{text}\n\u2014 {name} {line}\n"


def test_the_signatures_follow_the_last_blank_line() -> None:
    """c2sp.org/signed-note: the text may hold blank lines; the signatures are what
    follows the last one."""
    key = nacl.signing.SigningKey.generate()
    vkey = verifier_key("example.org/log", bytes(key.verify_key))
    text = "first paragraph\n\nsecond paragraph\n"
    assert open_note(_signed_by_hand(text, "example.org/log", key), vkey) == text


@pytest.mark.parametrize("control", ["\x00", "\r", "\t", "\x1b", "\x0c"])
def test_a_signed_text_with_control_characters_is_refused(control: str) -> None:
    key = nacl.signing.SigningKey.generate()
    vkey = verifier_key("example.org/log", bytes(key.verify_key))
    note = _signed_by_hand(f"example.org/log\n3{control}\nAAAA\n", "example.org/log", key)
    with pytest.raises(CheckpointError, match="control characters"):
        open_note(note, vkey)

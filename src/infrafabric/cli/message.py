"""``ifab message``: canonical bytes, signing and verification from the shell.

These commands let any language interoperate: produce an envelope, check that your
canonical bytes equal ``ifab message canonical --signing-input``, compare signatures.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from infrafabric.cli.common import (
    EXIT_FAILED,
    fail,
    keystore,
    now_or,
    passphrase,
    read_json_document,
    read_stdin,
    reported_errors,
    write_bytes,
)
from infrafabric.errors import CanonicalizationError, MessageError
from infrafabric.keystore import load_keyring_dir
from infrafabric.protocol.canonical import canonical_json
from infrafabric.protocol.message import (
    DEFAULT_TTL,
    VERSION,
    IFMessage,
    decode_with_signing_input,
    encode_json,
    new_conversation_id,
    new_message_id,
    new_nonce,
)
from infrafabric.protocol.timefmt import format_timestamp
from infrafabric.protocol.verify import DEFAULT_MAX_BYTES, Mode, Verifier

app = typer.Typer(
    help="IFMessage v2.1: canonical form, signing, verification.", no_args_is_help=True
)


@app.command("canonical")
def canonical(
    signing_input: Annotated[
        bool,
        typer.Option(
            "--signing-input",
            help="Input is an envelope: print the exact bytes its signature covers (prefix included).",
        ),
    ] = False,
) -> None:
    """Print the RFC 8785 canonical form of the JSON document on stdin (no trailing newline)."""
    if signing_input:
        try:
            _, data = decode_with_signing_input(read_stdin())
        except MessageError as exc:
            fail(str(exc))
        write_bytes(data)
        return
    document = read_json_document()
    try:
        write_bytes(canonical_json(document))
    except CanonicalizationError as exc:
        fail(str(exc))


@app.command("sign")
def sign(
    name: Annotated[
        str, typer.Option("--as", help="Identity to sign with (see `ifab identity list`).")
    ],
    now: Annotated[
        str | None, typer.Option("--now", help="Send time (RFC 3339 UTC); default now.")
    ] = None,
) -> None:
    """Sign the envelope on stdin as identity NAME and print it (JSON).

    Only `performative`, `receiver` and `content` are required: `v`, `sender`, `id`,
    `nonce`, `timestamp`, `ttl` (300), `scope` (priority medium), `conversation_id` and
    `sequence_num` (the identity's next number) are filled in when absent.
    """
    document = read_json_document()
    if not isinstance(document, dict):
        fail("the envelope must be a JSON object")
    if "signature" in document:
        fail("the envelope is already signed; remove `signature` to sign it again")
    store = keystore()
    with reported_errors():
        secret = passphrase(f"Passphrase for {name}: ")
        identity = store.unlock(name, secret)
        if document.get("sender", identity.agent) != identity.agent:
            fail(f"sender {document['sender']} is not {identity.agent}")
        if "sequence_num" not in document:
            document["sequence_num"] = store.reserve_sequence(name)
        envelope = _complete(document, sender=identity.agent, sent_at=format_timestamp(now_or(now)))
        write_bytes(encode_json(identity.sign(envelope)) + b"\n")


@app.command("verify")
def verify(
    keyring_dir: Annotated[
        Path | None,
        typer.Option(
            "--keyring", help="Directory of keyring documents; default $IFAB_HOME/keyring."
        ),
    ] = None,
    mode: Annotated[
        Mode, typer.Option("--mode", help="strict, permissive or audit.")
    ] = Mode.STRICT,
    local: Annotated[
        bool,
        typer.Option(
            "--local", help="Treat the sender as local (permissive mode accepts it unsigned)."
        ),
    ] = False,
    now: Annotated[
        str | None, typer.Option("--now", help="Verify as of this RFC 3339 UTC time.")
    ] = None,
    max_bytes: Annotated[int, typer.Option("--max-bytes", help="Size limit.")] = DEFAULT_MAX_BYTES,
) -> None:
    """Verify the signed envelope on stdin: print OK, or the reason code (exit 1 if rejected).

    When a message is accepted with a reason (permissive or audit mode) the reason is
    printed and the exit status is 0.
    """
    with reported_errors():
        keyring = (
            keystore().load_keyring() if keyring_dir is None else load_keyring_dir(keyring_dir)
        )
    verifier = Verifier(keyring, mode=mode, max_bytes=max_bytes)
    verdict = verifier.check(sys.stdin.buffer.read(max_bytes + 1), now=now_or(now), local=local)
    if verdict.ok:
        typer.echo("OK")
        return
    typer.echo(str(verdict.reason))
    typer.echo(f"{verdict.reason}: {verdict.detail}", err=True)
    if not verdict.accepted:
        raise typer.Exit(EXIT_FAILED)


def _complete(document: dict[str, Any], *, sender: str, sent_at: str) -> IFMessage:
    defaults: dict[str, Any] = {
        "v": VERSION,
        "sender": sender,
        "id": new_message_id(),
        "nonce": new_nonce(),
        "timestamp": sent_at,
        "ttl": DEFAULT_TTL,
        "scope": {"priority": "medium"},
        "conversation_id": new_conversation_id(),
    }
    try:
        return msgspec.convert({**defaults, **document}, IFMessage)
    except (msgspec.ValidationError, MessageError) as exc:
        fail(f"invalid envelope: {exc}")

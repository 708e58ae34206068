"""``ifab keyring``: the public keys this machine trusts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from infrafabric.cli.common import fail, keystore, print_table, read_json_document, reported_errors
from infrafabric.errors import RotationError
from infrafabric.keystore import keyring_lock, load_keyring_dir, write_keyring_dir
from infrafabric.protocol.keyring import KEYRING_FORMAT, KeyringFile
from infrafabric.protocol.message import IFMessage
from infrafabric.protocol.rotation import apply_rotation

app = typer.Typer(
    help="Trusted public keys (keyring documents and rotation announcements).", no_args_is_help=True
)

KeyringOpt = Annotated[
    Path | None, typer.Option("--keyring", help="Keyring directory; default $IFAB_HOME/keyring.")
]


@app.command("add")
def add(
    source: Annotated[
        Path, typer.Argument(help="A keyring document or rotation announcement; - for stdin.")
    ],
    keyring_dir: KeyringOpt = None,
) -> None:
    """Trust the keys in SOURCE: an `identity export-public` document, or apply a rotation.

    Adding a key is a trust decision: check where the document came from. A rotation
    announcement is applied only if signed by the new key and countersigned by the old
    key (or an operator for a compromised key).
    """
    directory = keyring_dir if keyring_dir is not None else keystore().keyring_dir
    document = read_json_document(source)
    with reported_errors(), keyring_lock(directory):
        keyring = load_keyring_dir(directory)
        if isinstance(document, dict) and document.get("format") == KEYRING_FORMAT:
            try:
                records = msgspec.convert(document, KeyringFile).keys
            except msgspec.ValidationError as exc:
                fail(f"not a keyring document: {exc}")
            for record in records:
                keyring.add(record)
            agents = sorted({record.agent for record in records})
            summary = f"{len(records)} key(s) of {', '.join(agents)}"
        else:
            try:
                announcement = msgspec.convert(document, IFMessage)
            except msgspec.ValidationError as exc:
                fail(f"neither a keyring document nor a signed message: {exc}")
            try:
                record = apply_rotation(keyring, announcement, time.time())
            except RotationError as exc:
                fail(f"rotation refused: {exc}")
            agents = [record.agent]
            summary = f"rotation of {record.agent} to key v{record.version} {record.kid}"
        write_keyring_dir(keyring, directory, agents=agents)
    typer.echo(f"added {summary} to {directory}")


@app.command("list")
def list_keys(keyring_dir: KeyringOpt = None) -> None:
    """List every key in the keyring with its version, role and state."""
    directory = keyring_dir if keyring_dir is not None else keystore().keyring_dir
    with reported_errors():
        records = load_keyring_dir(directory).records()
    if not records:
        typer.echo(f"no keys in {directory}")
        return
    rows = [
        (
            record.agent,
            str(record.version),
            record.kid,
            str(record.role),
            str(record.state),
            "" if record.valid_until is msgspec.UNSET else record.valid_until,
        )
        for record in records
    ]
    print_table(("agent", "version", "kid", "role", "state", "valid until"), rows)

"""``ifab identity``: create, inspect, export and rotate agent identities."""

from __future__ import annotations

from typing import Annotated

import msgspec
import typer

from infrafabric.cli.common import (
    fail,
    keystore,
    now_or,
    passphrase,
    print_table,
    reported_errors,
    write_bytes,
)
from infrafabric.protocol.keyring import KeyRole
from infrafabric.protocol.message import encode_json
from infrafabric.protocol.rotation import RotationKind

app = typer.Typer(
    help="Agent identities: Ed25519 keys encrypted at rest under $IFAB_HOME.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="Identity name; the agent is if://agent/NAME.")]
NowOpt = Annotated[
    str | None, typer.Option("--now", help="Act as if at this RFC 3339 UTC time (tests, replays).")
]


@app.command("new")
def new(
    name: NameArg,
    operator: Annotated[
        bool,
        typer.Option("--operator", help="Make an operator key, trusted to countersign rotations."),
    ] = False,
    now: NowOpt = None,
) -> None:
    """Create identity NAME with a fresh key, sealed with a passphrase ($IFAB_PASSPHRASE or prompt)."""
    store = keystore()
    with reported_errors():
        secret = passphrase(f"Passphrase for {name}: ", confirm=True)
        role = KeyRole.OPERATOR if operator else KeyRole.AGENT
        identity = store.create(name, secret, now=now_or(now), role=role)
    typer.echo(f"created {identity.agent} ({role}) key {identity.kid} in {store.identities_dir}")


@app.command("list")
def list_identities(now: NowOpt = None) -> None:
    """List the identities in this keystore, with key version and rotation status."""
    store = keystore()
    with reported_errors():
        keyring = store.load_keyring()
        due = {record.kid for record in keyring.due_for_rotation(now_or(now))}
        rows = []
        for name in store.names():
            info = store.info(name)
            status = "DUE" if info.kid in due else "ok"
            rows.append((name, info.agent, info.role, str(info.version), info.kid, status))
    if not rows:
        typer.echo(
            f"no identities in {store.identities_dir}; create one with `ifab identity new NAME`"
        )
        return
    print_table(("name", "agent", "role", "version", "kid", "rotation"), rows)


@app.command("show")
def show(name: NameArg) -> None:
    """Show identity NAME: its current key and every key version the keyring knows."""
    store = keystore()
    with reported_errors():
        info = store.info(name)
        records = store.load_keyring().for_agent(info.agent)
    typer.echo(
        f"agent:      {info.agent}\nrole:       {info.role}\ncurrent:    v{info.version} {info.kid}"
    )
    typer.echo(f"public key: {info.public_key}\nsince:      {info.created_at}")
    for record in records:
        until = "" if record.valid_until is msgspec.UNSET else f" until {record.valid_until}"
        typer.echo(
            f"  v{record.version} {record.kid} {record.state}{until} (rotate after {record.rotate_after})"
        )


@app.command("export-public")
def export_public(name: NameArg) -> None:
    """Print NAME's public keys as a keyring document, for `ifab keyring add` elsewhere."""
    store = keystore()
    with reported_errors():
        info = store.info(name)
        document = store.load_keyring().to_file(info.agent)
    write_bytes(msgspec.json.format(msgspec.json.encode(document)) + b"\n")


@app.command("rotate")
def rotate(
    name: NameArg,
    emergency: Annotated[
        bool,
        typer.Option("--emergency", help="Revoke the old key at once instead of a 7-day grace."),
    ] = False,
    compromised: Annotated[
        bool,
        typer.Option(
            "--compromised",
            help="The old key is in other hands: mark it compromised; needs --operator.",
        ),
    ] = False,
    operator: Annotated[
        str | None,
        typer.Option(
            "--operator",
            help="Operator identity that countersigns (passphrase from $IFAB_OPERATOR_PASSPHRASE).",
        ),
    ] = None,
    now: NowOpt = None,
) -> None:
    """Replace NAME's key; print the signed rotation announcement (JSON) to publish.

    Scheduled (default): the old key verifies 7 more days. --emergency: the old key is
    revoked now. Both are countersigned by the old key; --compromised by an operator.
    """
    if compromised and operator is None:
        fail(
            "--compromised needs --operator NAME: a compromised key cannot vouch for its successor",
            2,
        )
    if operator is not None and not compromised:
        fail("--operator only countersigns a --compromised rotation", 2)
    kind = (
        RotationKind.COMPROMISED
        if compromised
        else (RotationKind.EMERGENCY if emergency else RotationKind.SCHEDULED)
    )
    store = keystore()
    with reported_errors():
        secret = passphrase(f"Passphrase for {name}: ")
        countersigner = None
        if operator is not None:
            operator_secret = passphrase(
                f"Passphrase for operator {operator}: ", env="IFAB_OPERATOR_PASSPHRASE"
            )
            countersigner = store.unlock(operator, operator_secret)
        announcement = store.rotate(
            name, secret, now=now_or(now), kind=kind, operator=countersigner
        )
    statement = announcement.content["rotation"]
    typer.echo(
        f"rotated {statement['agent']} ({kind}): {statement['old_kid']} -> {statement['new_kid']}",
        err=True,
    )
    write_bytes(encode_json(announcement) + b"\n")
